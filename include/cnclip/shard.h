// Embedding one photo collection on many machines: `cnclip embed-image --shard K/N` takes a stable
// share of a file list or folder walk and writes its embeddings to PREFIX.npy + PREFIX.paths (with
// PREFIX.json saying what they are), which `cnclip import` merges into an index (import.h).
//
// The split. A file's shard is 1 + XXH3_64(key) mod N, key being the file's path relative to its root
// (shard_of). XXH3's output is frozen since xxHash 0.8.0 (Debian 12 has 0.8.1), so every machine and
// every run puts a file in the same shard whatever the order, number or timing of the inputs: the
// shards 1/N ... N/N of the same inputs hold every file exactly once.
//
// The outputs (run_shard). PREFIX.npy is a float32 [rows, D] matrix of the model's embeddings, stored
// as the model returned them (bit for bit what `cnclip index` stores); PREFIX.paths holds the row's
// absolute paths, one per line; PREFIX.json records the shard, the model (fingerprint, architecture,
// precision, dimension), the decoding options, the counts and the files that failed with why. Every
// file is written whole or not at all (temporary file, fsync, rename), and PREFIX.npy last: before
// anything else is written an older PREFIX.npy is deleted, so a PREFIX.npy always belongs to the
// PREFIX.paths and PREFIX.json beside it, and an interrupted run never leaves an importable half.
//
// Resuming. While it runs, finished work is saved in PREFIX.partial/ (chunks of rows, each written
// whole, at most every ShardRunOptions::save_every_seconds): a run stopped by Ctrl-C, SIGTERM (a
// scheduler's time limit or preemption), kill -9 or a power cut is continued by running the same
// command, which encodes only what is not saved (a saved row is used again when its file still has
// the size and mtime it had). A run over complete outputs of the same shard, model and decoding whose
// files are the same does nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cnclip/embed_files.h"
#include "cnclip/error.h"
#include "cnclip/file_walk.h"
#include "cnclip/model.h"

namespace cnclip {

// Shard `index` of `count`, counted from 1 (the Slurm recipe runs --array=1-N).
struct ShardSpec {
  int64_t index = 1;
  int64_t count = 1;
  std::string to_string() const { return std::to_string(index) + "/" + std::to_string(count); }
};

// The most shards a split takes (more is a typing mistake, not a cluster).
constexpr int64_t kMaxShards = 1'000'000;

// Parses "K/N" (whole numbers, 1 ≤ K ≤ N ≤ kMaxShards). Throws Exception(kInvalidArgument) whose
// message starts with `what` and says in words what is wrong: "--shard 0/4: shards are counted from
// 1 (the first of 4 is 1/4)", "--shard 5/4: there are only 4 shards (K must be at most N)", "--shard
// 'x': expects K/N, two whole numbers with 1 <= K <= N, e.g. 2/8".
ShardSpec parse_shard_spec(const std::string& text, const std::string& what = "--shard");

// The shard (1..count) of a key: 1 + XXH3_64bits(key) mod count. Pure, thread-safe.
int64_t shard_of(std::string_view key, int64_t count);

struct ShardFile {
  std::string path;  // the file to read: absolute and canonical for walked files, else as given
  std::string key;   // what decides its shard (see select_shard)
};

// This shard's share of the inputs, and what could not be looked at.
struct ShardSelection {
  std::vector<ShardFile> files;  // in input order (each folder's files in sorted order)
  int64_t total = 0;             // files of all shards
  // Folders that could not be listed and entries a walk met but cannot read (FIFOs, dangling links,
  // ...) whose key falls in this shard, each naming the path; the caller reports them.
  std::vector<Error> problems;
};

// Lists the inputs and keeps the files of `shard`. An input that is a folder is walked as `cnclip
// index` walks it (walk_folder: recursive, sorted, `walk`'s hidden/exclude/extension rules, links
// not followed, RAW+JPEG pairs as the JPEG); any other input is a file, taken as it is given (a
// missing one is embedded and fails then, naming it). Keys: with `root` (a folder, not empty), the
// path relative to root (made absolute and lexically normal, not resolved: every input must lie
// below it, else Exception(kInvalidArgument) naming the first that does not); without it, a walked
// file's path relative to the folder given, and a listed file's path as given, lexically normalized
// ("./a//b.jpg" is "a/b.jpg"). So machines that mount the photos in different places agree when they
// walk the same folder, or list files relative to the same --root. A file given twice (or reached
// twice) is kept once. Throws Exception for an input folder that cannot be opened at all.
ShardSelection select_shard(const std::vector<std::string>& inputs, const ShardSpec& shard, const std::string& root,
                            const WalkOptions& walk);

struct ShardRunOptions {
  EmbedFilesOptions embed;  // decoding and encoding, as for embed_image_files
  // At most this long between saves of finished work to PREFIX.partial/ (0: after every batch). A
  // save is one small file per chunk; 30 s bounds what an interrupted run loses to about 180
  // ViT-B-16 images per CPU core (~6 images/s on 2 cores, README "Performance").
  double save_every_seconds = 30;
};

struct ShardRunSummary {
  int64_t files = 0;              // in this shard
  int64_t embedded = 0;           // rows of PREFIX.npy
  int64_t reused = 0;             // of those, taken from an interrupted run's saved work
  int64_t failed = 0;             // files that could not be embedded (listed in PREFIX.json)
  bool already_complete = false;  // the outputs were there and current: nothing was done
  bool interrupted = false;       // stopped by interrupt_requested(); saved work stays in PREFIX.partial/
};

// What run_shard reports while it runs (called on the calling thread).
class ShardObserver {
 public:
  virtual ~ShardObserver() = default;
  virtual void on_start(int64_t /*to_encode*/, int64_t /*reused*/) {}
  virtual void on_progress(int64_t /*done*/, int64_t /*total*/) {}
  virtual void on_file_error(const Error& /*error*/) {}  // names the file
};

// The file names of the outputs for `prefix`.
struct ShardOutputPaths {
  std::string npy, paths, json, partial;
  explicit ShardOutputPaths(const std::string& prefix)
      : npy(prefix + ".npy"), paths(prefix + ".paths"), json(prefix + ".json"), partial(prefix + ".partial") {}
};

// Embeds `selection` (of `shard`) and writes the outputs for `prefix` as described at the top,
// resuming saved work. Stops between batches when interrupt_requested(), saving what is finished
// (summary.interrupted; the outputs are not written). A file that cannot be embedded is reported to
// the observer and listed in PREFIX.json, and the others are written: summary.failed counts them.
// Names that hold a newline, or end in a carriage return, cannot be a line of PREFIX.paths and fail
// so (embed-image without --out prints JSONL, which carries any name).
// Throws Exception: kBusy when another run holds PREFIX.partial/ (a lock file in it); kMismatch
// when PREFIX.json or PREFIX.partial/ belong to another shard, model or decoding (nothing is
// overwritten: choose another prefix or delete them); kIoError/kPermissionDenied naming the file that
// cannot be written; what the model throws. Saved work and complete older outputs are never lost to
// a failure.
ShardRunSummary run_shard(Model& model, const ShardSelection& selection, const ShardSpec& shard,
                          const std::string& prefix, const ShardRunOptions& options, ShardObserver& observer);

}  // namespace cnclip
