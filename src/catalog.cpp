#include "cnclip/catalog.h"

#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace cnclip {
namespace {

// 1: files, roots(path), failures, meta. 2: roots carry their kind (folder or file) and walk options.
// 3: files carry their capture time (taken_at, unix seconds; taken_source "exif", "exif-local" or
//    "mtime"; taken_offset, minutes east of UTC, for "exif") and upright width and height; NULL until
//    filled in (the next index run does it without the model).
// 4: frames: the frames of a video after its first (whose embedding is the video's own row), each
//    with its time; deleted with their video (ON DELETE CASCADE).
constexpr int kSchemaVersion = 4;

// Owns one prepared statement.
class Statement {
 public:
  Statement(sqlite3_stmt* s) : s_(s) {}  // NOLINT
  ~Statement() { sqlite3_finalize(s_); }
  // Finalized once, by its one owner.
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  sqlite3_stmt* get() const { return s_; }
  Statement& bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Statement& bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& bind_blob(int i, const void* p, size_t n) {
    sqlite3_bind_blob(s_, i, p, static_cast<int>(n), SQLITE_STATIC);
    return *this;
  }
  int64_t i64(int col) const { return sqlite3_column_int64(s_, col); }
  std::string text(int col) const {
    auto p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, col))) : std::string();
  }

 private:
  sqlite3_stmt* s_;
};

// "dir/" <= path < "dir0" selects exactly the paths below dir ('0' follows '/').
std::pair<std::string, std::string> prefix_range(const std::string& dir) {
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (base == "/") return {"/", "0"};
  return {base + "/", base + "0"};
}

FileRecord read_record(const Statement& s) {
  FileRecord r;
  r.id = s.i64(0);
  r.path = s.text(1);
  r.size = s.i64(2);
  r.mtime_ns = s.i64(3);
  r.content_hash = s.text(4);
  r.indexed_at = s.i64(5);
  r.meta.source = time_source_from_name(s.text(7));
  if (r.meta.source != TimeSource::kNone) {
    r.meta.taken_at = s.i64(6);
    if (sqlite3_column_type(s.get(), 8) != SQLITE_NULL) r.meta.offset_minutes = static_cast<int>(s.i64(8));
  }
  r.meta.width = static_cast<int>(s.i64(9));
  r.meta.height = static_cast<int>(s.i64(10));
  return r;
}

// Binds a PhotoMeta to parameters first..first+4 (taken_at, taken_source, taken_offset, width,
// height); an unknown time is NULL.
void bind_meta(Statement& s, int first, const PhotoMeta& m) {
  if (m.source == TimeSource::kNone) {
    sqlite3_bind_null(s.get(), first);
    sqlite3_bind_null(s.get(), first + 1);
  } else {
    s.bind(first, m.taken_at).bind(first + 1, std::string(time_source_name(m.source)));
  }
  if (m.offset_minutes && m.source != TimeSource::kNone) s.bind(first + 2, int64_t{*m.offset_minutes});
  else sqlite3_bind_null(s.get(), first + 2);
  if (m.width > 0 && m.height > 0) s.bind(first + 3, int64_t{m.width}).bind(first + 4, int64_t{m.height});
  else sqlite3_bind_null(s.get(), first + 3), sqlite3_bind_null(s.get(), first + 4);
}

}  // namespace

std::string catalog_damage_message(const std::string& path, const std::string& detail) {
  return path + ": the catalog is damaged (" + detail +
         "); run 'cnclip repair' to keep every readable entry (the next 'cnclip index' re-encodes the rest)";
}

namespace {

// Whether the file system holding `path` lacks the room SQLite needs for a log and its 32 KiB -shm
// (under 64 KiB or no inode left for unprivileged users), asked after a write or a create failed:
// SQLite reports a log or -shm it could not create as "unable to open database file", and the errno
// it keeps is often that of its read-only retry (ENOENT), not the ENOSPC that caused it. A read-only
// file system (squashfs, an ISO image: they report no free space) and one that reports no size are
// never "full".
bool file_system_full(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct statvfs v {};
  if (::statvfs(dir.c_str(), &v) != 0 || (v.f_flag & ST_RDONLY) || v.f_blocks == 0) return false;
  const uint64_t available = static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
  return available < (64u << 10) || (v.f_files > 0 && v.f_favail == 0);
}

// Whether SQLite's result `code` is a file it could not create, read or write (its errno then says why).
bool file_error(int code) { return (code & 0xff) == SQLITE_IOERR || (code & 0xff) == SQLITE_CANTOPEN; }

// Whether the last error on `db` (at `path`) is a full disk: said so, or a file SQLite could not
// create or write where no room is left.
bool disk_full_error(sqlite3* db, const std::string& path) {
  const int code = sqlite3_errcode(db), sys = sqlite3_system_errno(db);
  return code == SQLITE_FULL || sys == ENOSPC || sys == EDQUOT || (file_error(code) && file_system_full(path));
}

// Whether the last error on `db` (at `path`) is this process's file size limit: EFBIG, or (as for a
// full disk, SQLite may keep another errno: a write-ahead log that could not grow was reported as a
// bare "disk I/O error") a file error where the catalog or its log is within 128 KiB of the limit, or
// the limit is too small for a -shm (32 KiB).
bool file_size_limit_error(sqlite3* db, const std::string& path) {
  struct rlimit r {};
  if (::getrlimit(RLIMIT_FSIZE, &r) != 0 || r.rlim_cur == RLIM_INFINITY) return false;
  const int code = sqlite3_errcode(db), sys = sqlite3_system_errno(db);
  if (sys == EFBIG) return true;
  if (!file_error(code)) return false;
  constexpr uint64_t kMargin = 128u << 10;
  if (r.rlim_cur < (64u << 10)) return true;
  for (const std::string& file : {path, path + "-wal"}) {
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) + kMargin >= r.rlim_cur) return true;
  }
  return false;
}

