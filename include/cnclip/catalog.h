// The catalog: one SQLite database per index, the source of truth for what is indexed. One row per
// file (canonical absolute path, size, mtime, content hash, when indexed, and its embedding), the
// folders that were indexed, and the model the embeddings come from. The vector snapshot
// (vector_index.h) is derived from it and rebuilt whenever it is older.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cnclip/error.h"
#include "cnclip/photo_meta.h"

struct sqlite3;
struct sqlite3_stmt;

namespace cnclip {

struct FileRecord {
  int64_t id = 0;
  std::string path;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  std::string content_hash;
  int64_t indexed_at = 0;  // unix seconds
  // Schema 3: capture time and size (photo_meta.h). meta.source is kNone for a file indexed before
  // schema 3 and not yet filled in (and for imported entries): its capture time is then its mtime.
  PhotoMeta meta{};
};

// A file that could not be indexed, remembered with the size and mtime it had then (an unchanged
// broken file is not decoded again) and why.
struct FailureRecord {
  std::string path;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  std::string reason;  // the error's message
};

// A folder or single file indexed as a whole: what `cnclip index` with no path looks at again.
struct RootRecord {
  std::string path;      // canonical
  bool is_file = false;  // a single file given as a root
  std::string options;   // the walk options that define what it holds, as the indexer wrote them
                         // ("" = the defaults)
};

// The page size of a catalog made now (catalog.cpp says why). Older catalogs keep SQLite's 4 KiB
// pages until `cnclip repair` rewrites them (repair.h).
inline constexpr int64_t kCatalogPageBytes = 32768;

// Schema 4: a stored video frame after the video's first (the first frame is the video's own files
// row, at time 0). Its vector id (in the vector snapshot and search hits) is kFrameIdBase + its row
// id, so file ids (below 2^40) and frame ids never meet in one index.
inline constexpr int64_t kFrameIdBase = int64_t{1} << 40;
struct FrameRecord {
  int64_t vector_id = 0;  // kFrameIdBase + row id
  int64_t file_id = 0;    // the video's files row
  int64_t time_ms = 0;    // from the start of the video
};

// Message for a damaged catalog: what it means and what to do ("...; run 'cnclip repair' ...").
std::string catalog_damage_message(const std::string& path, const std::string& detail);
// When SQLite's last error on `db` (a catalog at `path`, or repair's fresh copy of one) is this
// process's file size limit: file_size_limit_message (error.h) for it; else empty.
std::string file_size_limit_failure(sqlite3* db, const std::string& path, const std::string& detail);
// Whether a stored embedding can be searched: `dim` finite floats of unit length (within 1e-3).
bool embedding_is_valid(const float* v, int dim);

// Not thread-safe: one Catalog per thread. Every write happens inside a transaction (begin/commit)
// and bumps the generation counter, so readers can tell whether a snapshot is current. SQLite's WAL
// mode lets searches read the last committed state while an index run writes. Failures throw
// Exception naming the database file; damage (SQLITE_CORRUPT / SQLITE_NOTADB from any statement, a
// stored embedding that is not a finite unit vector) is kCorrupt with catalog_damage_message(), and
// no query returns fewer rows instead of failing.
class Catalog {
 public:
  // Opens `path`, creating the database when `create` is true (else a missing file is kNotFound).
  static std::unique_ptr<Catalog> open(const std::string& path, bool create);
  // Opens `path` for reading only: never writes to it or creates anything, so it works on a read-only
  // mount or another user's files. SQLite opens an existing -shm read-only; where none exists and
  // none can be created (read-only, or a full disk), a catalog without a pending write-ahead log is
  // opened as immutable, and one whose -wal holds commits fails (kPermissionDenied, or kIoError on a
  // full disk) rather than being read without them.
  static std::unique_ptr<Catalog> open_read_only(const std::string& path);
  // Long-lived readers (`cnclip serve`, a `search-text -` stream; Searcher::search calls it per query)
  // call refresh() between reads of a catalog opened by open_read_only. An immutable connection
  // (above) never sees a later commit, SQLite taking the file for one that does not change: when the
  // catalog, its -wal or its -shm changed since it was opened, it is opened again, as open_read_only
  // chooses now (a writer that came meanwhile made the -shm a normal read goes through; a log with
  // commits and no -shm throws as on open, rather than answering from the older file). Any read-only
  // connection is opened again when another file was put in the catalog's place (`cnclip repair`
  // renames a fresh catalog over it); it would read the replaced one for ever. Nothing happens for
  // a writer's catalog. Call with no statement in progress; not thread-safe (as the rest of the
  // class).
  void refresh();
  // Whether this connection reads the file as immutable and the catalog, its -wal or -shm changed
  // since it was opened: what it read may mix pages from before and after a writer's checkpoint.
  bool changed_under_immutable_read();
  ~Catalog();
  Catalog(const Catalog&) = delete;
  Catalog& operator=(const Catalog&) = delete;

