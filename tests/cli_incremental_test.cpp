// cnclip index run again over a library that changed: one behaviour per test, so that a failure
// names it (what is encoded again, remembered failures, pruning of deleted files, moves reusing
// their embeddings, the vector snapshot's generations, and searches answering from that snapshot).
#include <sqlite3.h>

#include <regex>

#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

// The catalog's row for `path` (the test fails when there is none).
FileRecord record_of(const std::string& idx, const std::string& path) {
  auto c = Catalog::open_read_only(idx + "/catalog.sqlite3");
  auto r = c->find(path);
  EXPECT_TRUE(r.has_value()) << path << " is not in the index";
  return r.value_or(FileRecord{});
}

std::vector<float> embedding_of(const std::string& idx, const std::string& path) {
  auto c = Catalog::open_read_only(idx + "/catalog.sqlite3");
  auto r = c->find(path);
  EXPECT_TRUE(r.has_value()) << path << " is not in the index";
  return r ? c->embedding(r->id) : std::vector<float>{};
}

// The vector snapshot files of an index folder (vectors-<generation>.faiss), by generation.
std::map<int64_t, std::string> snapshots(const std::string& idx) {
  std::map<int64_t, std::string> out;
  const std::regex name("vectors-([0-9]+)\\.faiss");
  for (const auto& e : fs::directory_iterator(idx)) {
    std::smatch m;
    const std::string file = e.path().filename().string();
    if (std::regex_match(file, m, name)) out[std::stoll(m[1])] = e.path().string();
  }
  return out;
}

int64_t generation(const std::string& idx) { return Catalog::open_read_only(idx + "/catalog.sqlite3")->generation(); }

TEST_F(Photos, FirstRunAddsEveryImageAndReportsTheBrokenOne) {
  auto s = index_photos();
  EXPECT_EQ(s["added"], 5);
  EXPECT_EQ(s["failed"], 1);  // broken.jpg, reported and skipped
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(test::indexed_paths(idx).size(), 5u);
}

TEST_F(Photos, AnUnchangedLibraryIsNotEncodedAgain) {
  index_photos();
  const auto before = embedding_of(idx, photos + "/家/小狗.jpeg");
  auto s = index_photos();
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(s["unchanged"], 5);
  EXPECT_EQ(embedding_of(idx, photos + "/家/小狗.jpeg"), before);
}

TEST_F(Photos, AFailureIsRememberedUntilRetriedOrChanged) {
  index_photos();
  auto s = index_photos();
  EXPECT_EQ(s["failed"], 0);  // broken.jpg is remembered, not decoded and reported again
  EXPECT_EQ(s["failed_before"], 1);
  s = index_photos({"--retry-failed"});
  EXPECT_EQ(s["failed"], 1);
  EXPECT_EQ(s["added"], 0);
  make_photo(photos + "/家/broken.jpg", 77);  // repaired: tried again because it changed
  s = index_photos();
  EXPECT_EQ(s["added"], 1);
  EXPECT_EQ(s["failed_before"], 0);
}

TEST_F(Photos, ChangedContentIsEncodedAgain) {
  index_photos();
  const std::string changed = photos + "/家/小狗.jpeg";
  const auto before = record_of(idx, changed);
  const auto old_embedding = embedding_of(idx, changed);
  make_photo(changed, 40);  // another picture: new size, mtime and content
  auto s = index_photos();
  EXPECT_EQ(s["updated"], 1);
  EXPECT_EQ(s["unchanged"], 4);
  EXPECT_EQ(record_of(idx, changed).id, before.id) << "updated in place";
  EXPECT_NE(record_of(idx, changed).content_hash, before.content_hash);
  EXPECT_NE(embedding_of(idx, changed), old_embedding);
}