// The one mapping from SQLite's result codes to cnclip's: damage names the recovery command.
Exception sqlite_error(sqlite3* db, const std::string& path, const std::string& what, const std::string& msg) {
  const int code = sqlite3_errcode(db);
  // Damage shows as SQLITE_CORRUPT or SQLITE_NOTADB, or, when the pages holding the schema are lost
  // (a zeroed header, a write-ahead log whose later frames were dropped after a bad checksum), as a
  // plain SQLITE_ERROR about tables, columns or a schema cnclip always creates.
  auto starts = [&](const char* prefix) { return msg.rfind(prefix, 0) == 0; };
  if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB ||
      ((code & 0xff) == SQLITE_ERROR && (starts("no such table") || starts("no such column") ||
                                         msg.find("malformed database schema") != std::string::npos))) {
    return Exception(ErrorCode::kCorrupt, catalog_damage_message(path, msg));
  }
  ErrorCode ec = ErrorCode::kIoError;
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) ec = ErrorCode::kBusy;
  if (code == SQLITE_READONLY || code == SQLITE_PERM || code == SQLITE_CANTOPEN) ec = ErrorCode::kPermissionDenied;
  if (disk_full_error(db, path)) {
    return Exception(ErrorCode::kIoError,
                     path + ": the disk is full (" + (what.empty() ? "" : what + ": ") + msg +
                         "); what was committed before is kept: free some space and run the command again");
  }
  if (auto limited = file_size_limit_failure(db, path, (what.empty() ? "" : what + ": ") + msg); !limited.empty()) {
    return Exception(ErrorCode::kIoError, limited);
  }
  std::string detail = msg;
  const int sys = sqlite3_system_errno(db);
  if (file_error(code) && sys != 0) {
    detail += " (" + std::string(std::strerror(sys)) + ")";
  }
  return Exception(ec, path + ": " + (what.empty() ? "" : what + ": ") + detail);
}

}  // namespace

std::string file_size_limit_failure(sqlite3* db, const std::string& path, const std::string& detail) {
  return file_size_limit_error(db, path) ? file_size_limit_message(path, detail) : std::string();
}

Catalog::Catalog(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
Catalog::~Catalog() { sqlite3_close_v2(db_); }

void Catalog::fail(const std::string& what) { throw sqlite_error(db_, path_, what, sqlite3_errmsg(db_)); }

sqlite3_stmt* Catalog::prepare(const char* sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK) fail("cannot prepare query");
  return s;
}

void Catalog::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    throw sqlite_error(db_, path_, "", msg);
  }
}

std::unique_ptr<Catalog> Catalog::open(const std::string& path, bool create) {
  struct stat st {};
  if (!create && ::stat(path.c_str(), &st) != 0) {
    throw Exception(ErrorCode::kNotFound, path + ": no catalog here");
  }
  sqlite3* db = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    Exception e = db ? sqlite_error(db, path, "cannot open catalog", msg)
                     : Exception(ErrorCode::kIoError, path + ": cannot open catalog: " + msg);
    sqlite3_close_v2(db);
    throw e;
  }
  std::unique_ptr<Catalog> c(new Catalog(db, path));
  sqlite3_busy_timeout(db, 10000);
  // WAL: readers see the last commit while an index run writes. synchronous=NORMAL: a commit
  // survives the process being killed at any moment (what cnclip guarantees) without an fsync per
  // batch; after a power cut the last batches may be rolled back, never half applied.
  // Pages of 32 KiB for a new catalog (an existing one keeps its own; SQLite fixes the size when the
  // file is created, here by journal_mode=WAL): a row with a ViT-B-16 embedding (2 KiB) and its fields
  // is ~2.3 KB, so a page of 4 KiB, SQLite's default, holds one row and is nearly half empty. Measured
  // on 100,000 such rows (python3 sqlite3, this machine): 4 KiB pages 4217 bytes a row, 8 KiB 2845,
  // 16 KiB 2453, 32 KiB 2296 (64 KiB no smaller); inserting 2.8x and a warm scan of every embedding
  // 3x faster than with 4 KiB, a lookup by id the same (7-8 us). 10M generated vectors filled 42 GB
  // with 4 KiB pages. A 1024-d embedding (RN50, ViT-H-14) no longer spills onto an overflow page.
  c->exec(("PRAGMA page_size=" + std::to_string(kCatalogPageBytes) + ";").c_str());
  c->exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;");
  // The write-ahead log in bytes as with SQLite's defaults for 4 KiB pages (1000 pages, 4 MiB) whatever
  // the page size: with 32 KiB pages, 1000 pages let it reach 32 MiB (an index run of 300 small photos
  // peaked at 18.6 MB of log for a 0.6 MB catalog, and a nearly full disk stopped it at the same file
  // every run); a catalog of 4 KiB pages keeps checkpointing every 1000. Cut back to 4 MiB after a
  // checkpoint.
  int64_t page = 4096;
  {
    Statement s = c->prepare("PRAGMA page_size");
    if (sqlite3_step(s.get()) == SQLITE_ROW) page = std::max<int64_t>(512, s.i64(0));
  }
  const std::string wal =
      "PRAGMA wal_autocheckpoint=" + std::to_string(std::max<int64_t>(1, (int64_t{4} << 20) / page)) +
      "; PRAGMA journal_size_limit=4194304;";
  c->exec(wal.c_str());
  c->exec(
      "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS files("
      "  id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL,"
      "  mtime_ns INTEGER NOT NULL, content_hash TEXT NOT NULL, indexed_at INTEGER NOT NULL,"
      "  embedding BLOB NOT NULL);"
      "CREATE INDEX IF NOT EXISTS files_by_hash ON files(content_hash);"
      "CREATE TABLE IF NOT EXISTS roots(path TEXT PRIMARY KEY);"
      "CREATE TABLE IF NOT EXISTS failures(path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
      "  mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);");
  c->upgrade_schema();
  c->ensure_change_log();
  const auto version = c->meta("schema_version");  // not upgraded when the file is read-only
  c->has_meta_ = version && std::atoi(version->c_str()) >= 3;
  c->has_frames_ = version && std::atoi(version->c_str()) >= 4;
  return c;
}