  const std::string& path() const { return path_; }

  // SQLite's own checks: PRAGMA quick_check (`full`: integrity_check), at most 20 problems; empty
  // when the catalog is sound. quick_check reads every page once (about as long as reading the file).
  std::vector<std::string> integrity_problems(bool full = false);
  // Throws kCorrupt (catalog_damage_message) when integrity_problems(full) finds any.
  void check(bool full = false);

  std::optional<std::string> meta(const std::string& key);
  void set_meta(const std::string& key, const std::string& value);
  int64_t generation();

  void begin();     // BEGIN IMMEDIATE
  void commit();    // bumps the generation, then COMMIT
  void rollback();  // nothing when no transaction is open (SQLite may have rolled it back itself)
  // rollback() while another error is being handled: its own failure is not reported over that one.
  void rollback_after_error() noexcept;

  int64_t count();
  // SQLite's page size of this catalog (kCatalogPageBytes for one made now).
  int64_t page_bytes();
  // Files whose path is `dir` + "/" + anything (all files when dir is empty), without embeddings.
  std::vector<FileRecord> files_under(const std::string& dir);
  // The file at `path` itself, or the files below it when it is a folder: what --under PATH selects
  // (a file given as a folder to look in means just that file). Without embeddings.
  std::vector<FileRecord> files_at_or_under(const std::string& path);
  std::optional<FileRecord> find(const std::string& path);
  std::vector<FileRecord> find_by_ids(const std::vector<int64_t>& ids);
  // The first file, in id order, whose content hash is `hash` (never an empty one: imported rows have
  // none) and that `accept` takes; without its embedding. Through the files_by_hash index, reading
  // rows only up to the one taken.
  std::optional<FileRecord> first_with_hash(const std::string& hash,
                                            const std::function<bool(const FileRecord&)>& accept);
  // Embedding of one file (empty when absent).
  std::vector<float> embedding(int64_t id);

  int64_t insert(const FileRecord& record, const float* embedding, int dim);
  // Updates path/size/mtime/hash/indexed_at, and the embedding when `embedding` is not null.
  void update(const FileRecord& record, const float* embedding, int dim);
  void remove(int64_t id);
  int64_t remove_under(const std::string& dir);
  void remove_all();

  // Schema 3. Files indexed before their capture time and size were stored (meta.source kNone),
  // without embeddings; empty for a catalog opened read-only at an older schema.
  std::vector<FileRecord> files_without_meta();
  void set_photo_meta(int64_t id, const PhotoMeta& meta);
  // id -> capture time (unix seconds) of every file taken in [after, before) (either bound may be
  // absent). A file whose time is not known yet (not filled in, imported, or an older schema read
  // without upgrading) counts as taken at its mtime. One pass over a covering index: ~30 ms at
  // 100,000 files.
  std::unordered_map<int64_t, int64_t> capture_times(std::optional<int64_t> after = std::nullopt,
                                                     std::optional<int64_t> before = std::nullopt);

  // Calls fn(id, vector) for every file, in id order, then for every stored video frame after a
  // video's first (id kFrameIdBase + frame row id, in that order).
  void for_each_embedding(int dim, const std::function<void(int64_t, const float*)>& fn);
  // The vectors for_each_embedding gives: files and video frames.
  int64_t vector_count();

  // Schema 4: video frames. set_frames replaces the frames of the video `file_id` (its files row must
  // exist) by times_ms.size() frames, embeddings row by row (call inside the transaction that writes
  // the video's row, so a video's frames are committed together). Removing a file removes its frames.
  void set_frames(int64_t file_id, const std::vector<int64_t>& times_ms, const float* embeddings, int dim);
  // Every stored frame, by file id then time (empty below schema 4); the frames of one video.
  std::vector<FrameRecord> frames();
  std::vector<FrameRecord> frames_of(int64_t file_id);
  // Calls fn(id, vector) for each of `ids` that is in the catalog (others are skipped), in the
  // order given; one indexed lookup each. kCorrupt for a damaged embedding, as for_each_embedding.
  void for_each_embedding_of(const std::vector<int64_t>& ids, int dim,
                             const std::function<void(int64_t, const float*)>& fn);

