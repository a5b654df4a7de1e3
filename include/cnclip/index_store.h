// An index directory: the catalog (catalog.sqlite3, the source of truth), a vector snapshot derived
// from it (vectors-<generation>.faiss, of the type the catalog's setting asks for: vector_index.h),
// and a lock file that admits one writer at a time.
//
// Crash safety: every batch of work is one SQLite transaction, so after a crash (even kill -9) the
// catalog holds exactly the committed batches. A snapshot is named after the catalog generation it
// was built from and written atomically. A search uses the newest snapshot plus the catalog's
// change log since its generation (catalog.h): the ids changed since are masked out of the
// snapshot and their current vectors read from the catalog (the delta), so the two can never
// disagree, and a search during a long index run (or after an interrupted one) reads only the
// delta from SQLite, not every embedding.
//
// Damage: the snapshot carries a checksum verified on every open (vector_index.h); a damaged one is
// ignored (the catalog's vectors are used), reported once through the warning handler, and
// rewritten by the next writer (ensure_snapshot). The catalog is checked with SQLite's quick_check
// whenever a writer opens it, and any SQLite corruption error names 'cnclip repair' (repair.h).
//
// Read-only indexes (read-only mount, another user's files): kRead never writes anything, so
// searches and info work; kWrite fails at once with kPermissionDenied saying the index is read-only.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/catalog.h"
#include "cnclip/vector_index.h"

namespace cnclip {

enum class IndexAccess {
  kRead,   // searches: no lock, sees the last committed state
  kWrite,  // index/remove/import: creates the directory, holds the lock until destroyed
};

// Where the store's warnings go (a damaged snapshot, ...): one line each, without the "cnclip: "
// prefix. The default prints "cnclip: warning: LINE" on stderr. Thread-safe.
void set_index_warning_handler(std::function<void(const std::string&)> handler);

// Whether DIR holds a catalog. A folder this user may not look into is not an empty one: throws
// ("DIR: cannot read the index: Permission denied") rather than answering false.
bool index_exists(const std::string& dir);
// Throws kPermissionDenied ("DIR: the index is read-only (...)") when DIR or one of its files exists
// and cannot be written (read-only file system, no permission); "DIR: cannot read the index (...)"
// when this user may not even read it.
void require_writable_index(const std::string& dir);
// Creates DIR if needed, checks require_writable_index, and takes the writer lock; returns the
// descriptor that holds it (closing it releases the lock). kBusy as for IndexStore::open.
int lock_index_for_writing(const std::string& dir, bool wait_for_lock);
// Deletes the files repair makes beside the catalog (catalog.sqlite3.repair and .repair-src, with
// their -wal, -shm and -journal): stale for whoever holds the writer lock, as repair does while it runs.
void remove_repair_files(const std::string& dir);

// ${CNCLIP_INDEX} if set, else <data home>/cnclip (xdg_data_home() in runtime.h); `flag` (--index)
// wins over both. Throws kInvalidArgument ("cannot find a place for the index: HOME is not set; give
// --index DIR or set CNCLIP_INDEX") when no place can be derived.
std::string resolve_index_dir(const std::string& flag);

// Where the vectors of a search come from (IndexStore::search_vectors).
struct VectorsOrigin {
  int64_t snapshot_generation = -1;  // the snapshot file's generation; -1: none usable, the catalog's embeddings
  int64_t changed_since = 0;         // ids added, re-encoded or removed since it was written (its delta)
  std::string problem;               // why a snapshot file was passed over (damaged, unreadable), "" if none was
};

// One index folder: its catalog, its vector snapshot and (kWrite) the writer lock. Not thread-safe:
// the catalog is one SQLite connection (Catalog), so a store shared between threads needs every
// call serialized by the caller (cnclip serve holds a mutex around its store and Searcher); other
// processes may read and one may write the same folder at the same time (WAL, the lock file).
class IndexStore {
 public:
  // kRead on a directory without a catalog throws kNotFound ("no index at DIR; run cnclip index").
  // kWrite when another writer holds the lock: waits when `wait_for_lock`, else throws kBusy; on a
  // read-only index throws kPermissionDenied; on a damaged catalog (quick_check) throws kCorrupt.
  static std::unique_ptr<IndexStore> open(const std::string& dir, IndexAccess access, bool wait_for_lock = false);
  // kWrite with the lock already held (`lock_fd` from lock_index_for_writing, owned from now on,
  // also when this throws). kWrite removes what a killed repair left (remove_repair_files).
  static std::unique_ptr<IndexStore> open_locked(const std::string& dir, int lock_fd);
  ~IndexStore();

  const std::string& dir() const { return dir_; }
  Catalog& catalog() { return *catalog_; }

  // Whether the catalog's embeddings come from the model of `bundle`: the same fingerprint, or the
  // same source checkpoint, architecture and precision (an export by another exporter version).
  // An empty index matches any model.
  bool model_matches(const BundleManifest& bundle);
  // Throws kMismatch with a message naming both models when !model_matches(bundle). With
  // `allow_other_precision`, the same checkpoint exported at another precision (fp32/int8) is
  // accepted: its embeddings differ slightly (cosine ~0.999), so this is never done silently.
  void require_model(const BundleManifest& bundle, bool allow_other_precision = false);
  // Records `bundle` as the index's model when the index holds no embeddings yet (kWrite; inside or
  // outside a transaction).
  void record_model(const BundleManifest& bundle);
  int embedding_dim();