void Catalog::upgrade_schema() {
  auto version = [this] {
    auto v = meta("schema_version");
    return v ? std::stoi(*v) : 0;  // 0: just created, in the shape of version 1
  };
  if (version() == kSchemaVersion) return;
  if (version() > kSchemaVersion) {
    throw Exception(ErrorCode::kMismatch, path_ + ": catalog schema version " + std::to_string(version()) +
                                              " is newer than this cnclip supports (" + std::to_string(kSchemaVersion) +
                                              ")");
  }
  if (sqlite3_db_readonly(db_, "main") == 1) return;  // readers cope with schema 1 (see root_records)
  // Upgraded in place, in one transaction; another process may be doing the same, so the version is
  // read again once the write lock is held.
  begin();
  try {
    const int from = version();
    if (from < 2) {
      exec(
          "ALTER TABLE roots ADD COLUMN kind TEXT NOT NULL DEFAULT 'folder';"
          "ALTER TABLE roots ADD COLUMN options TEXT NOT NULL DEFAULT '';");
    }
    if (from < 3) {
      // Only new columns (NULL in existing rows): no row is rewritten, so this is instant at any size.
      exec(
          "ALTER TABLE files ADD COLUMN taken_at INTEGER;"
          "ALTER TABLE files ADD COLUMN taken_source TEXT;"
          "ALTER TABLE files ADD COLUMN taken_offset INTEGER;"
          "ALTER TABLE files ADD COLUMN width INTEGER;"
          "ALTER TABLE files ADD COLUMN height INTEGER;"
          "CREATE INDEX files_by_time ON files(taken_at, mtime_ns);");
    }
    if (from < 4) {
      // A new table only: existing rows are untouched (photos have no frames).
      exec(
          "CREATE TABLE IF NOT EXISTS frames(id INTEGER PRIMARY KEY,"
          "  file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,"
          "  time_ms INTEGER NOT NULL, embedding BLOB NOT NULL);"
          "CREATE INDEX IF NOT EXISTS frames_by_file ON frames(file_id, time_ms);");
    }
    if (from < kSchemaVersion) set_meta("schema_version", std::to_string(kSchemaVersion));
    exec("COMMIT");
  } catch (...) {
    rollback_after_error();
    throw;
  }
}

bool embedding_is_valid(const float* v, int dim) {
  double norm = 0;
  for (int d = 0; d < dim; ++d) {
    if (!std::isfinite(v[d])) return false;
    norm += double(v[d]) * v[d];
  }
  return std::fabs(norm - 1.0) < 2e-3;
}

