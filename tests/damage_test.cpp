// Issue #10 items 8, 9 and 11: damage to the vector snapshot and to the catalog is detected,
// reported and recoverable (cnclip repair), scores never leave [-1, 1], and a read-only index can be
// searched while writers refuse it with one clear line.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "cnclip/index_store.h"
#include "cnclip/info.h"
#include "cnclip/repair.h"
#include "cnclip/vector_index.h"
#include "damage_util.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kDim = 32;

std::vector<float> unit_vector(std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<float> v(kDim);
  double n = 0;
  for (auto& x : v) {
    x = dist(rng);
    n += double(x) * x;
  }
  for (auto& x : v) x = static_cast<float>(x / std::sqrt(n));
  return v;
}

// An index of `n` files with random unit embeddings, written through the library.
struct LibraryIndex {
  test::TempDir dir;
  std::map<int64_t, std::pair<std::string, std::vector<float>>> rows;  // id -> path, embedding
  explicit LibraryIndex(int n, unsigned seed = 1) {
    auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
    BundleManifest b;
    b.fingerprint = "fp";
    b.architecture = "tiny";
    b.precision = "fp32";
    b.source_id = "src";
    b.embedding_dim = kDim;
    std::mt19937 rng(seed);
    for (int start = 0; start < n; start += 50) {  // a few batches, as index commits them
      CatalogTransaction tx(s->catalog());
      s->record_model(b);
      for (int i = start; i < std::min(n, start + 50); ++i) {
        const std::string path = "/photos/" + std::to_string(i) + ".jpg";
        auto e = unit_vector(rng);
        const int64_t id =
            s->catalog().insert(FileRecord{0, path, 100 + i, 1000 + i, "h" + std::to_string(i), 1}, e.data(), kDim);
        rows[id] = {path, e};
      }
      tx.commit();
    }
    {
      CatalogTransaction tx(s->catalog());
      for (int i = 0; i < 4; ++i) s->catalog().add_root("/photos/root" + std::to_string(i));
      for (int i = 0; i < 6; ++i) {
        s->catalog().record_failure(FileRecord{0, "/photos/bad" + std::to_string(i) + ".jpg", 5, 6, "", 0},
                                    "truncated");
      }
      tx.commit();
    }
    s->write_snapshot();
  }
  std::string catalog() const { return dir / "catalog.sqlite3"; }
};

// Collects the store's warnings for the lifetime of the object.
struct Warnings {
  std::vector<std::string> lines;
  Warnings() {
    set_index_warning_handler([this](const std::string& m) { lines.push_back(m); });
  }
  ~Warnings() {
    set_index_warning_handler([](const std::string& m) { fprintf(stderr, "cnclip: warning: %s\n", m.c_str()); });
  }
};

void expect_catalog_vectors(const VectorIndex& v, const LibraryIndex& idx) {
  ASSERT_EQ(v.size(), static_cast<int64_t>(idx.rows.size()));
  for (int64_t i = 0; i < v.size(); ++i) {
    auto it = idx.rows.find(v.ids()[i]);
    ASSERT_NE(it, idx.rows.end());
    // A mapped snapshot's floats are not 4-byte aligned (see VectorIndex::vectors): copy them out.
    float row[kDim];
    std::memcpy(row, v.vectors() + i * kDim, sizeof row);
    for (int d = 0; d < kDim; ++d) ASSERT_EQ(row[d], it->second.second[d]);
  }
}

TEST(DamageSnapshot, RandomBytesAnywhereTruncationAndExtensionAreCaught) {
  LibraryIndex idx(120);
  auto s = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
  const std::string snap = s->snapshot_path();
  const std::string good = test::read_text(snap);
  // Regions of the file: FAISS headers, vectors, ids, cnclip's trailer.
  const size_t header = 4 + 33 + 4 + 33 + 8, ids_at = header + idx.rows.size() * kDim * 4 + 8;
  const std::vector<std::pair<size_t, size_t>> regions = {
      {0, header}, {header, ids_at - 8}, {ids_at - 8, good.size() - 24}, {good.size() - 24, good.size()}};
  std::mt19937 rng(7);
  Warnings w;
  int trials = 0;
  for (const auto& [lo, hi] : regions) {
    for (int t = 0; t < 12; ++t, ++trials) {
      std::string bad = good;
      const size_t at = lo + rng() % (hi - lo);
      const size_t n = 1 + rng() % std::min<size_t>(64, hi - at);
      for (size_t i = at; i < at + n; ++i) bad[i] = static_cast<char>(rng());
      if (bad == good) bad[at] = static_cast<char>(~bad[at]);
      test::write_text(snap, bad);
      std::string problem;
      EXPECT_EQ(s->open_snapshot(&problem), nullptr) << "damage at " << at << " not caught";
      EXPECT_NE(problem.find(snap), std::string::npos) << problem;
      const size_t before = w.lines.size();
      expect_catalog_vectors(*s->load_vectors(), idx);
      ASSERT_EQ(w.lines.size(), before + 1) << "one warning per load";
      EXPECT_NE(w.lines.back().find(snap), std::string::npos);
      EXPECT_EQ(w.lines.back().find('\n'), std::string::npos);
    }
  }
  for (size_t cut : {size_t{0}, size_t{5}, good.size() / 3, good.size() - 24, good.size() - 1}) {
    test::write_text(snap, good.substr(0, cut));
    EXPECT_EQ(s->open_snapshot(), nullptr) << "cut at " << cut;
    expect_catalog_vectors(*s->load_vectors(), idx);
  }
  for (size_t extra : {size_t{1}, size_t{24}, size_t{4096}}) {
    std::string longer = good;
    for (size_t i = 0; i < extra; ++i) longer += static_cast<char>(rng());
    test::write_text(snap, longer);
    EXPECT_EQ(s->open_snapshot(), nullptr) << "extended by " << extra;
  }
  // The next writer rewrites it, byte for byte what it was; an intact one is left alone.
  EXPECT_TRUE(s->ensure_snapshot());
  EXPECT_EQ(test::read_text(snap), good);
  EXPECT_NE(s->open_snapshot(), nullptr);
  EXPECT_FALSE(s->ensure_snapshot());
  const size_t before = w.lines.size();
  expect_catalog_vectors(*s->load_vectors(), idx);
  EXPECT_EQ(w.lines.size(), before) << "no warning for an intact snapshot";
  EXPECT_GT(trials, 40);
}