  // Exact fp32 vectors of the current generation, with contiguous rows (vectors() and ids() set):
  // the flat snapshot file when current and intact, else built from the catalog (a damaged snapshot
  // is reported once through the warning handler). Throws kCorrupt when a catalog embedding is
  // damaged. For callers that read rows (classify, dups); searches use search_vectors().
  std::unique_ptr<VectorIndex> load_vectors();
  // What searches use: the newest intact snapshot of a generation the change log covers, with the
  // delta since (VectorIndex::with_delta; none when it is current), else the catalog's vectors (also
  // when the snapshot is damaged or this user cannot read it: reported through the warning handler).
  // All read in one read transaction, so snapshot, delta and the generation agree. With `exact`,
  // only a flat snapshot is used (another type gives way to the catalog's vectors: seconds at a
  // million). A damaged snapshot is reported through the warning handler.
  // `origin`, when given, receives which snapshot and how large a delta.
  std::unique_ptr<VectorIndex> search_vectors(bool exact = false, VectorsOrigin* origin = nullptr);

  // The snapshot type setting (`cnclip index --vectors`): "flat" unless set.
  VectorSpec vector_spec();
  // Stores it (kWrite; outside a transaction); the next ensure_snapshot builds it. What
  // write_snapshot remembers of a type it could not write (snapshot_fallback(): flat until the index
  // grows, README "Scale") is forgotten with `ask_again` or any other spec.
  void set_vector_spec(const VectorSpec& spec, bool ask_again = false);
  // The concrete type a snapshot written now would have (vector_spec() resolved for count()).
  std::string wanted_vector_type();
  // One line on the last snapshot built by this store (its tuning, or snapshot_fallback()), or "".
  const std::string& snapshot_report() const { return snapshot_report_; }
  // Why the last snapshot this store wrote is flat rather than the spec's type, or "": FAISS could
  // not train the type on so few vectors (tried again when the index holds what it needs), auto
  // found IVF no faster than flat or FAISS failed (tried again when it doubles), or cnclip cannot
  // search the type (flat until another spec is set). Either way the spec is kept.
  const std::string& snapshot_fallback() const { return snapshot_fallback_; }
  // The snapshot_fallback() of the run that wrote the current snapshot, kept in the catalog while it
  // holds (the index is below the count it names), else "": why `cnclip info` shows a flat snapshot
  // under another setting.
  std::string standing_snapshot_fallback();
  // Above this many changed ids (and above 1% of the index's files), an approximate snapshot is
  // rebuilt rather than kept with its delta: a delta of 10,000 ViT-B-16 vectors is 20 MB read from
  // SQLite by each search that opens the index (~50 ms), against a rebuild of the whole IVF. In an
  // index of fewer than 100,000 files, it is rebuilt once a tenth of them changed: removed ids stay
  // in its lists (masked), and an IVF whose probed lists hold mostly removed ids finds few of the
  // rest (64 of 70 photos removed: 3 of 7 found), while a rebuild of it costs little.
  static constexpr int64_t kDeltaRebuildAbove = 10'000;
  // The most changed ids (files, as the change log counts them) an approximate snapshot is kept with.
  static int64_t delta_kept_up_to(int64_t files) {
    return std::max(files / 100, std::min(kDeltaRebuildAbove, files / 10));
  }
  // The current generation's snapshot when it exists and passes its checks, else null (with the
  // reason in *problem when it exists but is damaged).
  std::unique_ptr<VectorIndex> open_snapshot(std::string* problem = nullptr);
  // Writes the snapshot for the current generation (of wanted_vector_type(); approximate types are
  // trained from the catalog's vectors and tuned, vector_index.h), prunes the change log up to it
  // and deletes older snapshots (kWrite). While it builds, searches keep using the newest older
  // snapshot with its delta, where the disk has room for a flat snapshot beside it (else it is
  // deleted first, and searches read the catalog's vectors meanwhile); it stays when the build
  // fails or is interrupted.
  void write_snapshot();
  // write_snapshot() unless the current one is intact and of the wanted type, or (approximate types
  // only) an older intact one of the wanted type has a delta of at most delta_kept_up_to(the
  // index's files): an approximate snapshot is rebuilt when its delta has drifted that far, or when
  // the wanted type changes (auto's list count follows the size). True when it wrote one (kWrite).
  bool ensure_snapshot();
  // Path of the snapshot for the current generation (or for `generation`), whether or not it exists.
  std::string snapshot_path();
  std::string snapshot_path(int64_t generation);
  int64_t disk_bytes();

 private:
  IndexStore(std::string dir, std::unique_ptr<Catalog> catalog, int lock_fd);
  std::string dir_;
  std::unique_ptr<Catalog> catalog_;
  int lock_fd_;
  std::string snapshot_report_, snapshot_fallback_;
  // Snapshot generations present on disk, newest first.
  std::vector<int64_t> snapshot_generations();
  // Whether the index is below the count write_snapshot set for trying the spec's type again.
  bool flat_until_holds();
  // The snapshot of `generation` when intact and of the index's dimension, else null (and the reason).
  std::unique_ptr<VectorIndex> open_snapshot_of(int64_t generation, std::string* problem);
  std::unique_ptr<VectorIndex> catalog_vectors();
};

}  // namespace cnclip