std::unique_ptr<Catalog> Catalog::open_read_only(const std::string& path) {
  const FilesSeen seen_at_open = files_seen(path);
  if (seen_at_open.size < 0) throw Exception(ErrorCode::kNotFound, path + ": no catalog here");
  // A catalog this user may not read (another user's, mode 600): said as such; SQLite says only
  // "unable to open database file".
  if (::access(path.c_str(), R_OK) != 0 && (errno == EACCES || errno == EPERM)) {
    throw Exception(ErrorCode::kPermissionDenied, path + ": cannot read the catalog: " + std::strerror(errno));
  }
  auto try_open = [&](const std::string& name, int extra) -> std::unique_ptr<Catalog> {
    sqlite3* db = nullptr;
    // READWRITE falls back to read-only by itself when the file cannot be written; where it can,
    // SQLite may tidy its -wal/-shm files on close as for any connection. query_only keeps this
    // connection from changing the catalog.
    if (sqlite3_open_v2(name.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | extra, nullptr) != SQLITE_OK) {
      Exception e = db ? sqlite_error(db, path, "cannot open catalog", sqlite3_errmsg(db))
                       : Exception(ErrorCode::kIoError, path + ": cannot open catalog: out of memory");
      sqlite3_close_v2(db);
      throw e;
    }
    std::unique_ptr<Catalog> c(new Catalog(db, path));
    c->read_only_ = true;
    sqlite3_busy_timeout(db, 10000);
    c->exec("PRAGMA query_only=1");
    return c;
  };
  auto c = try_open(path, 0);
  c->seen_ = seen_at_open;
  std::optional<std::string> version;
  try {
    version = c->meta("schema_version");
  } catch (const Exception& e) {
    const bool disk_full = disk_full_error(c->db_, path), size_limited = file_size_limit_error(c->db_, path);
    if (e.code() != ErrorCode::kPermissionDenied && !disk_full && !size_limited) throw;
    // A WAL database needs its -shm file; SQLite opens an existing one read-only, but cannot create
    // one where nothing may be written (a read-only mount, another user's folder) or where the disk
    // is full (the 32 KiB it maps cannot be allocated). Without a write-ahead log there is nothing to
    // coordinate: no writer can be at work either (a writer would hold the -shm, or need the same
    // space for its log), and the file is read as immutable. A log that holds commits cannot be read
    // that way (SQLite would ignore it).
    // The files as they are now (the first attempt may have left a -shm or -wal of its own): what
    // the immutable connection will have read, for refresh().
    const FilesSeen seen = files_seen(path);
    if (seen.wal_size > 0) {
      throw Exception(
          e.code(), path + ": cannot read the catalog: its write-ahead log " + path + "-wal holds commits that need " +
                        path + "-shm, which cannot be created here (" +
                        (disk_full      ? "the disk is full): free some space"
                         : size_limited ? "the file size limit, " + file_size_limit() + "): raise it"
                                        : "read-only): run 'cnclip info' once where the index is writable") +
                        " and run the command again");
    }
    std::string uri = "file:";
    for (unsigned char ch : path) {
      if (ch == '%' || ch == '?' || ch == '#' || ch < 0x20) {
        char buf[4];
        std::snprintf(buf, sizeof(buf), "%%%02X", ch);
        uri += buf;
      } else {
        uri += static_cast<char>(ch);
      }
    }
    c = try_open(uri + "?immutable=1", SQLITE_OPEN_URI);
    c->immutable_ = true;
    c->seen_ = seen;
    version = c->meta("schema_version");
  }
  // Readers cope with older schemas (root_records reads schema 1), so an old index on a read-only
  // mount stays searchable; a writer's open upgrades it. Only a newer schema is refused.
  if (version && std::atoi(version->c_str()) > kSchemaVersion) {
    throw Exception(ErrorCode::kMismatch, path + ": catalog schema version " + *version +
                                              " is newer than this cnclip supports (" + std::to_string(kSchemaVersion) +
                                              ")");
  }
  // An older schema read as it is (no migration writes here): capture times default to the mtime.
  c->has_meta_ = version && std::atoi(version->c_str()) >= 3;
  c->has_frames_ = version && std::atoi(version->c_str()) >= 4;
  return c;
}

Catalog::FilesSeen Catalog::files_seen(const std::string& path) {
  FilesSeen f;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    f.dev = st.st_dev;
    f.ino = st.st_ino;
    f.size = st.st_size;
    f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  }
  if (::stat((path + "-wal").c_str(), &st) == 0) f.wal_size = st.st_size;
  if (::stat((path + "-shm").c_str(), &st) == 0) f.shm_size = st.st_size;
  return f;
}

bool Catalog::changed_under_immutable_read() { return immutable_ && !(files_seen(path_) == seen_); }

void Catalog::refresh() {
  if (!read_only_) return;
  const FilesSeen now_seen = files_seen(path_);
  // A normal connection follows commits by itself; only a catalog put in place of the one it has
  // open (`cnclip repair`: a new file renamed over it) must be opened again.
  if (immutable_ ? now_seen == seen_ : (now_seen.dev == seen_.dev && now_seen.ino == seen_.ino)) return;
  std::unique_ptr<Catalog> now = open_read_only(path_);
  std::swap(db_, now->db_);  // `now` closes the old connection
  has_meta_ = now->has_meta_;
  has_frames_ = now->has_frames_;
  immutable_ = now->immutable_;
  seen_ = now->seen_;
}

std::vector<std::string> Catalog::integrity_problems(bool full) {
  std::vector<std::string> out;
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db_, full ? "PRAGMA integrity_check(20)" : "PRAGMA quick_check(20)", -1, &raw, nullptr) !=
      SQLITE_OK) {
    out.push_back(sqlite3_errmsg(db_));
    sqlite3_finalize(raw);
    return out;
  }
  Statement s(raw);
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    // A row can hold several lines ("*** in database main ***\nPage 12: ..."): one problem per line.
    std::stringstream lines(s.text(0));
    std::string line;
    while (std::getline(lines, line)) {
      if (line != "ok" && !line.empty() && line.rfind("*** ", 0) != 0) out.push_back(line);
    }
  }
  if (rc != SQLITE_DONE) {
    const int code = sqlite3_errcode(db_);
    if (code != SQLITE_CORRUPT && code != SQLITE_NOTADB) fail("cannot check the catalog");
    out.push_back(sqlite3_errmsg(db_));
  }
  return out;
}

void Catalog::check(bool full) {
  const auto problems = integrity_problems(full);
  if (problems.empty()) return;
  std::string detail = problems.front();
  if (problems.size() > 1) detail += ", and " + std::to_string(problems.size() - 1) + " more problem(s)";
  throw Exception(ErrorCode::kCorrupt, catalog_damage_message(path_, detail));
}

std::optional<std::string> Catalog::meta(const std::string& key) {
  Statement s = prepare("SELECT value FROM meta WHERE key = ?");
  s.bind(1, key);
  const int rc = sqlite3_step(s.get());
  if (rc == SQLITE_ROW) return s.text(0);
  if (rc != SQLITE_DONE) fail("cannot read metadata");
  return std::nullopt;
}