// Pruning: a file deleted from disk leaves the index (catalog, vectors and results) on the next run.
TEST_F(Photos, ADeletedFileIsPruned) {
  index_photos();
  const std::string gone = photos + "/家/小狗.jpeg";
  fs::remove(gone);
  auto s = index_json(idx_args());  // no path: every folder indexed before
  EXPECT_EQ(s["removed"], 1);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(test::indexed_paths(idx).count(gone), 0u);
  EXPECT_EQ(test::indexed_paths(idx).size(), 4u);
  auto r = run({"search-text", "小狗", "-k", "10", "--format", "paths"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(test::lines(r.out).size(), 4u);
  for (const auto& p : test::lines(r.out)) EXPECT_NE(p, gone);
  auto info = test::run_cnclip({"info", "--format", "json", "--index", idx});
  EXPECT_EQ(json::parse(info.out)["vectors"], 4);
}

// A folder left empty is what an unmounted share leaves: its entries are kept (see
// store_trust_test.cpp) until the folder itself is gone.
TEST_F(Photos, AFolderLeftEmptyKeepsItsEntryUntilTheFolderIsGone) {
  index_photos();
  fs::remove(photos + "/2024 旅行/山/cat.jpg");
  auto s = index_json(idx_args());
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["missing"], 1);
  EXPECT_EQ(test::indexed_paths(idx).count(photos + "/2024 旅行/山/cat.jpg"), 1u);
  fs::remove(photos + "/2024 旅行/山");
  s = index_json(idx_args());
  EXPECT_EQ(s["removed"], 1);
  EXPECT_EQ(test::indexed_paths(idx).count(photos + "/2024 旅行/山/cat.jpg"), 0u);
}

// A moved file keeps its catalog entry and embedding (found by content hash): nothing is encoded.
TEST_F(Photos, AMovedFileKeepsItsEmbedding) {
  index_photos();
  const std::string from = photos + "/家/小狗.jpeg", to = photos + "/家/renamed 小狗.jpeg";
  const auto before = record_of(idx, from);
  const auto embedding = embedding_of(idx, from);
  fs::rename(from, to);
  auto s = index_photos();
  EXPECT_EQ(s["moved"], 1);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(s["updated"], 0);
  EXPECT_EQ(record_of(idx, to).id, before.id) << "the same entry, under its new name";
  EXPECT_EQ(embedding_of(idx, to), embedding) << "bit for bit: reused, not encoded again";
  EXPECT_EQ(test::indexed_paths(idx).count(from), 0u);
}

TEST_F(Photos, AMovedFolderKeepsItsFilesEmbeddings) {
  index_photos();
  const auto embedding = embedding_of(idx, photos + "/2024 旅行/海边/夕阳.png");
  fs::rename(photos + "/2024 旅行", photos + "/旅行 2024 (moved)");
  auto s = index_photos();
  EXPECT_EQ(s["moved"], 3);
  EXPECT_EQ(s["added"], 0);
  EXPECT_EQ(s["removed"], 0);
  EXPECT_EQ(embedding_of(idx, photos + "/旅行 2024 (moved)/海边/夕阳.png"), embedding);
  for (const auto& p : test::indexed_paths(idx)) EXPECT_EQ(p.find(photos + "/2024 旅行/"), std::string::npos) << p;
}

// Each run that changes the index writes the vector snapshot of its generation and deletes the
// older one; a run that changes nothing keeps the snapshot as it is.
TEST_F(Photos, EachChangeWritesANewSnapshotGenerationAndRemovesTheOld) {
  index_photos();
  auto first = snapshots(idx);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first.begin()->first, generation(idx)) << "named after the catalog generation it holds";

  index_photos();  // nothing changed
  EXPECT_EQ(snapshots(idx), first);

  make_photo(photos + "/家/new.jpg", 90);
  index_photos();
  const auto second = snapshots(idx);
  ASSERT_EQ(second.size(), 1u) << "the older generation is deleted";
  EXPECT_GT(second.begin()->first, first.begin()->first);
  EXPECT_EQ(second.begin()->first, generation(idx));
  EXPECT_FALSE(fs::exists(first.begin()->second));
}

// Swaps the embeddings of two catalog rows behind cnclip's back: the catalog's generation and
// change log stay as they were, so the snapshot and the catalog now answer differently and the
// results show which one a search read.
void swap_embeddings_in_catalog(const std::string& idx, int64_t a, int64_t b) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((idx + "/catalog.sqlite3").c_str(), &db), SQLITE_OK);
  auto blob = [&](int64_t id) {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "SELECT embedding FROM files WHERE id = ?", -1, &s, nullptr);
    sqlite3_bind_int64(s, 1, id);
    std::string out;
    if (sqlite3_step(s) == SQLITE_ROW) {
      out.assign(static_cast<const char*>(sqlite3_column_blob(s, 0)), static_cast<size_t>(sqlite3_column_bytes(s, 0)));
    }
    sqlite3_finalize(s);
    return out;
  };
  const std::string va = blob(a), vb = blob(b);
  ASSERT_FALSE(va.empty());
  ASSERT_EQ(va.size(), vb.size());
  for (auto [id, v] : {std::pair{a, &vb}, std::pair{b, &va}}) {
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(db, "UPDATE files SET embedding = ? WHERE id = ?", -1, &s, nullptr);
    sqlite3_bind_blob(s, 1, v->data(), static_cast<int>(v->size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 2, id);
    EXPECT_EQ(sqlite3_step(s), SQLITE_DONE) << sqlite3_errmsg(db);
    sqlite3_finalize(s);
  }
  // The change-log triggers recorded the updates for the next generation: forgotten.
  ASSERT_EQ(sqlite3_exec(db,
                         "DELETE FROM changes WHERE generation > "
                         "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation')",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
}

// A search reads the current snapshot, not the catalog's embeddings (which give the same results
// on an intact index, only slower): with the catalog's rows swapped behind its back, the image's
// own entry is still its best match; without the snapshot, the catalog answers and the swap shows.
TEST_F(Photos, SearchAnswersFromTheCurrentSnapshot) {
  index_photos();
  const std::string a = photos + "/2024 旅行/海边/夕阳.png", b = photos + "/家/小狗.jpeg";
  swap_embeddings_in_catalog(idx, record_of(idx, a).id, record_of(idx, b).id);
  // A copy outside the index: encoded for the query (an indexed image's stored embedding would be
  // read from the catalog, image_query.h).
  test::copy_file(a, dir / "query.png");
  const std::vector<std::string> query{"search-image", dir / "query.png", "-k", "1", "--format", "paths"};
  auto r = run(query);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, a + "\n") << "the search read the catalog, not the current snapshot";

  const auto snapshot = snapshots(idx);
  ASSERT_EQ(snapshot.size(), 1u);
  fs::remove(snapshot.begin()->second);
  r = run(query);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, b + "\n") << "the catalog's swapped rows should answer without a snapshot";
}

}  // namespace
}  // namespace cnclip
