#include "cnclip/repair.h"

#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <sstream>

#include "atomic_file.h"
#include "cnclip/catalog.h"
#include "cnclip/error.h"
#include "cnclip/index_store.h"
#include "cnclip/vector_index.h"

namespace cnclip {
namespace {

constexpr const char* kCatalogFile = "catalog.sqlite3";
// Past the last row read, rowids are probed one by one this far when the table's end is unknown.
constexpr int64_t kProbeSlack = 65536;

struct Db {
  sqlite3* db = nullptr;
  std::string path;
  ~Db() { sqlite3_close_v2(db); }
};

struct Stmt {
  sqlite3_stmt* s = nullptr;
  ~Stmt() { sqlite3_finalize(s); }
};

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void remove_file(const std::string& path) { ::unlink(path.c_str()); }

void open_db(Db& d, const std::string& path, int flags) {
  d.path = path;
  if (sqlite3_open_v2(path.c_str(), &d.db, flags | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    const std::string msg = d.db ? sqlite3_errmsg(d.db) : "out of memory";
    throw Exception(ErrorCode::kIoError, path + ": cannot open: " + msg);
  }
  sqlite3_busy_timeout(d.db, 10000);
}

void exec(Db& d, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(d.db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(d.db);
    sqlite3_free(err);
    if (auto limited = file_size_limit_failure(d.db, d.path, msg); !limited.empty()) {
      throw Exception(ErrorCode::kIoError, limited);
    }
    const bool full = sqlite3_errcode(d.db) == SQLITE_FULL || sqlite3_system_errno(d.db) == ENOSPC;
    throw Exception(ErrorCode::kIoError,
                    d.path + ": " + (full ? "the disk is full (" + msg + "); the index was not changed" : msg));
  }
}

std::string quote_id(const std::string& name) {
  std::string out = "\"";
  for (char c : name) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

// Column names of `table`, or nullopt when the schema cannot be read.
std::optional<std::vector<std::string>> columns_of(Db& d, const std::string& table) {
  Stmt st;
  const std::string sql = "PRAGMA table_info(" + quote_id(table) + ")";
  if (sqlite3_prepare_v2(d.db, sql.c_str(), -1, &st.s, nullptr) != SQLITE_OK) return std::nullopt;
  std::vector<std::string> cols;
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    cols.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1)));
  }
  if (rc != SQLITE_DONE) return std::nullopt;
  return cols;
}

// The tables of a catalog (SQLite's own left out) when its schema could be read whole; nullopt when
// it could not (damage).
std::optional<std::vector<std::string>> readable_tables(Db& d) {
  Stmt st;
  std::vector<std::string> out;
  if (sqlite3_prepare_v2(d.db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", -1,
                         &st.s, nullptr) != SQLITE_OK) {
    return std::nullopt;
  }
  int rc;
  while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
    const auto* name = sqlite3_column_text(st.s, 0);
    if (name) out.emplace_back(reinterpret_cast<const char*>(name));
  }
  if (rc != SQLITE_DONE) return std::nullopt;
  return out;
}

// The tables of a catalog cnclip just made.
std::vector<std::string> tables_of(Db& d) {
  auto tables = readable_tables(d);
  if (!tables) throw Exception(ErrorCode::kInternal, d.path + ": " + sqlite3_errmsg(d.db));
  return *tables;
}