void Catalog::set_meta(const std::string& key, const std::string& value) {
  Statement s =
      prepare("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value");
  s.bind(1, key).bind(2, value);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot write metadata");
}

int64_t Catalog::generation() {
  auto g = meta("generation");
  return g ? std::stoll(*g) : 0;
}

void Catalog::begin() { exec("BEGIN IMMEDIATE"); }

void Catalog::commit() {
  set_meta("generation", std::to_string(generation() + 1));
  set_meta("updated_at", std::to_string(static_cast<int64_t>(::time(nullptr))));
  exec("COMMIT");
}

void Catalog::rollback() {
  // SQLite may have rolled back itself (a full disk, SQLITE_FULL): nothing left to do then, and a
  // second ROLLBACK's "no transaction is active" would hide the error being handled.
  if (sqlite3_get_autocommit(db_)) return;
  exec("ROLLBACK");
}

void Catalog::rollback_after_error() noexcept {
  try {
    rollback();
  } catch (...) {  // the error being handled is the one to report
  }
}

int64_t Catalog::count() {
  Statement s = prepare("SELECT COUNT(*) FROM files");
  if (sqlite3_step(s.get()) != SQLITE_ROW) fail("cannot count files");
  return s.i64(0);
}

int64_t Catalog::page_bytes() {
  Statement s = prepare("PRAGMA page_size");
  if (sqlite3_step(s.get()) != SQLITE_ROW) fail("cannot read the page size");
  return s.i64(0);
}

std::vector<FileRecord> Catalog::files_under(const std::string& dir) {
  std::vector<FileRecord> out;
  std::string sql = "SELECT " + record_columns() + " FROM files";
  if (!dir.empty()) sql += " WHERE path >= ? AND path < ?";
  sql += " ORDER BY path";
  Statement s = prepare(sql.c_str());
  if (!dir.empty()) {
    auto [lo, hi] = prefix_range(dir);
    s.bind(1, lo).bind(2, hi);
  }
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(read_record(s));
  if (rc != SQLITE_DONE) fail("cannot list files");
  return out;
}

std::vector<FileRecord> Catalog::files_at_or_under(const std::string& path) {
  std::vector<FileRecord> out = files_under(path);
  if (auto self = find(path)) out.insert(out.begin(), std::move(*self));  // sorts before its "path/..."
  return out;
}

std::optional<FileRecord> Catalog::find(const std::string& path) {
  Statement s = prepare(("SELECT " + record_columns() + " FROM files WHERE path = ?").c_str());
  s.bind(1, path);
  if (sqlite3_step(s.get()) == SQLITE_ROW) return read_record(s);
  return std::nullopt;
}

std::optional<FileRecord> Catalog::first_with_hash(const std::string& hash,
                                                   const std::function<bool(const FileRecord&)>& accept) {
  if (hash.empty()) return std::nullopt;
  Statement s = prepare(("SELECT " + record_columns() + " FROM files WHERE content_hash = ? ORDER BY id").c_str());
  s.bind(1, hash);
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    FileRecord r = read_record(s);
    if (accept(r)) return r;
  }
  if (rc != SQLITE_DONE) fail("cannot list files");
  return std::nullopt;
}

std::vector<FileRecord> Catalog::find_by_ids(const std::vector<int64_t>& ids) {
  std::vector<FileRecord> out;
  Statement s = prepare(("SELECT " + record_columns() + " FROM files WHERE id = ?").c_str());
  for (int64_t id : ids) {
    sqlite3_reset(s.get());
    s.bind(1, id);
    const int rc = sqlite3_step(s.get());
    if (rc == SQLITE_ROW) out.push_back(read_record(s));
    else if (rc != SQLITE_DONE) fail("cannot read file id " + std::to_string(id));  // damage, never a shorter list
  }
  return out;
}

std::vector<float> Catalog::embedding(int64_t id) {
  Statement s = prepare("SELECT embedding FROM files WHERE id = ?");
  s.bind(1, id);
  const int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return {};
  if (rc != SQLITE_ROW) fail("cannot read the embedding of file id " + std::to_string(id));
  const auto* p = static_cast<const float*>(sqlite3_column_blob(s.get(), 0));
  const int bytes = sqlite3_column_bytes(s.get(), 0);
  return std::vector<float>(p, p + bytes / static_cast<int>(sizeof(float)));
}

