// `cnclip index`: bring an index up to date with folders and files on disk.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "cnclip/index_store.h"
#include "cnclip/model.h"

namespace cnclip {

struct IndexOptions {
  std::vector<std::string> paths;  // folders and files; empty = every folder indexed before
  WalkOptions walk;
  DecodeOptions decode;
  bool reindex = false;      // drop everything and encode again (e.g. after changing the model)
  bool allow_mixed_precision = false;  // accept the int8/fp32 sibling of the index's model
  bool retry_failed = false;  // decode again files that failed before and have not changed since
  int batch_size = 4;        // images per model call and per committed transaction (larger batches
                             // are no faster on CPU and hold more memory: ~85 MB per ViT-B-16 image)
  int decode_threads = 0;    // 0 = number of cores
  int model_workers = 0;     // concurrent model calls sharing the compute threads; 0 = chosen for the
                             // device (on a CPU: one single-threaded call per core, at most 4)
};

struct IndexSummary {
  int64_t added = 0, updated = 0, removed = 0, unchanged = 0, moved = 0, failed = 0;
  int64_t failed_before = 0;  // unchanged files that failed in an earlier run, not tried again
  double seconds = 0;
  bool interrupted = false;
};

// Receives what happens during a run; called from the thread that called Indexer::run.
class IndexObserver {
 public:
  virtual ~IndexObserver() = default;
  virtual void on_plan(int64_t /*to_encode*/, int64_t /*unchanged*/, int64_t /*gone*/) {}
  virtual void on_progress(int64_t /*done*/, int64_t /*total*/) {}
  virtual void on_file_error(const Error& /*error*/) {}
};

// The phases of run_index, public so that planning can be tested without a model.

// One folder or file to look at in a pass, with the walk options that define what it holds.
struct IndexTarget {
  std::string path;  // canonical when it exists
  bool is_file = false;
  WalkOptions walk;
};

struct PlannedFile {
  FoundFile file;
  std::optional<FileRecord> existing;  // set when the file changed since it was indexed
};

// What a pass has to do: disk compared with the catalog.
struct IndexPlan {
  std::vector<PlannedFile> to_encode;
  // Indexed files no longer on disk, by content hash: a new file with the same hash takes over the
  // embedding (a move); the rest are removed at the end of a complete pass.
  std::unordered_multimap<std::string, FileRecord> vanished;
  int64_t unchanged = 0, failed_before = 0, failed = 0;
};

// Phase 1: the folders and files of this pass (the given paths, else the roots indexed before).
// Throws for a given path that does not exist.
std::vector<IndexTarget> resolve_targets(Catalog& catalog, const IndexOptions& options);
// Phase 2: walks the targets and compares them with the catalog; reads the disk and the catalog,
// writes nothing. Problems (unreadable folders, files that cannot be looked at) go to the observer.
IndexPlan plan_index(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options,
                     IndexObserver& observer);

// Runs one index pass (phases: resolve targets, plan, encode and commit, finish the pass). What it guarantees:
// - Incremental: only new files and files whose size or mtime changed are decoded; a new file whose
//   content hash equals that of a file that disappeared takes over its embedding (a move or rename).
// - Committed in batches: each batch of encoded files is one transaction; an interruption (Ctrl-C,
//   checked between batches, or a crash) keeps every committed batch, and the next run does the rest.
// - Files that disappeared from an indexed folder are removed at the end of a complete pass.
// - A file that cannot be decoded is reported through the observer and counted, never fatal; it is
//   remembered, and not tried again while its size and mtime stay the same (unless retry_failed).
// Throws Exception for failures that end the run (model mismatch, unwritable index, missing path).
IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer);

}  // namespace cnclip