std::string utc_stamp() {
  char buf[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", std::gmtime(&t));
  return buf;
}

constexpr char kSqliteHeader[16] = {'S', 'Q', 'L', 'i', 't', 'e', ' ', 'f', 'o', 'r', 'm', 'a', 't', ' ', '3', '\0'};

// Whether the file starts with SQLite's 16-byte header (an empty file counts as one: SQLite takes it
// as an empty database).
bool has_sqlite_header(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // open_db reports it
  char buf[16];
  const ssize_t n = ::pread(fd, buf, sizeof(buf), 0);
  ::close(fd);
  return n == 0 || (n == 16 && std::memcmp(buf, kSqliteHeader, 16) == 0);
}

// A copy of `path` (and its -wal) at `copy`, with SQLite's header written back. Throws kIoError
// (a full disk, most often) with nothing else changed.
std::string restored_copy(const std::string& path, const std::string& copy) {
  std::error_code ec;
  for (const char* suffix : {"", "-wal"}) {
    remove_file(copy + suffix);
    if (*suffix && !exists(path + suffix)) continue;
    std::filesystem::copy_file(path + suffix, copy + suffix, std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
      for (const char* s : {"", "-wal"}) remove_file(copy + s);
      throw Exception(ErrorCode::kIoError, copy + suffix + ": cannot copy the damaged catalog to read it (" +
                                               ec.message() + "); the index was not changed");
    }
  }
  const int fd = ::open(copy.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::pwrite(fd, kSqliteHeader, 16, 0) != 16) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw Exception(errno_error(copy, err, "cannot restore the header of the copy"));
  }
  ::close(fd);
  return copy;
}

// Ids and generation of the newest intact snapshot, to tell which files were lost.
struct SnapshotIds {
  int64_t generation = -1;
  std::set<int64_t> ids;
};
SnapshotIds newest_snapshot_ids(const std::string& dir) {
  SnapshotIds best;
  std::vector<std::pair<int64_t, std::string>> found;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      const size_t dot = name.rfind(".faiss");
      if (name.rfind("vectors-", 0) != 0 || dot == std::string::npos || dot + 6 != name.size()) continue;
      try {
        found.emplace_back(std::stoll(name.substr(8, dot - 8)), dir + "/" + name);
      } catch (...) {
      }
    }
    ::closedir(d);
  }
  std::sort(found.rbegin(), found.rend());
  for (const auto& [gen, path] : found) {
    try {
      auto v = VectorIndex::open_file(path);
      best.generation = gen;
      best.ids.insert(v->ids(), v->ids() + v->size());
      return best;
    } catch (const Exception&) {
      if (best.generation < gen) best.generation = gen;  // damaged: its name still tells the generation
    }
  }
  return best;
}

// Copies every readable row of `table` from `from` to `to` (common columns, rowid kept). `accept`
// decides per row (bound values of the select) whether it is usable.
struct CopyResult {
  int64_t kept = 0, unreadable = 0, rejected = 0, max_rowid = 0;
  std::vector<int64_t> rowids;
};