TEST(DamageScores, NeverOutsideMinusOneToOne) {
  std::mt19937 rng(3);
  std::vector<float> all;
  std::vector<int64_t> ids;
  for (int i = 0; i < 50; ++i) {
    auto v = unit_vector(rng);
    all.insert(all.end(), v.begin(), v.end());
    ids.push_back(i + 1);
  }
  // A query equal to a stored vector, and its opposite: the extremes, clamped to exactly +-1.
  std::vector<float> q(all.begin(), all.begin() + kDim);
  auto index = VectorIndex::from_vectors(kDim, ids, all);
  for (float sign : {1.0f, -1.0f}) {
    std::vector<float> qq = q;
    for (auto& x : qq) x *= sign;
    const auto hits = index->search(qq.data(), 1, 50);
    ASSERT_EQ(hits[0].size(), 50u);
    EXPECT_EQ(hits[0][0].score, sign > 0 ? 1.0f : hits[0][0].score);
    for (const auto& h : hits[0]) {
      EXPECT_GE(h.score, -1.0f);
      EXPECT_LE(h.score, 1.0f);
    }
  }
  // Damaged vectors (huge, NaN, infinite) never come back as scores.
  for (float bad : {1e30f, std::nanf(""), INFINITY, 2.0f}) {
    std::vector<float> damaged = all;
    for (int d = 0; d < kDim; ++d) damaged[5 * kDim + d] = all[5 * kDim + d] * bad;
    damaged[5 * kDim] = bad;
    auto broken = VectorIndex::from_vectors(kDim, ids, damaged);
    try {
      std::vector<float> q5(all.begin() + 5 * kDim, all.begin() + 6 * kDim);
      auto hits = broken->search(q5.data(), 1, 50)[0];
      for (const auto& h : hits) {
        EXPECT_TRUE(std::isfinite(h.score) && h.score >= -1.0f && h.score <= 1.0f) << bad << ": " << h.score;
      }
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    }
  }
  // At the source: the writer refuses a non-finite vector, and a catalog embedding that is not a unit
  // vector is damage, named with the recovery command.
  test::TempDir dir;
  VectorFileWriter w(dir / "v.faiss", kDim, 1);
  std::vector<float> nan(kDim, std::nanf(""));
  EXPECT_THROW(w.add(1, nan.data()), Exception);

  LibraryIndex idx(3);
  auto s = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
  {
    CatalogTransaction tx(s->catalog());
    std::vector<float> big(kDim, 1e20f);
    s->catalog().insert(FileRecord{0, "/photos/big.jpg", 1, 1, "hb", 1}, big.data(), kDim);
    tx.commit();
  }
  try {
    s->load_vectors();
    FAIL() << "damaged embedding used";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
    EXPECT_NE(std::string(e.what()).find("cnclip repair"), std::string::npos) << e.what();
  }
}

// Rows SQLite can read directly, one rowid at a time, with a usable embedding: what repair must keep.
std::map<int64_t, std::pair<std::string, std::vector<float>>> readable_rows(const std::string& path, int64_t max_id) {
  std::map<int64_t, std::pair<std::string, std::vector<float>>> out;
  sqlite3* db = nullptr;
  sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, "SELECT path, embedding FROM files WHERE id = ?", -1, &s, nullptr) == SQLITE_OK) {
    for (int64_t id = 1; id <= max_id; ++id) {
      sqlite3_reset(s);
      sqlite3_bind_int64(s, 1, id);
      if (sqlite3_step(s) != SQLITE_ROW || sqlite3_column_bytes(s, 1) != kDim * 4) continue;
      const auto* e = static_cast<const float*>(sqlite3_column_blob(s, 1));
      if (!embedding_is_valid(e, kDim)) continue;
      out[id] = {reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), std::vector<float>(e, e + kDim)};
    }
  }
  sqlite3_finalize(s);
  sqlite3_close_v2(db);
  return out;
}

// The rows of a small table that a full scan can read (nullopt when the scan fails part-way).
std::optional<std::set<std::string>> scan_paths(const std::string& db_path, const std::string& table) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* s = nullptr;
  std::optional<std::set<std::string>> out;
  // NOT INDEXED: the rows themselves, not a copy of their key in an index.
  if (sqlite3_prepare_v2(db, ("SELECT path FROM " + table + " NOT INDEXED").c_str(), -1, &s, nullptr) == SQLITE_OK) {
    std::set<std::string> paths;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) paths.insert(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)));
    if (rc == SQLITE_DONE) out = paths;
  }
  sqlite3_finalize(s);
  sqlite3_close_v2(db);
  return out;
}

