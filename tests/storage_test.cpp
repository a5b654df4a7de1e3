// The storage layer: vector files (FAISS-compatible), the catalog, and the index directory's
// crash-safety rules, with faults injected into the derived snapshot.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIDMap.h>
#include <faiss/index_io.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "cnclip/index_store.h"
#include "test_util.h"

namespace cnclip {
namespace {

std::vector<float> random_unit_vectors(int n, int dim, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(n) * dim);
  for (int i = 0; i < n; ++i) {
    double norm = 0;
    for (int d = 0; d < dim; ++d) norm += std::pow(v[i * dim + d] = dist(rng), 2);
    for (int d = 0; d < dim; ++d) v[i * dim + d] = static_cast<float>(v[i * dim + d] / std::sqrt(norm));
  }
  return v;
}

TEST(VectorFile, IsAFaissIndexAndMapsBack) {
  test::TempDir dir;
  const int n = 300, dim = 24;
  auto v = random_unit_vectors(n, dim, 1);
  std::vector<int64_t> ids;
  {
    VectorFileWriter w(dir / "v.faiss", dim, n);
    for (int i = 0; i < n; ++i) {
      ids.push_back(1000 + 3 * i);
      w.add(ids.back(), &v[i * dim]);
    }
    w.commit();
  }
  std::unique_ptr<faiss::Index> faiss_index(faiss::read_index((dir / "v.faiss").c_str()));
  auto* idmap = dynamic_cast<faiss::IndexIDMap2*>(faiss_index.get());
  ASSERT_NE(idmap, nullptr);
  EXPECT_EQ(idmap->ntotal, n);
  EXPECT_EQ(idmap->metric_type, faiss::METRIC_INNER_PRODUCT);
  auto mapped = VectorIndex::open_file(dir / "v.faiss");
  EXPECT_EQ(mapped->size(), n);
  EXPECT_EQ(mapped->dim(), dim);
  // Same answers from FAISS's own index and from our mapping.
  const auto q = random_unit_vectors(3, dim, 2);
  std::vector<float> dist(3 * 5);
  std::vector<faiss::Index::idx_t> labels(3 * 5);
  idmap->search(3, q.data(), 5, dist.data(), labels.data());
  const auto hits = mapped->search(q.data(), 3, 5);
  for (int qi = 0; qi < 3; ++qi) {
    ASSERT_EQ(hits[qi].size(), 5u);
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(hits[qi][j].id, labels[qi * 5 + j]);
      EXPECT_NEAR(hits[qi][j].score, dist[qi * 5 + j], 1e-5);
    }
  }
}

TEST(VectorFile, FaissWrittenFileIsReadable) {
  test::TempDir dir;
  const int n = 50, dim = 8;
  auto v = random_unit_vectors(n, dim, 3);
  faiss::IndexFlatIP flat(dim);
  faiss::IndexIDMap2 idmap(&flat);
  std::vector<faiss::Index::idx_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = 7 * i + 1;
  idmap.add_with_ids(n, v.data(), ids.data());
  faiss::write_index(&idmap, (dir / "f.faiss").c_str());
  EXPECT_THROW(VectorIndex::open_file(dir / "f.faiss"), Exception) << "no checksum";
  auto mapped = VectorIndex::open_file(dir / "f.faiss", /*require_checksum=*/false);
  ASSERT_EQ(mapped->size(), n);
  for (int i = 0; i < n; ++i) EXPECT_EQ(mapped->ids()[i], ids[i]);
}

TEST(VectorFile, DamagedFilesAreRejected) {
  test::TempDir dir;
  auto v = random_unit_vectors(10, 4, 4);
  {
    VectorFileWriter w(dir / "v.faiss", 4, 10);
    for (int i = 0; i < 10; ++i) w.add(i, &v[i * 4]);
    w.commit();
  }
  const std::string good = test::read_text(dir / "v.faiss");
  test::write_text(dir / "cut.faiss", good.substr(0, good.size() - 9));
  EXPECT_THROW(VectorIndex::open_file(dir / "cut.faiss"), Exception);
  test::write_text(dir / "junk.faiss", std::string(200, 'j'));
  EXPECT_THROW(VectorIndex::open_file(dir / "junk.faiss"), Exception);
}

TEST(VectorIndex, TopKMatchesBruteForceAndFilters) {
  const int n = 500, dim = 16;
  auto v = random_unit_vectors(n, dim, 5);
  std::vector<int64_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = i + 1;
  auto index = VectorIndex::from_vectors(dim, ids, v);
  const auto q = random_unit_vectors(1, dim, 6);
  std::vector<std::pair<float, int64_t>> all;
  for (int i = 0; i < n; ++i) {
    float s = 0;
    for (int d = 0; d < dim; ++d) s += q[d] * v[i * dim + d];
    all.push_back({s, ids[i]});
  }
  std::sort(all.rbegin(), all.rend());
  auto hits = index->search(q.data(), 1, 10)[0];
  ASSERT_EQ(hits.size(), 10u);
  for (int j = 0; j < 10; ++j) EXPECT_EQ(hits[j].id, all[j].second);
  auto even = index->search(q.data(), 1, 10, [](int64_t id) { return id % 2 == 0; })[0];
  ASSERT_EQ(even.size(), 10u);
  for (const auto& h : even) EXPECT_EQ(h.id % 2, 0);
  EXPECT_EQ(index->search(q.data(), 1, 1000)[0].size(), static_cast<size_t>(n));
}

