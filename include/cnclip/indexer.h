// `cnclip index`: bring an index up to date with folders and files on disk.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cnclip/encode_options.h"
#include "cnclip/file_walk.h"
#include "cnclip/image_options.h"
#include "cnclip/index_store.h"
#include "cnclip/model.h"

namespace cnclip {

struct IndexOptions {
  std::vector<std::string> paths;  // folders and files; empty = every root indexed before
  // What the given folders hold. nullopt: a root indexed before keeps the options stored with it, a
  // new one gets the defaults. Set: they become the options of every given root (replacing stored
  // ones, which the observer is told). Roots looked at without being given keep their own.
  // Checked with check_walk_options (kInvalidArgument). A folder inside an indexed folder root is
  // walked with that root's options and not recorded as a root of its own; options given for one
  // are refused (kInvalidArgument: a root's options say what all of it holds).
  std::optional<WalkOptions> walk;
  // New options that would remove every indexed file of a root (a typo such as '--exclude "*"'), or
  // more than half of a root of 10 entries or more, are refused with kInvalidArgument, nothing
  // changed, unless this is set. An intended narrowing (one format, one subfolder less) removes a
  // minority; in a folder of a few photos, dropping most of them by one format is ordinary.
  bool confirm_removal = false;
  DecodeOptions decode;
  // Encode again every file of the given paths (none given: of every root), ignoring sizes, mtimes
  // and remembered failures. With the index's own model, embeddings are replaced in place and other
  // roots are untouched. With another model, the whole index moves to it: the given paths and every
  // root are encoded again, and the old embeddings are dropped in the first transaction (so two
  // models never mix); refused (kMismatch, nothing changed) when some entries could not be encoded
  // again (a missing root, or entries under no root, e.g. imported).
  bool reindex = false;
  bool allow_mixed_precision = false;  // accept the int8/fp32 sibling of the index's model
  bool retry_failed = false;           // decode again files that failed before and have not changed since
  // Videos (video.h): a frame every frame_interval seconds, plus scene changes (> 0; default 2 s).
  // Stored videos keep the frames they were indexed with until they change or --reindex.
  double frame_interval = 2.0;
  EncodeOptions encode;  // batch size (also the images per committed transaction), decoder threads,
                         // model workers: defaults and why in encode_options.h
};

struct IndexSummary {
  int64_t added = 0, updated = 0, removed = 0, unchanged = 0, moved = 0;
  int64_t failed = 0;              // files not indexed for a reason other than exclusion (each reported)
  int64_t failed_before = 0;       // unchanged files that failed in an earlier run, not tried again
  int64_t excluded = 0;            // entries removed because their root's options no longer take them
  int64_t missing = 0;             // roots not found, and folders now empty with entries below (entries kept)
  int64_t unreadable_folders = 0;  // folders that could not be listed (entries below them kept)
  int64_t links = 0;               // symbolic links met and not followed
  int64_t paired = 0;              // RAW files left out for a JPEG of the same name (WalkResult::paired)
  int64_t filled = 0;              // files indexed before capture times were stored, given theirs (no model)
  int64_t video_frames = 0;        // frames stored for the videos added or updated (video.h)
  double video_seconds = 0;        // their duration
  double seconds = 0;
  bool interrupted = false;
};

// Receives what happens during a run; called from the thread that called run_index.
class IndexObserver {
 public:
  virtual ~IndexObserver() = default;
  virtual void on_plan(int64_t /*to_encode*/, int64_t /*unchanged*/, int64_t /*gone*/) {}
  virtual void on_progress(int64_t /*done*/, int64_t /*total*/) {}
  // A file that could not be indexed (decode or read error, a FIFO or device with a photo's name,
  // a dangling link, a path over PATH_MAX): counted in `failed`.
  virtual void on_file_error(const Error& /*error*/) {}
  // Something about a root or folder the user should know (a missing root whose entries are kept,
  // an unreadable folder, links not followed, options replaced, entries removed as now excluded).
  virtual void on_notice(const std::string& /*message*/) {}
};

// The phases of run_index, public so that planning can be tested without a model.

// One folder or file to look at in a pass, with the walk options that define what it holds.
struct IndexTarget {
  std::string path;  // canonical
  bool is_file = false;
  WalkOptions walk;
  bool record = true;                   // kept as a root (false: a file that a folder root already holds)
  std::optional<WalkOptions> replaced;  // the stored options this run replaces, if any
  std::string within;                   // a folder given inside this indexed folder root, whose options it uses
};

struct PlannedFile {
  FoundFile file;
  std::optional<FileRecord> existing;  // set when the file is indexed already (changed, or --reindex)
};

// What a pass has to do: disk compared with the catalog.
struct IndexPlan {
  std::vector<PlannedFile> to_encode;
  // Indexed files positively seen to be gone (lstat says ENOENT and the nearest existing folder above
  // was listed completely, or the path is no longer a regular file), by content hash: a new file with
  // the same hash takes over the embedding (a move); the rest are removed after a complete pass.
  std::unordered_multimap<std::string, FileRecord> vanished;
  std::vector<FileRecord> excluded;       // on disk, but no root's options take them any more
  std::vector<SkippedFile> failures;      // to report, count and remember as failed
  std::vector<std::string> notices;       // missing roots, unreadable folders, links not followed
  std::vector<std::string> pruned_roots;  // file roots whose file is gone (their entry is in vanished)
  std::vector<FileRecord> superseded;     // RAW files indexed before, now paired with a JPEG: removed
  // Entries below a folder that is now empty (an unmounted share's mount point, most often) are kept
  // and counted in `missing` (once per folder); entries inside a cnclip index folder met by the walk
  // (an index's own thumbnails) are in `excluded`.
  int64_t unchanged = 0, failed_before = 0, missing = 0, unreadable_folders = 0, links = 0, paired = 0;
};

// Phase 1: the folders and files of this pass: the given paths (canonical; throws for one that does
// not exist), else every root indexed before; with `all_roots`, every root in addition to the paths.
// Throws kInvalidArgument for bad walk options, and for a folder inside an indexed folder root that
// the root's options leave out, or that was given with options of its own.
std::vector<IndexTarget> resolve_targets(Catalog& catalog, const IndexOptions& options, bool all_roots = false);
// Phase 2: walks the targets and compares them with the catalog. Reads the disk and the catalog,
// writes nothing. `force`: every file found is to be encoded (--reindex with the index's model).
IndexPlan plan_index(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options,
                     bool force = false);

// Throws kInvalidArgument (nothing changed) when the targets' new options would remove every indexed
// file of a root, or more than half of one of 10 or more, and options.confirm_removal is not set.
void check_removals(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options);

// Runs one index pass (phases: resolve targets, plan, encode and commit, finish the pass).
// What it guarantees:
// - Incremental: only new files and files whose size or mtime changed are decoded; a new file whose
//   content hash equals that of a file that disappeared takes over its embedding (a move or rename).
// - Exact copies are one vector: a photo with the content hash and extension of an indexed photo
//   whose embedding is current (not waiting to be encoded again by this run; with `reindex`, written
//   by this run, and a photo it encodes gives its embedding to its copies this run does not write)
//   is stored with that embedding, not the model's output for it, which can differ with
//   its batch mates (OpenBLAS's AVX2 kernels ~1e-7; int8's per-call activation scale more). Equal
//   scores among copies are then ties, ordered by id. One indexed catalog lookup per photo (two for
//   a photo a --reindex encodes afresh).
// - Roots (folders and single files, with their walk options) are recorded in the first
//   transaction, before any encoding, so an interrupted first run is continued by a run with no path.
// - Committed in batches: each batch of encoded files is one transaction; an interruption (Ctrl-C,
//   checked between batches, or a crash) keeps every committed batch, and the next run does the rest.
// - Nothing is removed that was not positively seen to be gone: a missing root, a folder that cannot
//   be listed, a file that cannot be looked at keep their entries (and are reported). At the end of
//   a complete pass, files seen to be gone and files the roots' options now exclude are removed; a
//   file root whose file is gone (its folder being there) is removed with its entry.
// - Capture time and size (photo_meta.h) are stored with every file encoded or moved; files indexed
//   before they were stored get them from their bytes without the model (`filled`).
// - A file that cannot be decoded is reported through the observer and counted, never fatal; it is
//   remembered, and not tried again while its size and mtime stay the same (unless retry_failed).
// Throws Exception for failures that end the run (model mismatch, unwritable index, missing path).
IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer);

}  // namespace cnclip
