#include "cnclip/index_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <mutex>

#include "cnclip/runtime.h"

namespace cnclip {
namespace {

constexpr const char* kCatalogFile = "catalog.sqlite3";
// Catalog meta: snapshots are flat until the index holds this many vectors (files and video frames, as
// write_snapshot counts them): set when the spec's type was not written, so that index runs do not
// train it again each time (0: no limit). The name it had when only auto set it is still read.
constexpr const char* kFlatUntilMeta = "vectors_flat_until";
constexpr const char* kAutoFlatUntilMeta = "vectors_auto_flat_until";
constexpr const char* kFlatWhyMeta = "vectors_flat_why";  // snapshot_fallback() of the run that set kFlatUntilMeta

void make_dirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Exception(errno_error(dir, ec.value(), "cannot create index directory"));
}

std::string short_fingerprint(const std::string& f) { return f.substr(0, 12); }

std::mutex warning_mutex;
std::function<void(const std::string&)>& warning_handler() {
  static std::function<void(const std::string&)> handler = [](const std::string& m) {
    std::cerr << "cnclip: warning: " << m << std::endl;
  };
  return handler;
}

void warn(const std::string& message) {
  std::lock_guard<std::mutex> lock(warning_mutex);
  if (warning_handler()) warning_handler()(message);
}

// The most disk a snapshot of `type` (canonical, canonical_vector_type) for n vectors of `dim` may
// take: flat's 4 bytes a dimension and 8-byte id per vector, since every type may be written as flat
// instead (too few vectors to train it, auto's IVF not paying off, a FAISS failure); 512 bytes more
// per vector for types whose codes cnclip does not know (an HNSW's links); and 64 MiB to spare for the
// catalog's log.
uint64_t snapshot_bytes_at_most(const std::string& type, int dim, int64_t n) {
  const bool known = type == "flat" || type == "flat-fp16" || type == "flat-sq8" ||
                     (type.rfind("IVF", 0) == 0 && type.size() > 4 && type.compare(type.size() - 4, 4, ",SQ8") == 0);
  const uint64_t per_vector = 4ull * static_cast<uint64_t>(std::max(dim, 0)) + (known ? 8 : 512);
  return per_vector * static_cast<uint64_t>(std::max<int64_t>(n, 0)) + (64ull << 20);
}

// Whether the file system holding `dir` has `bytes` free for this process (false when it cannot say).
bool has_room(const std::string& dir, uint64_t bytes) {
  struct statvfs v {};
  if (::statvfs(dir.c_str(), &v) != 0) return false;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize >= bytes;
}

// Deletes dir's vectors-* files but `keep`: every one, or (`temporaries_only`) those that are not a
// snapshot (temporary files of interrupted writes).
void delete_snapshot_files(const std::string& dir, const std::string& keep, bool temporaries_only) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind("vectors-", 0) != 0 || name == keep) continue;
    const bool snapshot = name.size() > 6 && name.compare(name.size() - 6, 6, ".faiss") == 0;
    if (!temporaries_only || !snapshot) ::unlink((dir + "/" + name).c_str());
  }
  ::closedir(d);
}

}  // namespace

void set_index_warning_handler(std::function<void(const std::string&)> handler) {
  std::lock_guard<std::mutex> lock(warning_mutex);
  warning_handler() = std::move(handler);
}

bool index_exists(const std::string& dir) {
  struct stat st {};
  if (::stat((dir + "/" + kCatalogFile).c_str(), &st) == 0) return true;
  if (errno != ENOENT && errno != ENOTDIR) throw Exception(errno_error(dir, errno, "cannot read the index"));
  return false;
}