  // The change log, for readers that combine an older vector snapshot with what changed since
  // (index_store.h). SQLite triggers on `files` record, for each id inserted, whose embedding was
  // updated, or deleted, the generation its transaction commits as (table `changes`, one row per
  // id, its latest change). Created by a writer's open on any catalog that lacks it: additive, no
  // schema version of its own, and older cnclip versions that write the catalog update it too.
  // The generation from which on the log is complete (the log holds every change committed after
  // it), or nullopt when the catalog has no log (an old catalog opened read-only).
  std::optional<int64_t> changes_since();
  // Ids changed in generations after `generation` (which must be >= changes_since()).
  std::vector<int64_t> changed_since(int64_t generation);
  // Forgets the changes up to `generation` (a snapshot of it was written), in a transaction of its
  // own that does not bump the generation (nothing the snapshot holds changes). Not inside begin().
  void prune_changes(int64_t generation);
  // A read transaction: everything read until end_read() sees one committed state. Does nothing
  // (returns false) when a transaction is already open; end_read() only when it returned true.
  bool begin_read();
  void end_read();

  // Files that could not be decoded, remembered with their size and mtime so that an unchanged
  // broken file is not decoded (and reported) again on every run.
  std::optional<FailureRecord> failure(const std::string& path);
  void record_failure(const FileRecord& file, const std::string& reason);
  void forget_failure(const std::string& path);
  int64_t forget_failures_under(const std::string& dir);

  // Roots (schema 2; a schema-1 catalog opened without upgrading lists its folders with default
  // options). roots() is their paths.
  std::vector<std::string> roots();
  std::vector<RootRecord> root_records();
  void set_root(const RootRecord& root);     // adds, or replaces the kind and options of a known root
  void add_root(const std::string& dir);     // a folder with default options, unless already a root
  void remove_root(const std::string& dir);  // `dir` and every root below it

 private:
  Catalog(sqlite3* db, std::string path);
  // Brings a catalog of an older schema to the current one, in place (run on open); throws kMismatch
  // for a newer schema.
  void upgrade_schema();
  // Creates the change log (changes_since) when missing; writable catalogs only.
  void ensure_change_log();
  void ensure_frame_change_triggers();
  bool has_table(const char* name);
  sqlite3_stmt* prepare(const char* sql);
  void exec(const char* sql);
  // DELETE of `dir` itself and every path below it from `table`; returns the rows deleted.
  int64_t delete_path_and_below(const char* table, const std::string& dir);
  [[noreturn]] void fail(const std::string& what);
  std::string record_columns() const;

  // The catalog file, its -wal and -shm as seen when an immutable connection was opened.
  struct FilesSeen {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1, wal_size = -1, shm_size = -1;  // -1: not there
    int64_t mtime_ns = 0;
    bool operator==(const FilesSeen& o) const {
      return dev == o.dev && ino == o.ino && size == o.size && wal_size == o.wal_size && shm_size == o.shm_size &&
             mtime_ns == o.mtime_ns;
    }
  };
  static FilesSeen files_seen(const std::string& path);

  sqlite3* db_;
  std::string path_;
  bool has_meta_ = false;    // the files table has the schema-3 columns
  bool has_frames_ = false;  // schema 4: the frames table exists
  bool read_only_ = false;   // opened by open_read_only
  bool immutable_ = false;   // opened with immutable=1 (open_read_only's fallback)
  FilesSeen seen_;           // when read_only_: the files as they were when it was opened
};

// RAII transaction: rolls back unless commit() was called.
class CatalogTransaction {
 public:
  explicit CatalogTransaction(Catalog& c) : c_(c) { c_.begin(); }
  ~CatalogTransaction() {
    if (!done_) c_.rollback_after_error();
  }
  void commit() {
    c_.commit();
    done_ = true;
  }

 private:
  Catalog& c_;
  bool done_ = false;
};

}  // namespace cnclip