int64_t Catalog::insert(const FileRecord& r, const float* embedding, int dim) {
  Statement s = prepare(
      "INSERT INTO files(path, size, mtime_ns, content_hash, indexed_at, embedding, taken_at, taken_source, "
      "taken_offset, width, height) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, r.path).bind(2, r.size).bind(3, r.mtime_ns).bind(4, r.content_hash).bind(5, r.indexed_at);
  s.bind_blob(6, embedding, static_cast<size_t>(dim) * sizeof(float));
  bind_meta(s, 7, r.meta);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot add " + r.path);
  return sqlite3_last_insert_rowid(db_);
}

void Catalog::update(const FileRecord& r, const float* embedding, int dim) {
  Statement s =
      prepare(embedding ? "UPDATE files SET path = ?, size = ?, mtime_ns = ?, content_hash = ?, indexed_at = ?, "
                          "taken_at = ?, taken_source = ?, taken_offset = ?, width = ?, height = ?, "
                          "embedding = ? WHERE id = ?"
                        : "UPDATE files SET path = ?, size = ?, mtime_ns = ?, content_hash = ?, indexed_at = ?, "
                          "taken_at = ?, taken_source = ?, taken_offset = ?, width = ?, height = ? "
                          "WHERE id = ?");
  s.bind(1, r.path).bind(2, r.size).bind(3, r.mtime_ns).bind(4, r.content_hash).bind(5, r.indexed_at);
  bind_meta(s, 6, r.meta);
  if (embedding) {
    s.bind_blob(11, embedding, static_cast<size_t>(dim) * sizeof(float));
    s.bind(12, r.id);
  } else {
    s.bind(11, r.id);
  }
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot update " + r.path);
}

void Catalog::remove(int64_t id) {
  Statement s = prepare("DELETE FROM files WHERE id = ?");
  s.bind(1, id);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot remove file");
}

int64_t Catalog::delete_path_and_below(const char* table, const std::string& dir) {
  auto [lo, hi] = prefix_range(dir);
  const std::string sql = std::string("DELETE FROM ") + table + " WHERE path = ? OR (path >= ? AND path < ?)";
  Statement s = prepare(sql.c_str());
  s.bind(1, dir).bind(2, lo).bind(3, hi);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot remove " + dir + " from " + table);
  return sqlite3_changes(db_);
}

int64_t Catalog::remove_under(const std::string& dir) { return delete_path_and_below("files", dir); }

void Catalog::remove_all() { exec("DELETE FROM files; DELETE FROM roots; DELETE FROM failures;"); }

std::optional<FailureRecord> Catalog::failure(const std::string& path) {
  Statement s = prepare("SELECT size, mtime_ns, reason FROM failures WHERE path = ?");
  s.bind(1, path);
  if (sqlite3_step(s.get()) != SQLITE_ROW) return std::nullopt;
  return FailureRecord{path, s.i64(0), s.i64(1), s.text(2)};
}

void Catalog::record_failure(const FileRecord& file, const std::string& reason) {
  Statement s = prepare("INSERT OR REPLACE INTO failures(path, size, mtime_ns, reason) VALUES(?, ?, ?, ?)");
  s.bind(1, file.path).bind(2, file.size).bind(3, file.mtime_ns).bind(4, reason);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot record failure of " + file.path);
}

void Catalog::forget_failure(const std::string& path) {
  Statement s = prepare("DELETE FROM failures WHERE path = ?");
  s.bind(1, path);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot update failures");
}

int64_t Catalog::forget_failures_under(const std::string& dir) { return delete_path_and_below("failures", dir); }

std::string Catalog::record_columns() const {
  return has_meta_ ? "id, path, size, mtime_ns, content_hash, indexed_at, taken_at, taken_source, taken_offset, "
                     "width, height"
                   : "id, path, size, mtime_ns, content_hash, indexed_at, NULL, NULL, NULL, NULL, NULL";
}

std::vector<FileRecord> Catalog::files_without_meta() {
  std::vector<FileRecord> out;
  if (!has_meta_) return out;
  // Through files_by_time (taken_at is NULL exactly when the time is not known): every index run
  // asks, and a scan of the table would read every embedding.
  std::vector<int64_t> ids;
  {
    Statement s = prepare("SELECT id FROM files INDEXED BY files_by_time WHERE taken_at IS NULL");
    int rc;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) ids.push_back(s.i64(0));
    if (rc != SQLITE_DONE) fail("cannot list files");
  }
  out = find_by_ids(ids);
  std::sort(out.begin(), out.end(), [](const FileRecord& a, const FileRecord& b) { return a.path < b.path; });
  return out;
}

void Catalog::set_photo_meta(int64_t id, const PhotoMeta& meta) {
  Statement s =
      prepare("UPDATE files SET taken_at = ?, taken_source = ?, taken_offset = ?, width = ?, height = ? WHERE id = ?");
  bind_meta(s, 1, meta);
  s.bind(6, id);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot record the capture time of file id " + std::to_string(id));
}

std::unordered_map<int64_t, int64_t> Catalog::capture_times(std::optional<int64_t> after,
                                                            std::optional<int64_t> before) {
  // The mtime in whole seconds, rounded down (also before 1970).
  const std::string t =
      has_meta_ ? "COALESCE(taken_at, (mtime_ns - ((mtime_ns % 1000000000) + 1000000000) % 1000000000) / 1000000000)"
                : "((mtime_ns - ((mtime_ns % 1000000000) + 1000000000) % 1000000000) / 1000000000)";
  std::string sql = "SELECT id, " + t + " AS t FROM files";
  if (after || before) sql += " WHERE 1";
  if (after) sql += " AND t >= ?1";
  if (before) sql += " AND t < ?2";
  Statement s = prepare(sql.c_str());
  if (after) s.bind(1, *after);
  if (before) s.bind(2, *before);
  std::unordered_map<int64_t, int64_t> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.emplace(s.i64(0), s.i64(1));
  if (rc != SQLITE_DONE) fail("cannot read capture times");
  return out;
}

bool Catalog::has_table(const char* name) {
  Statement s = prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
  s.bind(1, std::string(name));
  const int rc = sqlite3_step(s.get());
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail("cannot read the schema");
  return rc == SQLITE_ROW;
}