CopyResult copy_table(Db& from, Db& to, const std::string& table, const std::vector<std::string>& cols,
                      int64_t rowid_hint, const std::function<bool(sqlite3_stmt*)>& accept) {
  CopyResult r;
  std::string list;
  std::string marks;
  for (size_t i = 0; i < cols.size(); ++i) {
    list += (i ? ", " : "") + quote_id(cols[i]);
    marks += (i ? ", ?" : "?");
  }
  const std::string select_cols =
      "SELECT rowid" + (cols.empty() ? std::string() : ", " + list) + " FROM " + quote_id(table);
  Stmt scan, probe, insert;
  if (sqlite3_prepare_v2(from.db, (select_cols + " WHERE rowid > ? ORDER BY rowid").c_str(), -1, &scan.s, nullptr) !=
          SQLITE_OK ||
      sqlite3_prepare_v2(from.db, (select_cols + " WHERE rowid = ?").c_str(), -1, &probe.s, nullptr) != SQLITE_OK) {
    r.unreadable = 1;
    return r;
  }
  const std::string ins = "INSERT OR IGNORE INTO " + quote_id(table) + "(rowid" +
                          (cols.empty() ? std::string() : ", " + list) + ") VALUES(?" +
                          (cols.empty() ? std::string() : ", " + marks) + ")";
  if (sqlite3_prepare_v2(to.db, ins.c_str(), -1, &insert.s, nullptr) != SQLITE_OK) {
    throw Exception(ErrorCode::kIoError, to.path + ": " + sqlite3_errmsg(to.db));
  }
  // Where the table ends, when SQLite can still say.
  int64_t end = rowid_hint;
  {
    Stmt m;
    const std::string sql = "SELECT max(rowid) FROM " + quote_id(table);
    if (sqlite3_prepare_v2(from.db, sql.c_str(), -1, &m.s, nullptr) == SQLITE_OK && sqlite3_step(m.s) == SQLITE_ROW) {
      end = std::max<int64_t>(end, sqlite3_column_int64(m.s, 0));
    }
  }
  auto take = [&](sqlite3_stmt* row) {
    const int64_t rowid = sqlite3_column_int64(row, 0);
    r.max_rowid = std::max(r.max_rowid, rowid);
    if (accept && !accept(row)) {
      ++r.rejected;
      return;
    }
    sqlite3_reset(insert.s);
    for (int c = 0; c <= static_cast<int>(cols.size()); ++c)
      sqlite3_bind_value(insert.s, c + 1, sqlite3_column_value(row, c));
    const int rc = sqlite3_step(insert.s);
    if (rc != SQLITE_DONE) {
      const int code = sqlite3_errcode(to.db);
      if (code == SQLITE_CONSTRAINT) {
        ++r.rejected;
        return;
      }
      const std::string msg = sqlite3_errmsg(to.db);
      if (auto limited = file_size_limit_failure(to.db, to.path, msg); !limited.empty()) {
        throw Exception(ErrorCode::kIoError, limited);
      }
      throw Exception(ErrorCode::kIoError, to.path + ": cannot write: " + msg);
    }
    if (sqlite3_changes(to.db) == 0) {
      ++r.rejected;  // a duplicate (a damaged unique key)
      return;
    }
    ++r.kept;
    r.rowids.push_back(rowid);
  };
  int64_t last = 0;
  for (;;) {
    sqlite3_reset(scan.s);
    sqlite3_bind_int64(scan.s, 1, last);
    int rc;
    while ((rc = sqlite3_step(scan.s)) == SQLITE_ROW) {
      take(scan.s);
      last = sqlite3_column_int64(scan.s, 0);
    }
    if (rc == SQLITE_DONE) break;
    // A damaged page: probe the rowids after it one by one until a row reads again.
    const int64_t limit = std::max(end, last) + kProbeSlack;
    bool resumed = false;
    for (int64_t id = last + 1; id <= limit; ++id) {
      sqlite3_reset(probe.s);
      sqlite3_bind_int64(probe.s, 1, id);
      const int prc = sqlite3_step(probe.s);
      if (prc == SQLITE_ROW) {
        take(probe.s);
        last = id;
        resumed = true;
        break;
      }
      if (prc != SQLITE_DONE) ++r.unreadable;
    }
    if (!resumed) break;
  }
  return r;
}

int64_t page_size_of(const Db& d) {
  Stmt st;
  if (sqlite3_prepare_v2(d.db, "PRAGMA page_size", -1, &st.s, nullptr) != SQLITE_OK) return 0;
  return sqlite3_step(st.s) == SQLITE_ROW ? sqlite3_column_int64(st.s, 0) : 0;
}

// Copies the whole write-ahead log into the main file and empties it; false when a reader still
// holds part of it (or a rollback-journal catalog has no log: true).
bool checkpoint_whole(const Db& d) {
  Stmt st;
  if (sqlite3_prepare_v2(d.db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st.s, nullptr) != SQLITE_OK) return false;
  if (sqlite3_step(st.s) != SQLITE_ROW) return false;
  return sqlite3_column_int(st.s, 0) == 0 && sqlite3_column_int(st.s, 1) == sqlite3_column_int(st.s, 2);
}

}  // namespace