void require_writable_index(const std::string& dir) {
  auto check = [&](const std::string& path) {
    if (::access(path.c_str(), W_OK) == 0 || errno == ENOENT) return;
    const int err = errno;
    if (err != EROFS && err != EACCES && err != EPERM) return;  // other failures are reported where they happen
    // Not even readable (a folder of another user's, mode 700; a catalog of mode 600): searches
    // cannot read it either, and saying they work would send the user the wrong way.
    for (const std::string& needed : {dir, dir + "/" + kCatalogFile}) {
      // The folder needs only to be passed through (711 is readable by name).
      if (::access(needed.c_str(), needed == dir ? X_OK : R_OK) != 0 && (errno == EACCES || errno == EPERM)) {
        throw Exception(ErrorCode::kPermissionDenied,
                        dir + ": cannot read the index (" + needed + ": " + std::strerror(errno) + ")");
      }
    }
    throw Exception(ErrorCode::kPermissionDenied,
                    dir + ": the index is read-only (" + path + ": " + std::strerror(err) +
                        "); searches and 'cnclip info' work, but index, remove, import and repair need write access");
  };
  check(dir);
  for (const char* f : {"catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm", "lock"}) {
    check(dir + "/" + f);
  }
}

int lock_index_for_writing(const std::string& dir, bool wait_for_lock) {
  make_dirs(dir);
  require_writable_index(dir);
  const std::string lock_path = dir + "/lock";
  int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd < 0) throw Exception(errno_error(lock_path, errno, "cannot create lock file"));
  if (::flock(lock_fd, LOCK_EX | (wait_for_lock ? 0 : LOCK_NB)) != 0) {
    char buf[32] = {0};
    const ssize_t got = ::pread(lock_fd, buf, sizeof(buf) - 1, 0);
    ::close(lock_fd);
    std::string pid;
    for (ssize_t i = 0; i < got && buf[i] >= '0' && buf[i] <= '9'; ++i) pid += buf[i];
    const std::string holder = pid.empty() ? "" : " (pid " + pid + ")";
    throw Exception(ErrorCode::kBusy, dir + ": index is being updated by another cnclip process" + holder +
                                          "; wait for it or use --wait");
  }
  const std::string me = std::to_string(::getpid());
  if (::ftruncate(lock_fd, 0) == 0) (void)!::pwrite(lock_fd, me.data(), me.size(), 0);
  return lock_fd;
}

std::string resolve_index_dir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("CNCLIP_INDEX");
  if (env && *env) return env;
  auto home = xdg_data_home();
  if (!home) {
    throw Exception(ErrorCode::kInvalidArgument, "cannot find a place for the index: " + home.error().message +
                                                     "; give --index DIR or set CNCLIP_INDEX");
  }
  return home.value() + "/cnclip";
}

IndexStore::IndexStore(std::string dir, std::unique_ptr<Catalog> catalog, int lock_fd)
    : dir_(std::move(dir)), catalog_(std::move(catalog)), lock_fd_(lock_fd) {}

IndexStore::~IndexStore() {
  catalog_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::unique_ptr<IndexStore> IndexStore::open(const std::string& dir, IndexAccess access, bool wait_for_lock) {
  const std::string catalog_path = dir + "/" + kCatalogFile;
  if (access == IndexAccess::kRead) {
    if (!index_exists(dir)) {
      throw Exception(ErrorCode::kNotFound, dir +
                                                ": no index here yet (run 'cnclip index PATH' first, "
                                                "or give --index DIR)");
    }
    return std::unique_ptr<IndexStore>(new IndexStore(dir, Catalog::open_read_only(catalog_path), -1));
  }
  return open_locked(dir, lock_index_for_writing(dir, wait_for_lock));
}

void remove_repair_files(const std::string& dir) {
  for (const char* kind : {".repair", ".repair-src"}) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      ::unlink((dir + "/" + kCatalogFile + kind + suffix).c_str());
    }
  }
}

std::unique_ptr<IndexStore> IndexStore::open_locked(const std::string& dir, int lock_fd) {
  // What a killed repair leaves (its fresh catalog, its header-restored copy, their logs: as large as
  // the catalog) is stale once this process holds the lock that repair holds while it runs.
  remove_repair_files(dir);
  try {
    auto catalog = Catalog::open(dir + "/" + kCatalogFile, true);
    // A writer must not build on damage: SQLite would fail later, half-way through a run.
    catalog->check();
    return std::unique_ptr<IndexStore>(new IndexStore(dir, std::move(catalog), lock_fd));
  } catch (...) {
    ::close(lock_fd);
    throw;
  }
}