// 8 KB of random bytes at the start of `count` pages past the first (SQLite's schema; see README).
void damage_pages(const std::string& path, int count, unsigned seed) {
  std::mt19937 rng(seed);
  const uint64_t page = static_cast<uint64_t>(test::sqlite_page_size(path)), pages = test::file_size(path) / page;
  ASSERT_GT(pages, 2u) << path;
  for (int i = 0; i < count; ++i) test::damage_bytes(path, (1 + rng() % (pages - 2)) * page, 8192, seed * 31 + i);
}

TEST(DamageCatalog, RepairKeepsEveryReadableRow) {
  for (unsigned seed : {11u, 12u, 13u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    // Enough rows that the files table spans many of the catalog's 32 KiB pages.
    LibraryIndex idx(2000, seed);
    const int64_t gen_before = IndexStore::open(idx.dir.path(), IndexAccess::kRead)->catalog().generation();
    damage_pages(idx.catalog(), 3, seed);
    const auto readable = readable_rows(idx.catalog(), 2000);
    const auto roots = scan_paths(idx.catalog(), "roots"), failures = scan_paths(idx.catalog(), "failures");
    ASSERT_LT(readable.size(), idx.rows.size()) << "the damage hit no file rows";
    // Writers and info refuse it, naming the recovery command.
    try {
      IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
      FAIL() << "a writer opened a damaged catalog";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
      EXPECT_NE(std::string(e.what()).find("cnclip repair"), std::string::npos) << e.what();
    }
    const RepairReport r = repair_index(idx.dir.path());
    EXPECT_TRUE(r.damaged);
    EXPECT_FALSE(r.problems.empty());
    EXPECT_TRUE(fs::exists(r.damaged_copy)) << r.damaged_copy;
    EXPECT_TRUE(r.snapshot_rewritten);
    EXPECT_EQ(r.kept.at("files"), static_cast<int64_t>(readable.size()));
    EXPECT_EQ(r.files_lost_known, static_cast<int64_t>(idx.rows.size() - readable.size()));

    auto s = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);  // passes quick_check now
    EXPECT_TRUE(s->catalog().integrity_problems(true).empty());
    EXPECT_GT(s->catalog().generation(), gen_before);
    const auto files = s->catalog().files_under("");
    ASSERT_EQ(files.size(), readable.size());
    for (const auto& f : files) {
      auto it = readable.find(f.id);
      ASSERT_NE(it, readable.end()) << f.id;
      EXPECT_EQ(f.path, it->second.first);
      EXPECT_EQ(f.path, idx.rows.at(f.id).first);
      EXPECT_EQ(s->catalog().embedding(f.id), idx.rows.at(f.id).second);
    }
    // Folders and remembered failures that could be read are kept too.
    if (roots) {
      const auto got = s->catalog().roots();
      EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), *roots);
    }
    if (failures) {
      for (const auto& f : *failures) EXPECT_TRUE(s->catalog().failure(f).has_value()) << f;
    }
    EXPECT_TRUE(s->catalog().meta("model_fingerprint").has_value() || r.unreadable.at("meta") > 0);
    auto snap = s->open_snapshot();
    ASSERT_NE(snap, nullptr);
    EXPECT_EQ(snap->size(), static_cast<int64_t>(readable.size()));
    // A second repair finds nothing to do.
    s.reset();
    EXPECT_FALSE(repair_index(idx.dir.path()).damaged);
  }
}

// Rewrites `catalog` in pages of `bytes`, as catalogs were made before (SQLite's default 4 KiB).
void set_page_size(const std::string& catalog, int bytes) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(catalog.c_str(), &db), SQLITE_OK);
  const std::string sql =
      "PRAGMA journal_mode=DELETE; PRAGMA page_size=" + std::to_string(bytes) + "; VACUUM; PRAGMA journal_mode=WAL;";
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

int64_t page_size(const std::string& catalog) {
  sqlite3* db = nullptr;
  sqlite3_open_v2(catalog.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, nullptr);
  const int64_t page = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return page;
}