RepairReport repair_index(const std::string& dir, bool wait_for_lock) {
  RepairReport report;
  report.index_dir = dir;
  const std::string catalog_path = dir + "/" + kCatalogFile;
  if (!index_exists(dir)) throw Exception(ErrorCode::kNotFound, dir + ": no index here (nothing to repair)");
  const int lock_fd = lock_index_for_writing(dir, wait_for_lock);
  bool lock_owned = true;
  try {
    // 1. What SQLite's own checks say, and whether every embedding can be used. A catalog whose file
    // header was overwritten reads as "not a database" although every page may be intact: it is read
    // from a copy with the header written back (the damaged file itself stays as it was).
    std::string source = catalog_path;
    if (!has_sqlite_header(catalog_path)) {
      source = restored_copy(catalog_path, catalog_path + ".repair-src");
      report.header_restored = true;
      report.problems.push_back("the file header was overwritten (rows read through a copy with it restored)");
    }
    Db old;
    open_db(old, source, SQLITE_OPEN_READWRITE);
    {
      Stmt st;
      if (sqlite3_prepare_v2(old.db, "PRAGMA integrity_check(20)", -1, &st.s, nullptr) != SQLITE_OK) {
        report.problems.push_back(sqlite3_errmsg(old.db));
      } else {
        int rc;
        while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
          std::stringstream lines(reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0)));
          std::string line;
          while (std::getline(lines, line)) {
            if (line != "ok" && !line.empty() && line.rfind("*** ", 0) != 0) report.problems.push_back(line);
          }
        }
        if (rc != SQLITE_DONE) report.problems.push_back(sqlite3_errmsg(old.db));
      }
    }
    // 2. Salvage into a fresh catalog beside it.
    const std::string fresh_path = catalog_path + ".repair";
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) remove_file(fresh_path + suffix);
    Catalog::open(fresh_path, true).reset();  // the current schema
    Db fresh;
    open_db(fresh, fresh_path, SQLITE_OPEN_READWRITE);
    exec(fresh, "BEGIN IMMEDIATE");
    const SnapshotIds snapshot = newest_snapshot_ids(dir);
    int dim = 0;
    int64_t old_generation = snapshot.generation;
    std::vector<int64_t> kept_files;
    auto tables = tables_of(fresh);
    // A table the old catalog never had (one of an older schema: frames before schema 4) is absent,
    // not damage; only a schema that cannot be read leaves that open.
    const auto old_tables = readable_tables(old);
    // meta first: it says the embedding dimension.
    std::stable_partition(tables.begin(), tables.end(), [](const std::string& t) { return t == "meta"; });
    for (const auto& table : tables) {
      if (table == "changes") continue;  // the log of the old catalog's generations: starts afresh below
      if (old_tables && std::find(old_tables->begin(), old_tables->end(), table) == old_tables->end()) {
        report.kept[table] = 0;
        report.unreadable[table] = 0;
        continue;
      }
      auto old_cols = columns_of(old, table);
      auto new_cols = columns_of(fresh, table);
      if (!old_cols || !new_cols) {
        report.unreadable[table] += 1;  // its schema could not be read: nothing of it is kept
        report.kept[table] = 0;
        continue;
      }
      std::vector<std::string> cols;
      for (const auto& c : *new_cols) {
        if (std::find(old_cols->begin(), old_cols->end(), c) != old_cols->end()) cols.push_back(c);
      }
      std::function<bool(sqlite3_stmt*)> accept;
      int key_col = -1, value_col = -1, emb_col = -1, path_col = -1;
      for (size_t i = 0; i < cols.size(); ++i) {
        if (cols[i] == "key") key_col = static_cast<int>(i) + 1;
        if (cols[i] == "value") value_col = static_cast<int>(i) + 1;
        if (cols[i] == "embedding") emb_col = static_cast<int>(i) + 1;
        if (cols[i] == "path") path_col = static_cast<int>(i) + 1;
      }
      if (table == "meta" && key_col > 0 && value_col > 0) {
        accept = [&, key_col, value_col](sqlite3_stmt* row) {
          const auto* k = sqlite3_column_text(row, key_col);
          const auto* v = sqlite3_column_text(row, value_col);
          if (!k || !v) return false;
          const std::string key(reinterpret_cast<const char*>(k)), value(reinterpret_cast<const char*>(v));
          if (key == "embedding_dim") dim = std::atoi(value.c_str());
          if (key == "generation") old_generation = std::max<int64_t>(old_generation, std::atoll(value.c_str()));
          // The fresh catalog has its own schema version, generation and change log (catalog.h).
          return key != "schema_version" && key != "generation" && key != "changes_since";
        };
      } else if (table == "files" && emb_col > 0) {
        accept = [&, emb_col, path_col](sqlite3_stmt* row) {
          if (path_col > 0 && sqlite3_column_bytes(row, path_col) == 0) return false;
          if (dim <= 0) dim = sqlite3_column_bytes(row, emb_col) / static_cast<int>(sizeof(float));
          const bool ok = sqlite3_column_bytes(row, emb_col) == dim * static_cast<int>(sizeof(float)) &&
                          embedding_is_valid(static_cast<const float*>(sqlite3_column_blob(row, emb_col)), dim);
          if (!ok) ++report.files_invalid;
          return ok;
        };
      } else if (table == "frames" && emb_col > 0) {
        // Video frames (schema 4): the same check of their embeddings; frames left without their
        // video's row are dropped below.
        accept = [&, emb_col](sqlite3_stmt* row) {
          const bool ok = dim > 0 && sqlite3_column_bytes(row, emb_col) == dim * static_cast<int>(sizeof(float)) &&
                          embedding_is_valid(static_cast<const float*>(sqlite3_column_blob(row, emb_col)), dim);
          if (!ok) ++report.files_invalid;
          return ok;
        };
      }
      const int64_t hint = table == "files" && !snapshot.ids.empty() ? *snapshot.ids.rbegin() : 0;
      CopyResult r = copy_table(old, fresh, table, cols, hint, accept);
      report.kept[table] = r.kept;
      report.unreadable[table] = r.unreadable;
      if (table == "files") kept_files = r.rowids;
    }
    exec(fresh, "DELETE FROM frames WHERE file_id NOT IN (SELECT id FROM files)");
    report.roots_lost = report.unreadable["roots"] > 0;
    report.damaged = !report.problems.empty() || report.files_invalid > 0;
    for (const auto& [t, n] : report.unreadable) {
      if (n > 0) report.damaged = true;
    }
    // A sound catalog made before catalogs had 32 KiB pages (catalog.cpp) is rewritten too, in the
    // fresh copy's pages: about half the size, and scans of every embedding ~3x faster. Only once the
    // old one's write-ahead log is wholly in its main file: the swap below must not leave commits
    // behind in a log beside the new file.
    report.page_bytes = page_size_of(old);
    const bool enlarge = !report.damaged && report.page_bytes < kCatalogPageBytes && checkpoint_whole(old);
    if (report.damaged || enlarge) {
      std::sort(kept_files.begin(), kept_files.end());
      // Lost: ids of the newest snapshot not kept (a sound catalog enlarged loses none; its snapshot
      // may predate removals).
      if (report.damaged) {
        for (int64_t id : snapshot.ids) {
          if (id >= kFrameIdBase) continue;  // a video frame, not a file
          if (!std::binary_search(kept_files.begin(), kept_files.end(), id)) ++report.files_lost_known;
        }
      }
      if (report.damaged && report.problems.empty())
        report.problems.push_back("unreadable rows or unusable embeddings");
      // A generation above every old snapshot's, so none of them is mistaken for current.
      const std::string gen = std::to_string(std::max<int64_t>(old_generation, 0) + 1);
      exec(fresh, "INSERT INTO meta(key, value) VALUES('generation', '" + gen +
                      "') ON CONFLICT(key) DO UPDATE SET value = excluded.value");
      // The log starts at the new generation: no older snapshot can be combined with it.
      exec(fresh, "DELETE FROM changes; INSERT INTO meta(key, value) VALUES('changes_since', '" + gen +
                      "') ON CONFLICT(key) DO UPDATE SET value = excluded.value");
      // Without its meta row the dimension is still known from the embeddings kept.
      if (dim > 0) {
        exec(fresh, "INSERT OR IGNORE INTO meta(key, value) VALUES('embedding_dim', '" + std::to_string(dim) + "')");
      }
      exec(fresh, "COMMIT");
      exec(fresh, "PRAGMA wal_checkpoint(TRUNCATE)");
      sqlite3_close_v2(fresh.db);
      fresh.db = nullptr;
      remove_file(fresh_path + "-wal");
      remove_file(fresh_path + "-shm");
      {
        const int fd = ::open(fresh_path.c_str(), O_RDONLY | O_CLOEXEC);
        // The repaired catalog gets the old one's mode and owner: root repairing a user's index must
        // not leave that user an index they can no longer write (or one others can now read). Only
        // root may give a file away; any other user owns what they repair, as they do what they index.
        struct stat was {};
        if (fd >= 0 && ::stat(catalog_path.c_str(), &was) == 0) {
          if (::fchmod(fd, was.st_mode & 07777) != 0 || (::fchown(fd, was.st_uid, was.st_gid) != 0 && errno != EPERM)) {
            const int err = errno;
            ::close(fd);
            throw Exception(
                errno_error(fresh_path, err, "cannot give the repaired catalog the old one's mode and owner"));
          }
        }
        if (fd < 0 || ::fsync(fd) != 0) {
          const int err = errno;
          if (fd >= 0) ::close(fd);
          throw Exception(errno_error(fresh_path, err, "cannot write the repaired catalog"));
        }
        ::close(fd);
      }
      sqlite3_db_config(old.db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
      sqlite3_close_v2(old.db);
      old.db = nullptr;
      if (source != catalog_path) {
        for (const char* suffix : {"", "-wal", "-shm"}) remove_file(source + suffix);
      }
      // 3. Swap: keep a damaged catalog under another name, then rename the fresh one over it. A
      // sound one enlarged is not kept: every row is in the fresh copy, and its log is empty.
      if (report.damaged) {
        std::string kept = catalog_path + ".damaged-" + utc_stamp();
        for (int i = 1; exists(kept); ++i) kept = catalog_path + ".damaged-" + utc_stamp() + "-" + std::to_string(i);
        if (::link(catalog_path.c_str(), kept.c_str()) != 0) {
          throw Exception(errno_error(kept, errno, "cannot keep the damaged catalog"));
        }
        if (exists(catalog_path + "-wal") && ::rename((catalog_path + "-wal").c_str(), (kept + "-wal").c_str()) != 0) {
          throw Exception(errno_error(catalog_path + "-wal", errno, "cannot move aside"));
        }
        report.damaged_copy = kept;
      } else {
        remove_file(catalog_path + "-wal");
      }
      remove_file(catalog_path + "-shm");
      if (::rename(fresh_path.c_str(), catalog_path.c_str()) != 0) {
        throw Exception(errno_error(catalog_path, errno, "cannot put the repaired catalog in place"));
      }
      sync_parent_directory(catalog_path);
      report.pages_enlarged = enlarge;
    } else {
      exec(fresh, "ROLLBACK");
      sqlite3_close_v2(fresh.db);
      fresh.db = nullptr;
      for (const char* suffix : {"", "-wal", "-shm"}) remove_file(fresh_path + suffix);
      report.problems.clear();
    }
  } catch (...) {
    remove_repair_files(dir);
    if (lock_owned) ::close(lock_fd);
    throw;
  }
  // 4. The snapshot of the (new) current generation.
  lock_owned = false;
  auto store = IndexStore::open_locked(dir, lock_fd);
  if (report.damaged || report.pages_enlarged) {
    store->write_snapshot();
    report.snapshot_rewritten = true;
  } else {
    report.snapshot_rewritten = store->ensure_snapshot();
  }
  return report;
}

}  // namespace cnclip