bool IndexStore::model_matches(const BundleManifest& bundle) {
  auto fp = catalog_->meta("model_fingerprint");
  if (!fp || *fp == bundle.fingerprint || catalog_->count() == 0) return true;
  // The same weights exported again (by a newer exporter, say) give other TorchScript files, hence
  // another fingerprint, but the same embeddings up to float rounding: still the same model.
  return !bundle.source_id.empty() && catalog_->meta("model_source").value_or("") == bundle.source_id &&
         catalog_->meta("model_precision").value_or("") == bundle.precision &&
         catalog_->meta("model_architecture").value_or("") == bundle.architecture;
}

void IndexStore::require_model(const BundleManifest& bundle, bool allow_other_precision) {
  if (model_matches(bundle)) return;
  const std::string arch = catalog_->meta("model_architecture").value_or("?");
  const std::string precision = catalog_->meta("model_precision").value_or("?");
  const bool same_source = catalog_->meta("model_source").value_or("") == bundle.source_id;
  if (same_source && precision != bundle.precision) {
    if (allow_other_precision) return;
    throw Exception(ErrorCode::kMismatch,
                    dir_ + ": index holds " + precision + " embeddings and " + bundle.dir + " is the " +
                        bundle.precision +
                        " export of the same model; their embeddings differ slightly. "
                        "Pass --mixed-precision to use it anyway, or rebuild with 'cnclip index --reindex'");
  }
  throw Exception(ErrorCode::kMismatch,
                  dir_ + ": index was built with another model (" + arch + " " + precision + ", fingerprint " +
                      short_fingerprint(catalog_->meta("model_fingerprint").value_or("")) + ") than " + bundle.dir +
                      " (" + bundle.architecture + " " + bundle.precision + ", fingerprint " +
                      short_fingerprint(bundle.fingerprint) +
                      "); use that model, or rebuild with 'cnclip index --reindex'");
}

void IndexStore::record_model(const BundleManifest& bundle) {
  // An index keeps the model its embeddings came from; a precision sibling admitted with
  // --mixed-precision does not take its place.
  if (catalog_->meta("model_fingerprint") && catalog_->count() > 0) return;
  catalog_->set_meta("model_fingerprint", bundle.fingerprint);
  catalog_->set_meta("model_architecture", bundle.architecture);
  catalog_->set_meta("model_precision", bundle.precision);
  catalog_->set_meta("model_source", bundle.source_id);
  catalog_->set_meta("embedding_dim", std::to_string(bundle.embedding_dim));
}

int IndexStore::embedding_dim() {
  auto d = catalog_->meta("embedding_dim");
  return d ? std::stoi(*d) : 0;
}

std::string IndexStore::snapshot_path(int64_t generation) {
  return dir_ + "/vectors-" + std::to_string(generation) + ".faiss";
}

std::string IndexStore::snapshot_path() { return snapshot_path(catalog_->generation()); }