TEST(DamageCatalog, RepairRewritesASoundCatalogOfOldPagesKeepingEveryRow) {
  LibraryIndex idx(600, 21);
  set_page_size(idx.catalog(), 4096);
  ASSERT_EQ(page_size(idx.catalog()), 4096);
  EXPECT_EQ(read_index_info(idx.dir.path()).catalog_page_bytes, 4096);  // what `cnclip info` points out
  // A commit only in the write-ahead log (a run killed before its checkpoint): read, then kept.
  {
    auto s = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
    s->catalog().set_meta("probe", "in the log");
    s->catalog().remove_under("/photos/7.jpg");
    idx.rows.erase(std::find_if(idx.rows.begin(), idx.rows.end(),
                                [](const auto& r) { return r.second.first == "/photos/7.jpg"; }));
    s->write_snapshot();
  }
  // A reader in the middle of a read transaction holds the log: the catalog is left as it is (after
  // the checkpoint waited its 10 s for the reader).
  {
    sqlite3* reader = nullptr;
    ASSERT_EQ(sqlite3_open(idx.catalog().c_str(), &reader), SQLITE_OK);
    auto w = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
    w->catalog().set_meta("probe2", "1");  // a frame the reader's snapshot predates
    w.reset();
    ASSERT_EQ(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM files;", nullptr, nullptr, nullptr), SQLITE_OK);
    auto w2 = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
    w2->catalog().set_meta("probe3", "1");
    w2.reset();
    const RepairReport held = repair_index(idx.dir.path());
    EXPECT_FALSE(held.damaged);
    EXPECT_EQ(held.page_bytes, 4096);
    EXPECT_FALSE(held.pages_enlarged);
    EXPECT_EQ(page_size(idx.catalog()), 4096);
    sqlite3_exec(reader, "COMMIT", nullptr, nullptr, nullptr);
    sqlite3_close(reader);
  }
  const RepairReport r = repair_index(idx.dir.path());
  EXPECT_FALSE(r.damaged);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(r.page_bytes, 4096);
  EXPECT_TRUE(r.pages_enlarged);
  EXPECT_TRUE(r.damaged_copy.empty());
  EXPECT_TRUE(r.snapshot_rewritten);
  EXPECT_EQ(page_size(idx.catalog()), kCatalogPageBytes);
  EXPECT_EQ(read_index_info(idx.dir.path()).catalog_page_bytes, kCatalogPageBytes);
  for (const auto& e : fs::directory_iterator(idx.dir.path())) {
    const std::string name = e.path().filename();
    EXPECT_EQ(name.find(".damaged"), std::string::npos) << name;
    EXPECT_EQ(name.find(".repair"), std::string::npos) << name;
  }
  auto s = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
  EXPECT_TRUE(s->catalog().integrity_problems(true).empty());
  EXPECT_EQ(s->catalog().meta("probe"), std::optional<std::string>("in the log"));
  EXPECT_EQ(s->catalog().meta("probe3"), std::optional<std::string>("1"));
  const auto files = s->catalog().files_under("");
  ASSERT_EQ(files.size(), idx.rows.size());
  for (const auto& f : files) {
    ASSERT_TRUE(idx.rows.count(f.id)) << f.id;
    EXPECT_EQ(f.path, idx.rows.at(f.id).first);
    EXPECT_EQ(s->catalog().embedding(f.id), idx.rows.at(f.id).second);
  }
  EXPECT_EQ(s->catalog().roots().size(), 4u);
  auto snap = s->open_snapshot();
  ASSERT_NE(snap, nullptr);
  expect_catalog_vectors(*snap, idx);
  // Done once: the next repair has nothing to do.
  s.reset();
  const RepairReport again = repair_index(idx.dir.path());
  EXPECT_FALSE(again.pages_enlarged);
  EXPECT_EQ(again.page_bytes, kCatalogPageBytes);
}

// Root repairing a user's index leaves that user's catalog theirs, with its mode: the fresh file
// put in its place is root's 0644 otherwise, and the user's next index run fails.
TEST(DamageCatalog, RepairKeepsTheCatalogsOwnerAndMode) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give the catalog to another user";
  const passwd* nobody = ::getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  for (const mode_t mode : {0600u, 0640u}) {
    LibraryIndex idx(60, 31);
    set_page_size(idx.catalog(), 4096);  // repair rewrites it
    ASSERT_EQ(::chown(idx.catalog().c_str(), nobody->pw_uid, nobody->pw_gid), 0);
    ASSERT_EQ(::chmod(idx.catalog().c_str(), mode), 0);
    ASSERT_TRUE(repair_index(idx.dir.path()).pages_enlarged);
    struct stat st {};
    ASSERT_EQ(::stat(idx.catalog().c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, nobody->pw_uid);
    EXPECT_EQ(st.st_gid, nobody->pw_gid);
    EXPECT_EQ(st.st_mode & 07777, mode);
    EXPECT_EQ(page_size(idx.catalog()), kCatalogPageBytes);
    // The snapshot repair writes is as private as the catalog, and the user's too.
    const std::string snapshot = IndexStore::open(idx.dir.path(), IndexAccess::kRead)->snapshot_path();
    ASSERT_EQ(::stat(snapshot.c_str(), &st), 0) << snapshot;
    EXPECT_EQ(st.st_uid, nobody->pw_uid);
    EXPECT_EQ(st.st_mode & 07777, mode);
  }
}

// The snapshot takes the catalog's mode and owner when its temporary file is created, not after the
// rename (AtomicFileWriter's access_of): before, for the few milliseconds of its writing, a 0600
// catalog's vectors sat in a 0644 file. Checked on a flat snapshot's temporary file before its first
// byte, and on the files written.
TEST(DamageCatalog, ASnapshotIsAsPrivateAsTheCatalogFromItsFirstByte) {
  // The modes are checked as any user; the owner (given away) only as root.
  const bool root = ::geteuid() == 0;
  const passwd* nobody = ::getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  test::TempDir dir;
  const std::string like = dir / "catalog";
  test::write_text(like, "x");
  if (root) {
    ASSERT_EQ(::chown(like.c_str(), nobody->pw_uid, nobody->pw_gid), 0);
  }
  struct UmaskGuard {
    mode_t old = ::umask(022);
    ~UmaskGuard() { ::umask(old); }
  } umask_022;
  for (const mode_t mode : {0600u, 0640u}) {
    ASSERT_EQ(::chmod(like.c_str(), mode), 0);
    for (const bool flat : {true, false}) {
      SCOPED_TRACE(std::string(flat ? "flat" : "IVF") + " mode " + std::to_string(mode));
      const std::string path = dir / (flat ? "flat.faiss" : "ivf.faiss");
      auto check = [&](const std::string& file) {
        struct stat st {};
        ASSERT_EQ(::stat(file.c_str(), &st), 0) << file;
        EXPECT_EQ(st.st_mode & 07777, mode) << file;
        if (root) {
          EXPECT_EQ(st.st_uid, nobody->pw_uid) << file;
          EXPECT_EQ(st.st_gid, nobody->pw_gid) << file;
        }
      };
      std::vector<float> v(64 * 8);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>((i * 7919) % 101) / 101.0f - 0.5f;
      if (flat) {
        VectorFileWriter writer(path, 8, 64, like);
        int temporary = 0;
        for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
          if (e.path().filename().string().rfind("flat.faiss.tmp-", 0) == 0) {
            ++temporary;
            check(e.path().string());
          }
        }
        ASSERT_EQ(temporary, 1);
        for (int i = 0; i < 64; ++i) writer.add(i + 1, v.data() + i * 8);
        writer.commit();
      } else {
        // FAISS's types: the file is written in one go once the index is built; its final state.
        std::string report;
        ASSERT_EQ(build_snapshot(
                      path, "IVF2,Flat", 8, 64,
                      [&](const std::function<void(int64_t, const float*)>& add) {
                        for (int i = 0; i < 64; ++i) add(i + 1, v.data() + i * 8);
                      },
                      &report, 1.0, like),
                  SnapshotBuild::kWritten)
            << report;
      }
      check(path);
    }
  }
  // Without a file to take them from: the process's umask, as before.
  VectorFileWriter plain(dir / "plain.faiss", 8, 0);
  plain.commit();
  struct stat st {};
  ASSERT_EQ(::stat((dir / "plain.faiss").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  // A symbolic link at the temporary file's name is replaced, never followed (root writing a
  // user's index must not write to, or give away, what a link there points to).
  const std::string target = dir / "target";
  test::write_text(target, "keep");
  ASSERT_EQ(::symlink(target.c_str(), (dir / "linked.faiss.tmp-" + std::to_string(::getpid())).c_str()), 0);
  VectorFileWriter linked(dir / "linked.faiss", 8, 0, like);
  linked.commit();
  EXPECT_EQ(test::read_text(target), "keep");
  ASSERT_EQ(::lstat((dir / "linked.faiss").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

// A repair killed before its rename leaves its fresh catalog (as large as the old one) and perhaps a
// header-restored copy: the next writer, which holds the lock repair held, removes them; a reader
// (no lock: a repair may be running) leaves them.
TEST(DamageCatalog, WhatAKilledRepairLeftIsRemovedByTheNextWriter) {
  LibraryIndex idx(20, 5);
  std::vector<std::string> left;
  for (const char* kind : {".repair", ".repair-src"}) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) left.push_back(idx.catalog() + kind + suffix);
  }
  for (const auto& f : left) test::write_text(f, std::string(4096, 'r'));
  IndexStore::open(idx.dir.path(), IndexAccess::kRead).reset();
  for (const auto& f : left) EXPECT_TRUE(std::filesystem::exists(f)) << f;
  auto writer = IndexStore::open(idx.dir.path(), IndexAccess::kWrite);
  for (const auto& f : left) EXPECT_FALSE(std::filesystem::exists(f)) << f;
  EXPECT_EQ(writer->catalog().count(), 20);
}

// An older cnclip's catalog: schema 3 (no video frames table) in 4 KiB pages, as `info` sends its
// users to repair. Absent tables are not damage.
TEST(DamageCatalog, RepairOfAnOlderSchemasSoundCatalogIsNoDamage) {
  LibraryIndex idx(120, 31);
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(idx.catalog().c_str(), &db), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(db, "DROP TABLE frames; UPDATE meta SET value = '3' WHERE key = 'schema_version';", nullptr,
                           nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  set_page_size(idx.catalog(), 4096);
  const RepairReport r = repair_index(idx.dir.path());
  EXPECT_FALSE(r.damaged);
  EXPECT_TRUE(r.problems.empty()) << r.problems.front();
  EXPECT_TRUE(r.pages_enlarged);
  EXPECT_EQ(r.unreadable.at("frames"), 0);
  EXPECT_EQ(r.kept.at("files"), 120);
  EXPECT_EQ(r.kept.at("failures"), 6);
  for (const auto& e : fs::directory_iterator(idx.dir.path())) {
    EXPECT_EQ(e.path().filename().string().find(".damaged"), std::string::npos) << e.path();
  }
  auto s = IndexStore::open(idx.dir.path(), IndexAccess::kRead);
  EXPECT_EQ(s->catalog().count(), 120);
}

TEST(DamageCatalog, RepairOnAFullDiskChangesNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk needs a tmpfs mounted as root";
  LibraryIndex idx(400, 5);
  test::TempDir d;
  const std::string disk = d / "disk", dir = disk + "/idx";
  fs::create_directories(disk);
  auto tmpfs = test::ScopedMount::tmpfs(disk, 4u << 20);
  ASSERT_TRUE(tmpfs.ok()) << tmpfs.why();
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(idx.dir.path())) {
    fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
  }
  damage_pages(dir + "/catalog.sqlite3", 2, 5);
  const std::string damaged = test::read_text(dir + "/catalog.sqlite3");
  const auto space = fs::space(disk);
  std::ofstream(disk + "/filler", std::ios::binary) << std::string(static_cast<size_t>(space.available - 4096), 'f');
  try {
    repair_index(dir);
    FAIL() << "repair wrote a catalog on a full disk";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIoError);
    const std::string what = e.what();
    EXPECT_TRUE(what.find("full") != std::string::npos || what.find("No space") != std::string::npos) << what;
  }
  EXPECT_EQ(test::read_text(dir + "/catalog.sqlite3"), damaged) << "the catalog was changed";
  EXPECT_FALSE(fs::exists(dir + "/catalog.sqlite3.repair"));
  fs::remove(disk + "/filler");
  EXPECT_TRUE(repair_index(dir).damaged);
}

// ---- through the binary ----

struct PhotoIndex {
  test::TempDir dir;
  std::string photos = dir / "photos", idx = dir / "idx";
  explicit PhotoIndex(int n) {
    ::chmod(dir.path().c_str(), 0755);  // readable by another user
    fs::create_directories(photos);
    for (int i = 0; i < n; ++i) test::make_small_photo(photos + "/p" + std::to_string(i) + ".png", 900 + i);
    auto r = test::run_cnclip(
        test::concat({"index", "-q", "--batch-size", "16", photos, "--model", test::tiny_bundle()}, idx_args()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  std::vector<std::string> idx_args() const { return {"--index", idx}; }
  std::string catalog() const { return idx + "/catalog.sqlite3"; }
};

TEST(DamageCli, DamagedSnapshotIsSaidOnceAndRewrittenByTheNextIndex) {
  PhotoIndex p(30);
  const auto before = test::run_cnclip(test::concat(
      {"search-text", "小狗", "-k", "30", "--format", "jsonl", "--model", test::tiny_bundle()}, p.idx_args()));
  ASSERT_EQ(before.exit_code, 0) << before.err;
  std::string snap;
  for (const auto& e : fs::directory_iterator(p.idx)) {
    if (e.path().filename().string().rfind("vectors-", 0) == 0) snap = e.path().string();
  }
  ASSERT_FALSE(snap.empty());
  const std::string good = test::read_text(snap);
  test::damage_bytes(snap, good.size() / 2, 16, 5);  // the middle of the vectors, header intact
  auto r = test::run_cnclip(test::concat(
      {"search-text", "小狗", "-k", "30", "--format", "jsonl", "--model", test::tiny_bundle()}, p.idx_args()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, before.out) << "the catalog's vectors give the same answers";
  ASSERT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find(snap), std::string::npos) << r.err;
  for (const auto& l : test::lines(r.out)) {
    const double score = json::parse(l)["score"];
    EXPECT_TRUE(score >= -1 && score <= 1) << l;
  }
  r = test::run_cnclip(test::concat({"index", "-q", "--model", test::tiny_bundle()},
                                    p.idx_args()));  // no path: update, nothing to encode
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::read_text(snap), good) << "the next run rewrites the snapshot";
  r = test::run_cnclip(test::concat(
      {"search-text", "小狗", "-k", "30", "--format", "jsonl", "--model", test::tiny_bundle()}, p.idx_args()));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out, before.out);
}

TEST(DamageCli, DamagedCatalogIsReportedRepairedAndOnlyTheLostAreEncodedAgain) {
  const int n = 300;
  PhotoIndex p(n);
  const auto reference = test::catalog_entries(p.catalog());
  ASSERT_EQ(reference.size(), static_cast<size_t>(n));
  damage_pages(p.catalog(), 3, 21);

  auto r = test::run_cnclip(test::concat(
      {"search-text", "小狗", "-k", "300", "--format", "jsonl", "--model", test::tiny_bundle()}, p.idx_args()));
  EXPECT_EQ(r.exit_code, 1) << "a damaged catalog must not give partial results";
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("damaged"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cnclip repair"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"info"}, {"index", "-q", "--model", test::tiny_bundle()}}) {
    const std::string& cmd = args[0];
    r = test::run_cnclip(test::concat(args, p.idx_args()));
    EXPECT_EQ(r.exit_code, 1) << cmd;
    EXPECT_NE(r.err.find("cnclip repair"), std::string::npos) << cmd << ": " << r.err;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  }

  r = test::run_cnclip(test::concat({"repair", "--format", "json"}, p.idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json rep = json::parse(r.out);
  EXPECT_TRUE(rep["damaged"].get<bool>());
  EXPECT_NE(r.err.find("kept"), std::string::npos);
  EXPECT_TRUE(fs::exists(rep["damaged_copy"].get<std::string>()));
  const int64_t kept = rep["kept"]["files"];
  EXPECT_LT(kept, n);
  const auto after = test::catalog_entries(p.catalog());
  ASSERT_EQ(after.size(), static_cast<size_t>(kept));
  for (const auto& [path, e] : after) EXPECT_EQ(e, reference.at(path)) << path;
  EXPECT_EQ(rep["files_lost_known"], n - kept);

  r = test::run_cnclip(test::concat({"info", "--format", "json"}, p.idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["files"], kept);
  r = test::run_cnclip(
      test::concat({"index", "-q", "--format", "json", p.photos, "--model", test::tiny_bundle()}, p.idx_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = json::parse(r.out);
  EXPECT_EQ(s["added"], n - kept) << "only the lost files are encoded again";
  EXPECT_EQ(s["unchanged"], kept);
  EXPECT_EQ(s["removed"], 0);
  const auto final_entries = test::catalog_entries(p.catalog());
  EXPECT_EQ(final_entries.size(), static_cast<size_t>(n));
  for (const auto& [path, e] : after) EXPECT_EQ(final_entries.at(path), e) << path;
}

bool user_exists(const char* name) {
  return std::system((std::string("id -u ") + name + " >/dev/null 2>&1").c_str()) == 0;
}

// Every reader works and every writer says "read-only" in one line; `prefix` runs the binary as
// another user.
void expect_read_only_behaviour(const PhotoIndex& p, const std::vector<std::string>& through, int files) {
  test::RunOptions as;
  as.through = through;
  auto run = [&](const std::vector<std::string>& args) { return test::run_cnclip(args, as); };
  const std::string model = test::tiny_bundle();
  auto r = run({"search-text", "小狗", "-k", "5", "--format", "jsonl", "--model", model, "--index", p.idx});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 5u);
  r = run({"search-image", p.photos + "/p1.png", "-k", "1", "--format", "paths", "--model", model, "--index", p.idx});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = run({"info", "--format", "json", "--index", p.idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["files"], files);
  test::write_text(p.dir / "in.jsonl", "");
  for (const auto& args : std::vector<std::vector<std::string>>{{"index", "-q", "--model", model},
                                                                {"index", "-q", p.photos, "--model", model},
                                                                {"remove", p.photos + "/p1.png"},
                                                                {"repair"},
                                                                {"import", p.dir / "in.jsonl", "--model", model}}) {
    const std::string& cmd = args[0];
    r = run(test::concat(args, {"--index", p.idx}));
    EXPECT_EQ(r.exit_code, 1) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("read-only"), std::string::npos) << cmd << ": " << r.err;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << cmd << ": " << r.err;
  }
}

TEST(ReadOnlyIndex, ReadOnlyMountIsSearchableAndWritersSaySo) {
  if (::geteuid() != 0) GTEST_SKIP() << "a read-only bind mount needs root";
  PhotoIndex p(12);
  auto ro = test::ScopedMount::read_only(p.idx);
  ASSERT_TRUE(ro.ok()) << ro.why();
  expect_read_only_behaviour(p, {}, 12);
  EXPECT_FALSE(fs::exists(p.idx + "/catalog.sqlite3.repair"));
}

TEST(ReadOnlyIndex, AnotherUsersIndexIsSearchableAndWritersSaySo) {
  if (::geteuid() != 0) {
    if (!user_exists("nobody")) GTEST_SKIP() << "not root and no other user to own the index";
    GTEST_SKIP() << "needs root to run as 'nobody' (runuser)";
  }
  ASSERT_TRUE(user_exists("nobody"));
  PhotoIndex p(12);
  std::system(("chmod -R a+rX " + test::shell_quote(p.dir.path())).c_str());
  expect_read_only_behaviour(p, {"runuser", "-u", "nobody", "--"}, 12);
}

// A snapshot this user cannot read (an index shared read-only, its snapshot private): searches and
// info read the catalog's vectors with one warning, as for a damaged snapshot, instead of failing.
TEST(ReadOnlyIndex, ASnapshotThisUserCannotReadGivesWayToTheCatalog) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run as 'nobody' (runuser)";
  ASSERT_TRUE(user_exists("nobody"));
  PhotoIndex p(12);
  std::system(("chmod -R a+rX " + test::shell_quote(p.dir.path())).c_str());
  std::string snapshot;
  for (const auto& e : fs::directory_iterator(p.idx)) {
    if (e.path().filename().string().rfind("vectors-", 0) == 0) snapshot = e.path();
  }
  ASSERT_FALSE(snapshot.empty());
  ASSERT_EQ(::chmod(snapshot.c_str(), 0600), 0);
  test::RunOptions nobody;
  nobody.through = {"runuser", "-u", "nobody", "--"};
  auto r = test::run_cnclip(test::concat({"search-text", "小狗", "-k", "20", "--format", "jsonl", "--no-server",
                                          "--model", test::tiny_bundle()},
                                         p.idx_args()),
                            nobody);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 12u);
  EXPECT_NE(r.err.find("Permission denied; using the catalog's vectors instead"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  r = test::run_cnclip(test::concat({"info", "--format", "json"}, p.idx_args()), nobody);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["vectors"], 12);
  EXPECT_TRUE(json::parse(r.out)["snapshot"].is_null()) << r.out;
  // Why, where it can be read and not only on stderr.
  EXPECT_NE(json::parse(r.out)["snapshot_problem"].get<std::string>().find(snapshot + ": cannot open vector file"),
            std::string::npos)
      << r.out;
  r = test::run_cnclip(test::concat({"info"}, p.idx_args()), nobody);
  EXPECT_NE(r.out.find("(no usable vector snapshot (" + snapshot + ": cannot open vector file"), std::string::npos)
      << r.out;
}

// An index folder another user keeps private (mode 700) is said to be unreadable, not to hold no
// index yet: searches and info exit 1 naming the folder.
TEST(ReadOnlyIndex, AFolderThisUserCannotLookIntoIsNotAnEmptyOne) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run as 'nobody' (runuser)";
  ASSERT_TRUE(user_exists("nobody"));
  PhotoIndex p(4);
  std::system(("chmod -R a+rX " + test::shell_quote(p.dir.path())).c_str());
  for (const std::string mode : {"0700", "0300"}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(::chmod(p.idx.c_str(), static_cast<mode_t>(std::stoi(mode, nullptr, 8))), 0);
    test::RunOptions nobody;
    nobody.through = {"runuser", "-u", "nobody", "--"};
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"info"}, {"search-text", "小狗", "--no-server", "--model", test::tiny_bundle()}}) {
      auto r = test::run_cnclip(test::concat(args, p.idx_args()), nobody);
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_EQ(r.out, "");
      EXPECT_NE(r.err.find(p.idx + ": cannot read the index: Permission denied"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("no index here"), std::string::npos) << r.err;
    }
    // Writers say the same, not that searches work.
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"index", p.photos, "--model", test::tiny_bundle()}, {"remove", p.photos + "/p1.png"}, {"repair"}}) {
      auto r = test::run_cnclip(test::concat(args, p.idx_args()), nobody);
      EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
      EXPECT_NE(r.err.find("cannot read the index"), std::string::npos) << args[0] << ": " << r.err;
      EXPECT_EQ(r.err.find("searches"), std::string::npos) << args[0] << ": " << r.err;
      EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
    }
  }
  // A catalog it may not read in a folder it may: every command names the catalog and the reason.
  ASSERT_EQ(::chmod(p.idx.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(p.catalog().c_str(), 0600), 0);
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"info"},
                                             {"search-text", "小狗", "--no-server", "--model", test::tiny_bundle()},
                                             {"index", p.photos, "--model", test::tiny_bundle()},
                                             {"remove", p.photos + "/p1.png"}}) {
    test::RunOptions nobody;
    nobody.through = {"runuser", "-u", "nobody", "--"};
    auto r = test::run_cnclip(test::concat(args, p.idx_args()), nobody);
    EXPECT_EQ(r.exit_code, 1) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(p.catalog()), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_EQ(r.err.find("searches and"), std::string::npos) << args[0] << ": " << r.err;
    EXPECT_EQ(r.err.find("unable to open"), std::string::npos) << args[0] << ": " << r.err;
  }
  ASSERT_EQ(::chmod(p.catalog().c_str(), 0644), 0);
  // A folder it may pass through but not list (0711) is an index it can read, as before, with its
  // snapshot found by name and its size counted.
  ASSERT_EQ(::chmod(p.idx.c_str(), 0711), 0);
  test::RunOptions nobody;
  nobody.through = {"runuser", "-u", "nobody", "--"};
  auto r = test::run_cnclip(test::concat({"info", "--format", "json"}, p.idx_args()), nobody);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const json info = json::parse(r.out);
  EXPECT_EQ(info["files"], 4) << r.out;
  EXPECT_EQ(info["snapshot"]["type"], "flat") << r.out;
  EXPECT_GE(info["disk_bytes"].get<int64_t>(), static_cast<int64_t>(test::file_size(p.catalog()))) << r.out;
  // Its writers are refused as for any index this user may read but not write.
  r = test::run_cnclip(test::concat({"remove", p.photos + "/p1.png"}, p.idx_args()), nobody);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("the index is read-only"), std::string::npos) << r.err;
}

