// An index directory: the catalog (catalog.sqlite3, the source of truth), a vector snapshot derived
// from it (vectors-<generation>.faiss), and a lock file that admits one writer at a time.
//
// Crash safety: every batch of work is one SQLite transaction, so after a crash (even kill -9) the
// catalog holds exactly the committed batches. A snapshot is named after the catalog generation it
// was built from and written atomically; a reader uses it only when that generation is current and
// otherwise builds the vectors from the catalog, so the two can never disagree.
#pragma once

#include <memory>
#include <string>

#include "cnclip/bundle.h"
#include "cnclip/catalog.h"
#include "cnclip/vector_index.h"

namespace cnclip {

enum class IndexAccess {
  kRead,   // searches: no lock, sees the last committed state
  kWrite,  // index/remove/import: creates the directory, holds the lock until destroyed
};

// ${CNCLIP_INDEX} if set, else default_data_dir(); `flag` (--index) wins over both.
std::string resolve_index_dir(const std::string& flag);

class IndexStore {
 public:
  // kRead on a directory without a catalog throws kNotFound ("no index at DIR; run cnclip index").
  // kWrite when another writer holds the lock: waits when `wait_for_lock`, else throws kBusy.
  static std::unique_ptr<IndexStore> open(const std::string& dir, IndexAccess access, bool wait_for_lock = false);
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

  // The vectors of the current generation: the snapshot file when current, else built from the catalog.
  std::unique_ptr<VectorIndex> load_vectors();
  // Writes the snapshot for the current generation and deletes older ones (kWrite).
  void write_snapshot();
  // Path of the snapshot for the current generation, whether or not it exists.
  std::string snapshot_path();
  int64_t disk_bytes();

 private:
  IndexStore(std::string dir, std::unique_ptr<Catalog> catalog, int lock_fd);
  std::string dir_;
  std::unique_ptr<Catalog> catalog_;
  int lock_fd_;
};

}  // namespace cnclip