std::vector<int64_t> IndexStore::snapshot_generations() {
  std::vector<int64_t> out;
  if (DIR* d = ::opendir(dir_.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      // vectors-<digits>.faiss exactly (temporary files of writes in progress have other names)
      if (name.size() <= 14 || name.rfind("vectors-", 0) != 0 || name.compare(name.size() - 6, 6, ".faiss") != 0) {
        continue;
      }
      const std::string digits = name.substr(8, name.size() - 14);
      if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      out.push_back(std::stoll(digits));
    }
    ::closedir(d);
  } else {
    // A folder this user may pass through but not list (mode 711): snapshots are found by name,
    // the current generation's (a finished run's) and the one the change log starts at (an
    // approximate type kept with a small delta).
    std::vector<int64_t> candidates{catalog_->generation()};
    if (auto since = catalog_->changes_since()) candidates.push_back(*since);
    for (const int64_t g : candidates) {
      struct stat st {};
      if (::stat(snapshot_path(g).c_str(), &st) == 0 && std::find(out.begin(), out.end(), g) == out.end()) {
        out.push_back(g);
      }
    }
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

VectorSpec IndexStore::vector_spec() {
  VectorSpec spec;
  spec.text = catalog_->meta("vectors").value_or("flat");
  return spec;
}

void IndexStore::set_vector_spec(const VectorSpec& spec, bool ask_again) {
  // What write_snapshot found (auto's IVF no faster than flat, or a type too big to train yet) holds
  // until the index grows: kept when the same spec is given again (every `index --vectors SPEC
  // PATH`), dropped for another spec or when asked (a rebuild of the snapshot alone).
  if (ask_again || catalog_->meta("vectors").value_or("flat") != spec.text) {
    catalog_->set_meta(kFlatUntilMeta, "0");
  }
  catalog_->set_meta("vectors", spec.text);
}

bool IndexStore::flat_until_holds() {
  auto until = catalog_->meta(kFlatUntilMeta);
  if (!until) until = catalog_->meta(kAutoFlatUntilMeta);
  const int64_t count = until ? std::atoll(until->c_str()) : 0;
  return count > 0 && catalog_->vector_count() < count;  // no count of every row when none is set
}

std::string IndexStore::standing_snapshot_fallback() {
  return flat_until_holds() ? catalog_->meta(kFlatWhyMeta).value_or("") : "";
}

std::string IndexStore::wanted_vector_type() {
  // Where the spec's type was not written (write_snapshot: auto found IVF no faster than flat on
  // these vectors, or FAISS could not train the type on so few), flat until the index has grown
  // enough to try again, rather than training at every index run.
  if (flat_until_holds()) return "flat";
  return vector_spec().resolve(catalog_->count());
}

std::unique_ptr<VectorIndex> IndexStore::open_snapshot_of(int64_t generation, std::string* problem) {
  const int dim = embedding_dim();
  const std::string snapshot = snapshot_path(generation);
  struct stat st {};
  if (dim <= 0 || ::stat(snapshot.c_str(), &st) != 0) return nullptr;
  try {
    auto index = VectorIndex::open_file(snapshot);
    if (index->dim() == dim) return index;
    if (problem)
      *problem = snapshot + ": vector snapshot has dimension " + std::to_string(index->dim()) + ", the catalog " +
                 std::to_string(dim);
  } catch (const Exception& e) {
    // Damaged, unreadable, or not readable by this user (an index shared read-only whose snapshot
    // is private): the catalog's vectors serve instead.
    if (e.code() != ErrorCode::kCorrupt && e.code() != ErrorCode::kIoError && e.code() != ErrorCode::kPermissionDenied)
      throw;
    if (problem) *problem = e.what();
  }
  return nullptr;
}

std::unique_ptr<VectorIndex> IndexStore::open_snapshot(std::string* problem) {
  return open_snapshot_of(catalog_->generation(), problem);
}

std::unique_ptr<VectorIndex> IndexStore::catalog_vectors() {
  const int dim = embedding_dim();
  std::vector<int64_t> ids;
  std::vector<float> vectors;
  if (dim > 0) {
    catalog_->for_each_embedding(dim, [&](int64_t id, const float* v) {
      ids.push_back(id);
      vectors.insert(vectors.end(), v, v + dim);
    });
  }
  return VectorIndex::from_vectors(dim > 0 ? dim : 1, std::move(ids), std::move(vectors));
}

std::unique_ptr<VectorIndex> IndexStore::load_vectors() {
  std::string problem;
  if (auto index = open_snapshot(&problem)) {
    if (index->vectors()) return index;  // flat: rows to read
  } else if (!problem.empty()) {
    // Only a cache of the catalog: said once, and the catalog's vectors are used instead.
    warn(problem + "; using the catalog's vectors instead (the next 'cnclip index' rewrites it)");
  }
  return catalog_vectors();
}

std::unique_ptr<VectorIndex> IndexStore::search_vectors(bool exact, VectorsOrigin* origin) {
  VectorsOrigin unused;
  if (!origin) origin = &unused;
  *origin = VectorsOrigin{};
  const int dim = embedding_dim();
  if (dim <= 0) return catalog_vectors();
  // One committed state for the generation, the log's horizon and the delta.
  const bool reading = catalog_->begin_read();
  struct EndRead {
    Catalog& c;
    bool on;
    ~EndRead() {
      if (on) try {
          c.end_read();
        } catch (...) {
        }
    }
  } end_read{*catalog_, reading};
  const int64_t generation = catalog_->generation();
  const std::optional<int64_t> since = catalog_->changes_since();
  for (const int64_t g : snapshot_generations()) {
    if (g > generation) continue;  // written after this read began: its changes are not in this view
    if (g != generation && (!since || g < *since)) break;  // the log does not reach back that far
    std::string problem;
    auto snapshot = open_snapshot_of(g, &problem);
    if (!snapshot) {
      if (!problem.empty()) {
        warn(problem + "; using the catalog's vectors instead (the next 'cnclip index' rewrites it)");
        origin->problem = std::move(problem);
      }
      break;
    }
    if (exact && !snapshot->exact()) break;
    origin->snapshot_generation = g;
    if (g == generation) return snapshot;
    std::vector<int64_t> changed = catalog_->changed_since(g);
    origin->changed_since = static_cast<int64_t>(changed.size());
    std::vector<int64_t> ids;
    std::vector<float> vectors;
    catalog_->for_each_embedding_of(changed, dim, [&](int64_t id, const float* v) {
      ids.push_back(id);
      vectors.insert(vectors.end(), v, v + dim);
    });
    return VectorIndex::with_delta(std::move(snapshot), std::move(changed),
                                   VectorIndex::from_vectors(dim, std::move(ids), std::move(vectors)));
  }
  return catalog_vectors();
}

bool IndexStore::ensure_snapshot() {
  const int dim = embedding_dim();
  if (dim <= 0) return false;
  const std::string want = canonical_vector_type(wanted_vector_type(), dim);
  if (auto current = open_snapshot(nullptr)) {
    if (current->type() == want) return false;
  }
  if (want != "flat") {
    // An approximate snapshot is kept with its delta until the delta drifts past the limit.
    const int64_t generation = catalog_->generation();
    const auto since = catalog_->changes_since();
    for (const int64_t g : snapshot_generations()) {
      if (g >= generation) continue;
      if (!since || g < *since) break;
      auto old = open_snapshot_of(g, nullptr);
      if (!old || old->type() != want) break;
      const auto changed = static_cast<int64_t>(catalog_->changed_since(g).size());
      // In files, as the log counts them (a snapshot's size counts video frames too).
      if (changed <= delta_kept_up_to(catalog_->count())) return false;
      break;
    }
  }
  write_snapshot();
  return true;
}

void IndexStore::write_snapshot() {
  const int dim = embedding_dim();
  const int64_t generation = catalog_->generation();
  const std::string path = snapshot_path(generation);
  // The snapshot is as private as the catalog it comes from, and its owner's where this process may
  // give it away (root writing a user's index), from its creation: a 0644 snapshot beside a 0600
  // catalog showed the photos' vectors to anyone. Best effort: its writer owns it otherwise.
  const std::string catalog_path = dir_ + "/" + kCatalogFile;
  snapshot_report_.clear();
  snapshot_fallback_.clear();
  const std::string keep = path.substr(path.find_last_of('/') + 1);
  if (dim <= 0) delete_snapshot_files(dir_, keep, false);
  if (dim > 0) {
    try {
      const std::string type = wanted_vector_type();
      const int64_t n = catalog_->vector_count();  // files and video frames
      // Older snapshots stay while the new one is built, where the disk has room for it beside them:
      // searches meanwhile use the newest with its delta (the change log is pruned only once the new
      // one is written), where deleting them first made each search read every embedding from the
      // catalog for the whole build (minutes for an IVF at 10M; seconds a query at 1M). They stay too
      // when the build fails or is interrupted. On a disk without that room they are deleted first,
      // so that their space is free for the new one (a reader meanwhile reads the catalog; one that has
      // the old file open or mapped keeps it until it closes). Temporary files of interrupted writes
      // go first either way.
      const std::string canonical = canonical_vector_type(type, dim);
      delete_snapshot_files(dir_, keep, has_room(dir_, snapshot_bytes_at_most(canonical, dim, n)));
      const bool is_auto = vector_spec().text == "auto";
      bool flat = canonical == "flat";
      if (!flat) {
        const SnapshotBuild built = build_snapshot(
            path, type, dim, n,
            [&](const std::function<void(int64_t, const float*)>& fn) { catalog_->for_each_embedding(dim, fn); },
            &snapshot_report_, is_auto ? VectorSpec::kAutoMaxProbeShare : 1.0, catalog_path);
        if (built == SnapshotBuild::kWritten) {
          catalog_->set_meta(kFlatUntilMeta, "0");
          catalog_->set_meta(kFlatWhyMeta, "");
        } else {
          // Flat instead, and the type is tried again once the index holds as many vectors as FAISS
          // needs to train it (its lists, a PQ's centroids), else once it doubles (auto's IVF did not
          // pay off, or FAISS failed): a spec that cannot be built fails no index run, nor retrains at
          // each.
          flat = true;
          const int64_t needed = built == SnapshotBuild::kTooFewVectors ? vectors_needed_to_train(type, dim) : 0;
          const int64_t until = built == SnapshotBuild::kUnusable ? std::numeric_limits<int64_t>::max()
                                : needed > n                      ? needed
                                                                  : std::max<int64_t>(2 * n, 2);
          catalog_->set_meta(kFlatUntilMeta, std::to_string(until));
          snapshot_fallback_ =
              std::string(is_auto ? "auto: " : "") + snapshot_report_ +
              (built == SnapshotBuild::kUnusable ? "; flat until another --vectors is given"
                                                 : "; tried again when the index holds " + std::to_string(until) +
                                                       (until == 1 ? " vector" : " vectors"));
          snapshot_report_ = snapshot_fallback_;
          catalog_->set_meta(kFlatWhyMeta, snapshot_fallback_);
        }
      }
      if (flat) {
        VectorFileWriter writer(path, dim, n, catalog_path);
        catalog_->for_each_embedding(dim, [&](int64_t id, const float* v) { writer.add(id, v); });
        writer.commit();
      }
    } catch (const Exception& e) {
      if (e.code() == ErrorCode::kCorrupt || e.code() == ErrorCode::kInterrupted) throw;
      // The snapshot is derived: nothing committed depends on it.
      throw Exception(e.code(), std::string(e.what()) +
                                    "; every committed entry is kept in the catalog (searches read it until the "
                                    "next 'cnclip index' writes the vector snapshot)");
    }
    delete_snapshot_files(dir_, keep, false);
    // Readers of this snapshot need the log only after it.
    catalog_->prune_changes(generation);
  }
}

int64_t IndexStore::disk_bytes() {
  int64_t total = 0;
  std::error_code listing;
  for (const auto& e : std::filesystem::directory_iterator(dir_, listing)) {
    std::error_code ec;  // a file removed meanwhile (a writer's -shm) is skipped
    if (!e.is_regular_file(ec)) continue;
    const auto size = e.file_size(ec);
    if (!ec) total += static_cast<int64_t>(size);
  }
  if (listing) {  // not listable (mode 711): the files cnclip knows by name
    const std::string catalog = dir_ + "/" + kCatalogFile;
    std::vector<std::string> known{catalog, catalog + "-wal", catalog + "-shm", dir_ + "/lock"};
    for (const int64_t g : snapshot_generations()) known.push_back(snapshot_path(g));
    total = 0;
    for (const auto& path : known) {
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) total += st.st_size;
    }
  }
  return total;
}

}  // namespace cnclip