void Catalog::ensure_change_log() {
  if (sqlite3_db_readonly(db_, "main") == 1) return;
  if (has_table("changes")) {
    ensure_frame_change_triggers();
    return;
  }
  // The generation a change commits as is the stored one plus one: Catalog::commit() bumps it last.
  const std::string next = "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0) + 1";
  const std::string upsert = " ON CONFLICT(id) DO UPDATE SET generation = excluded.generation; END;";
  exec("BEGIN IMMEDIATE");
  try {
    if (!has_table("changes")) {  // another writer may have created it meanwhile
      exec(("CREATE TABLE changes(id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);"
            "CREATE INDEX changes_by_generation ON changes(generation);"
            "CREATE TRIGGER changes_on_insert AFTER INSERT ON files BEGIN "
            "INSERT INTO changes(id, generation) VALUES(NEW.id, " +
            next + ")" + upsert +
            "CREATE TRIGGER changes_on_update AFTER UPDATE OF embedding ON files BEGIN "
            "INSERT INTO changes(id, generation) VALUES(NEW.id, " +
            next + ")" + upsert +
            "CREATE TRIGGER changes_on_delete AFTER DELETE ON files BEGIN "
            "INSERT INTO changes(id, generation) VALUES(OLD.id, " +
            next + ")" + upsert +
            "INSERT INTO meta(key, value) VALUES('changes_since', "
            "COALESCE((SELECT value FROM meta WHERE key = 'generation'), '0')) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value;")
               .c_str());
    }
    exec("COMMIT");
  } catch (...) {
    rollback_after_error();
    throw;
  }
  ensure_frame_change_triggers();
}

// Video frames are vectors of their own (kFrameIdBase + row id): their inserts and deletes (set_frames
// replaces a video's frames; deleting a file deletes them) are logged like the files' rows.
void Catalog::ensure_frame_change_triggers() {
  if (!has_table("frames") || !has_table("changes")) return;
  Statement t = prepare("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'changes_on_frame_delete'");
  if (sqlite3_step(t.get()) == SQLITE_ROW) return;
  const std::string next = "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0) + 1";
  const std::string upsert = " ON CONFLICT(id) DO UPDATE SET generation = excluded.generation; END;";
  const std::string base = std::to_string(kFrameIdBase);
  exec(("CREATE TRIGGER IF NOT EXISTS changes_on_frame_insert AFTER INSERT ON frames BEGIN "
        "INSERT INTO changes(id, generation) VALUES(" +
        base + " + NEW.id, " + next + ")" + upsert +
        "CREATE TRIGGER IF NOT EXISTS changes_on_frame_delete AFTER DELETE ON frames BEGIN "
        "INSERT INTO changes(id, generation) VALUES(" +
        base + " + OLD.id, " + next + ")" + upsert)
           .c_str());
}

std::optional<int64_t> Catalog::changes_since() {
  if (!has_table("changes")) return std::nullopt;
  auto v = meta("changes_since");
  if (!v) return std::nullopt;
  return std::stoll(*v);
}

std::vector<int64_t> Catalog::changed_since(int64_t generation) {
  Statement s = prepare("SELECT id FROM changes WHERE generation > ? ORDER BY id");
  s.bind(1, generation);
  std::vector<int64_t> out;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) out.push_back(s.i64(0));
  if (rc != SQLITE_DONE) fail("cannot read the change log");
  return out;
}

void Catalog::prune_changes(int64_t generation) {
  if (!has_table("changes")) return;
  exec("BEGIN IMMEDIATE");
  try {
    Statement s = prepare("DELETE FROM changes WHERE generation <= ?");
    s.bind(1, generation);
    if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot prune the change log");
    if (changes_since().value_or(0) < generation) set_meta("changes_since", std::to_string(generation));
    exec("COMMIT");
  } catch (...) {
    rollback_after_error();
    throw;
  }
}

bool Catalog::begin_read() {
  if (!sqlite3_get_autocommit(db_)) return false;
  exec("BEGIN");
  return true;
}

void Catalog::end_read() { exec("COMMIT"); }

void Catalog::for_each_embedding_of(const std::vector<int64_t>& ids, int dim,
                                    const std::function<void(int64_t, const float*)>& fn) {
  Statement s = prepare("SELECT embedding FROM files WHERE id = ?");
  std::optional<Statement> frame;  // video frames: kFrameIdBase + their row id
  const int expected = dim * static_cast<int>(sizeof(float));
  for (int64_t id : ids) {
    if (id >= kFrameIdBase && !frame) {
      if (!has_table("frames")) continue;
      frame.emplace(prepare("SELECT embedding FROM frames WHERE id = ?"));
    }
    Statement& st = id >= kFrameIdBase ? *frame : s;
    sqlite3_reset(st.get());
    st.bind(1, id >= kFrameIdBase ? id - kFrameIdBase : id);
    const int rc = sqlite3_step(st.get());
    if (rc == SQLITE_DONE) continue;
    if (rc != SQLITE_ROW) fail("cannot read the embedding of file id " + std::to_string(id));
    const auto* v = static_cast<const float*>(sqlite3_column_blob(st.get(), 0));
    const int bytes = sqlite3_column_bytes(st.get(), 0);
    if (bytes != expected || !embedding_is_valid(v, dim)) {
      throw Exception(ErrorCode::kCorrupt,
                      catalog_damage_message(
                          path_, "the embedding of file id " + std::to_string(id) +
                                     (bytes != expected ? " has the wrong size" : " is not a finite unit vector")));
    }
    fn(id, v);
  }
}