class Store : public ::testing::Test {
 protected:
  test::TempDir dir;
  BundleManifest bundle;
  void SetUp() override {
    bundle.fingerprint = "fp-a";
    bundle.architecture = "tiny";
    bundle.precision = "fp32";
    bundle.source_id = "checkpoint:abc";
    bundle.embedding_dim = 4;
  }
  void add(IndexStore& s, const std::string& path, float x) {
    CatalogTransaction tx(s.catalog());
    s.record_model(bundle);
    float e[4] = {x, 1 - x, 0, 0};
    s.catalog().insert(FileRecord{0, path, 1, 1, "h" + path, 0}, e, 4);
    tx.commit();
  }
};

TEST_F(Store, SnapshotFollowsTheCatalog) {
  auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
  add(*s, "/p/a.jpg", 1);
  s->write_snapshot();
  const std::string snap = s->snapshot_path();
  EXPECT_TRUE(std::filesystem::exists(snap));
  EXPECT_EQ(s->load_vectors()->size(), 1);
  // A commit after the snapshot (as a crash before the next snapshot leaves it): the stale snapshot
  // is not used, the catalog is.
  add(*s, "/p/b.jpg", 0);
  EXPECT_NE(s->snapshot_path(), snap);
  EXPECT_EQ(s->load_vectors()->size(), 2);
  s->write_snapshot();
  EXPECT_FALSE(std::filesystem::exists(snap)) << "old snapshot left behind";
}

TEST_F(Store, DamagedSnapshotFallsBackToTheCatalog) {
  auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
  add(*s, "/p/a.jpg", 1);
  add(*s, "/p/b.jpg", 0);
  s->write_snapshot();
  const std::string snap = s->snapshot_path();
  const std::string good = test::read_text(snap);
  for (size_t cut : {size_t{0}, size_t{10}, good.size() / 2, good.size() - 1}) {
    test::write_text(snap, good.substr(0, cut));
    auto v = s->load_vectors();
    EXPECT_EQ(v->size(), 2) << "cut at " << cut;
  }
  std::string flipped = good;
  flipped[0] = 'X';
  test::write_text(snap, flipped);
  EXPECT_EQ(s->load_vectors()->size(), 2);
}

TEST_F(Store, RolledBackBatchLeavesNoTrace) {
  auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
  add(*s, "/p/a.jpg", 1);
  const int64_t gen = s->catalog().generation();
  {
    CatalogTransaction tx(s->catalog());
    float e[4] = {0, 0, 1, 0};
    s->catalog().insert(FileRecord{0, "/p/c.jpg", 1, 1, "hc", 0}, e, 4);
    // no commit: as if the process died here
  }
  EXPECT_EQ(s->catalog().count(), 1);
  EXPECT_EQ(s->catalog().generation(), gen);
}

TEST_F(Store, OneWriterAtATime) {
  auto writer = IndexStore::open(dir.path(), IndexAccess::kWrite);
  try {
    IndexStore::open(dir.path(), IndexAccess::kWrite);
    FAIL() << "second writer admitted";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kBusy);
    EXPECT_NE(std::string(e.what()).find("another cnclip"), std::string::npos);
  }
  add(*writer, "/p/a.jpg", 1);
  auto reader = IndexStore::open(dir.path(), IndexAccess::kRead);  // readers are never blocked
  EXPECT_EQ(reader->catalog().count(), 1);
}

TEST_F(Store, ModelMismatchIsNamed) {
  auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
  add(*s, "/p/a.jpg", 1);
  BundleManifest reexported = bundle;  // the same checkpoint through another exporter version
  reexported.fingerprint = "fp-b";
  EXPECT_TRUE(s->model_matches(bundle));
  EXPECT_TRUE(s->model_matches(reexported));
  BundleManifest other = reexported;
  other.source_id = "checkpoint:another";
  EXPECT_FALSE(s->model_matches(other));
  try {
    s->require_model(other);
    FAIL();
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kMismatch);
    EXPECT_NE(std::string(e.what()).find("--reindex"), std::string::npos);
  }
}

TEST_F(Store, ReadingAMissingIndexIsAClearError) {
  try {
    IndexStore::open(dir / "nothing", IndexAccess::kRead);
    FAIL();
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kNotFound);
    EXPECT_NE(std::string(e.what()).find("cnclip index"), std::string::npos);
  }
}

TEST_F(Store, PrefixQueriesDoNotLeakIntoSiblings) {
  auto s = IndexStore::open(dir.path(), IndexAccess::kWrite);
  add(*s, "/p/a/1.jpg", 1);
  add(*s, "/p/a b/2.jpg", 1);
  add(*s, "/p/ab/3.jpg", 1);
  EXPECT_EQ(s->catalog().files_under("/p/a").size(), 1u);
  CatalogTransaction tx(s->catalog());
  EXPECT_EQ(s->catalog().remove_under("/p/a"), 1);
  tx.commit();
  EXPECT_EQ(s->catalog().count(), 2);
}

}  // namespace
}  // namespace cnclip