TEST(ReadOnlyIndex, CatalogWithAPendingWriteAheadLogIsReadWhole) {
  if (::geteuid() != 0) GTEST_SKIP() << "a read-only bind mount needs root";
  PhotoIndex p(12);
  // A writer commits and is still running (its commits are only in the -wal): copy the index as a
  // killed run would leave it, then mount the copy read-only.
  const std::string copy = p.dir / "copy";
  {
    auto s = IndexStore::open(p.idx, IndexAccess::kWrite);
    CatalogTransaction tx(s->catalog());
    s->catalog().remove_under(p.photos + "/p1.png");
    tx.commit();
    fs::create_directories(copy);
    for (const auto& e : fs::directory_iterator(p.idx))
      fs::copy_file(e.path(), copy + "/" + e.path().filename().string());
  }
  ASSERT_GT(test::file_size(copy + "/catalog.sqlite3-wal"), 0u);
  std::system(("chmod -R a+rX " + test::shell_quote(p.dir.path())).c_str());
  {
    auto ro = test::ScopedMount::read_only(copy);
    ASSERT_TRUE(ro.ok()) << ro.why();
    for (const auto& through : std::vector<std::vector<std::string>>{{}, {"runuser", "-u", "nobody", "--"}}) {
      if (!through.empty() && !user_exists("nobody")) continue;
      test::RunOptions as;
      as.through = through;
      const std::string who = through.empty() ? "root" : "nobody";
      auto r = test::run_cnclip({"info", "--format", "json", "--index", copy}, as);
      ASSERT_EQ(r.exit_code, 0) << who << r.err;
      EXPECT_EQ(json::parse(r.out)["files"], 11) << "the commit in the -wal is seen";
      r = test::run_cnclip(
          {"search-text", "小狗", "-k", "20", "--format", "paths", "--model", test::tiny_bundle(), "--index", copy},
          as);
      EXPECT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(test::lines(r.out).size(), 11u);
    }
  }
  // Without its -shm the log cannot be read on a read-only mount: a clear error, not a silent
  // older state.
  fs::remove(copy + "/catalog.sqlite3-shm");
  auto ro = test::ScopedMount::read_only(copy);
  ASSERT_TRUE(ro.ok()) << ro.why();
  auto r = test::run_cnclip({"info", "--format", "json", "--index", copy});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("-wal"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
}

}  // namespace
}  // namespace cnclip