void Catalog::for_each_embedding(int dim, const std::function<void(int64_t, const float*)>& fn) {
  Statement s = prepare("SELECT id, embedding FROM files ORDER BY id");
  int rc;
  const int expected = dim * static_cast<int>(sizeof(float));
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
    const auto* v = static_cast<const float*>(sqlite3_column_blob(s.get(), 1));
    if (sqlite3_column_bytes(s.get(), 1) != expected || !embedding_is_valid(v, dim)) {
      throw Exception(ErrorCode::kCorrupt,
                      catalog_damage_message(
                          path_, "the embedding of file id " + std::to_string(s.i64(0)) +
                                     (sqlite3_column_bytes(s.get(), 1) != expected ? " has the wrong size"
                                                                                   : " is not a finite unit vector")));
    }
    fn(s.i64(0), v);
  }
  if (rc != SQLITE_DONE) fail("cannot read embeddings");
  if (!has_frames_) return;
  Statement f = prepare("SELECT id, embedding FROM frames ORDER BY id");
  while ((rc = sqlite3_step(f.get())) == SQLITE_ROW) {
    const auto* v = static_cast<const float*>(sqlite3_column_blob(f.get(), 1));
    if (sqlite3_column_bytes(f.get(), 1) != expected || !embedding_is_valid(v, dim)) {
      throw Exception(ErrorCode::kCorrupt,
                      catalog_damage_message(path_, "the embedding of video frame id " + std::to_string(f.i64(0)) +
                                                        " is not a finite unit vector of the index's dimension"));
    }
    fn(kFrameIdBase + f.i64(0), v);
  }
  if (rc != SQLITE_DONE) fail("cannot read the embeddings of video frames");
}

int64_t Catalog::vector_count() {
  int64_t n = count();
  if (!has_frames_) return n;
  Statement s = prepare("SELECT COUNT(*) FROM frames");
  if (sqlite3_step(s.get()) != SQLITE_ROW) fail("cannot count video frames");
  return n + s.i64(0);
}

void Catalog::set_frames(int64_t file_id, const std::vector<int64_t>& times_ms, const float* embeddings, int dim) {
  {
    Statement d = prepare("DELETE FROM frames WHERE file_id = ?");
    d.bind(1, file_id);
    if (sqlite3_step(d.get()) != SQLITE_DONE) fail("cannot replace the frames of file id " + std::to_string(file_id));
  }
  Statement s = prepare("INSERT INTO frames(file_id, time_ms, embedding) VALUES(?, ?, ?)");
  for (size_t i = 0; i < times_ms.size(); ++i) {
    sqlite3_reset(s.get());
    s.bind(1, file_id).bind(2, times_ms[i]);
    s.bind_blob(3, embeddings + i * static_cast<size_t>(dim), static_cast<size_t>(dim) * sizeof(float));
    if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot add a frame of file id " + std::to_string(file_id));
  }
}

std::vector<FrameRecord> Catalog::frames() {
  std::vector<FrameRecord> out;
  if (!has_frames_) return out;
  Statement s = prepare("SELECT id, file_id, time_ms FROM frames ORDER BY file_id, time_ms");
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW)
    out.push_back(FrameRecord{kFrameIdBase + s.i64(0), s.i64(1), s.i64(2)});
  if (rc != SQLITE_DONE) fail("cannot list video frames");
  return out;
}

std::vector<FrameRecord> Catalog::frames_of(int64_t file_id) {
  std::vector<FrameRecord> out;
  if (!has_frames_) return out;
  Statement s = prepare("SELECT id, file_id, time_ms FROM frames WHERE file_id = ? ORDER BY time_ms");
  s.bind(1, file_id);
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW)
    out.push_back(FrameRecord{kFrameIdBase + s.i64(0), s.i64(1), s.i64(2)});
  if (rc != SQLITE_DONE) fail("cannot list the frames of file id " + std::to_string(file_id));
  return out;
}

std::vector<std::string> Catalog::roots() {
  std::vector<std::string> out;
  for (auto& r : root_records()) out.push_back(std::move(r.path));
  return out;
}

std::vector<RootRecord> Catalog::root_records() {
  std::vector<RootRecord> out;
  sqlite3_stmt* raw = nullptr;
  // A catalog of schema 1 opened read-only (not upgraded) has only the paths: folders, default options.
  const bool v1 =
      sqlite3_prepare_v2(db_, "SELECT path, kind, options FROM roots ORDER BY path", -1, &raw, nullptr) != SQLITE_OK;
  Statement s = v1 ? prepare("SELECT path, 'folder', '' FROM roots ORDER BY path") : raw;
  int rc;
  while ((rc = sqlite3_step(s.get())) == SQLITE_ROW)
    out.push_back(RootRecord{s.text(0), s.text(1) == "file", s.text(2)});
  if (rc != SQLITE_DONE) fail("cannot list indexed folders");
  return out;
}

void Catalog::set_root(const RootRecord& root) {
  Statement s = prepare(
      "INSERT INTO roots(path, kind, options) VALUES(?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
      "kind = excluded.kind, options = excluded.options");
  s.bind(1, root.path).bind(2, std::string(root.is_file ? "file" : "folder")).bind(3, root.options);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot record folder " + root.path);
}

void Catalog::add_root(const std::string& dir) {
  Statement s = prepare("INSERT OR IGNORE INTO roots(path) VALUES(?)");
  s.bind(1, dir);
  if (sqlite3_step(s.get()) != SQLITE_DONE) fail("cannot record folder " + dir);
}

void Catalog::remove_root(const std::string& dir) { delete_path_and_below("roots", dir); }

}  // namespace cnclip
