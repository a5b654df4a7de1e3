// Issue 15, points 1-3: snapshot types (flat, compact flat, approximate FAISS types), their recall
// against flat, switching types, damage to a snapshot of each type, and the per-generation delta a
// search uses while an index run commits. Also the measurement behind `scripts/bench.sh --scale N`
// (ScaleBench.DISABLED_*, run by that script, not by ctest).
#include <faiss/IVFlib.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cnclip/index_store.h"
#include "cnclip/info.h"
#include "cnclip/npy.h"
#include "cnclip/runtime.h"
#include "cnclip/search.h"
#include "damage_util.h"
#include "sq_scan.h"
#include "test_util.h"

namespace cnclip {
namespace {

// Clustered unit vectors, as photo embeddings are (many photos of a few scenes), unlike uniformly
// random ones, on which no index structure can help: `clusters` random centres, each vector at a
// cosine of 0.55 to 0.9 from its centre.
std::vector<float> clustered_vectors(int64_t n, int dim, int clusters, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> spread(0.55f, 0.9f);
  auto unit = [&](float* v) {
    double norm = 0;
    for (int d = 0; d < dim; ++d) norm += double(v[d]) * v[d];
    for (int d = 0; d < dim; ++d) v[d] = static_cast<float>(v[d] / std::sqrt(norm));
  };
  std::vector<float> centres(static_cast<size_t>(clusters) * dim);
  for (auto& x : centres) x = normal(rng);
  for (int c = 0; c < clusters; ++c) unit(&centres[static_cast<size_t>(c) * dim]);
  std::vector<float> out(static_cast<size_t>(n) * dim);
  std::vector<float> noise(static_cast<size_t>(dim));
  for (int64_t i = 0; i < n; ++i) {
    const float* c = &centres[static_cast<size_t>(rng() % clusters) * dim];
    for (auto& x : noise) x = normal(rng);
    unit(noise.data());
    const float cosine = spread(rng), r = std::sqrt(1 / (cosine * cosine) - 1);
    float* v = &out[static_cast<size_t>(i) * dim];
    for (int d = 0; d < dim; ++d) v[d] = c[d] + r * noise[d];
    unit(v);
  }
  return out;
}

// Queries near indexed vectors: half at a cosine of 0.8 from one, half at 0.5.
std::vector<float> queries_near(const std::vector<float>& base, int dim, int count, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  const size_t n = base.size() / dim;
  std::vector<float> out(static_cast<size_t>(count) * dim);
  for (int q = 0; q < count; ++q) {
    const float* x = &base[(rng() % n) * dim];
    float* o = &out[static_cast<size_t>(q) * dim];
    double norm = 0;
    for (int d = 0; d < dim; ++d) norm += std::pow(o[d] = normal(rng), 2);
    const double cosine = q % 2 ? 0.5 : 0.8, r = std::sqrt(1 / (cosine * cosine) - 1);
    double total = 0;
    for (int d = 0; d < dim; ++d) total += std::pow(o[d] = static_cast<float>(x[d] + r * o[d] / std::sqrt(norm)), 2);
    for (int d = 0; d < dim; ++d) o[d] = static_cast<float>(o[d] / std::sqrt(total));
  }
  return out;
}

// FAISS's OpenMP regions on a machine shared with other test runs (load 10+ on 2 cores) cost
// milliseconds each when a thread waits for a core: these tests run thousands of single-query
// searches on small indexes, so one thread (33x faster here). The bench measures with the default.
struct OneThread {
  OneThread() { omp_set_num_threads(1); }
};

std::string path_of(int64_t i) { return "/photos/" + std::to_string(i) + ".jpg"; }

// An index holding `vectors` (ids 1..n), as `import` fills one.
void fill_index(IndexStore& store, const std::vector<float>& vectors, int dim) {
  CatalogTransaction tx(store.catalog());
  store.catalog().set_meta("embedding_dim", std::to_string(dim));
  const int64_t n = static_cast<int64_t>(vectors.size()) / dim;
  for (int64_t i = 0; i < n; ++i) {
    store.catalog().insert(FileRecord{0, path_of(i + 1), 1, 0, "h" + std::to_string(i), 0},
                           &vectors[static_cast<size_t>(i) * dim], dim);
  }
  tx.commit();
}

// `vectors` as build_snapshot reads them, with ids 1..n (as fill_index stores them).
VectorSource ids_from_1(const std::vector<float>& vectors, int dim) {
  return [&vectors, dim](const std::function<void(int64_t, const float*)>& add) {
    const auto n = static_cast<int64_t>(vectors.size()) / dim;
    for (int64_t i = 0; i < n; ++i) add(i + 1, &vectors[static_cast<size_t>(i) * dim]);
  };
}

// The exact top k of each query over the catalog's current embeddings, by (score, id).
// Best first, a tie to the lower id (the order a search returns).
void sort_by_score(std::vector<SearchHit>& hits) {
  std::sort(hits.begin(), hits.end(), [](const SearchHit& a, const SearchHit& b) {
    return a.score != b.score ? a.score > b.score : a.id < b.id;
  });
}

std::vector<std::vector<SearchHit>> brute_force(Catalog& catalog, int dim, const std::vector<float>& queries, int k) {
  const int nq = static_cast<int>(queries.size()) / dim;
  std::vector<std::vector<SearchHit>> out(static_cast<size_t>(nq));
  catalog.for_each_embedding(dim, [&](int64_t id, const float* v) {
    for (int q = 0; q < nq; ++q) {
      double s = 0;
      for (int d = 0; d < dim; ++d) s += double(queries[static_cast<size_t>(q) * dim + d]) * v[d];
      out[q].push_back(SearchHit{id, static_cast<float>(s)});
    }
  });
  for (auto& hits : out) {
    sort_by_score(hits);
    if (hits.size() > static_cast<size_t>(k)) hits.resize(static_cast<size_t>(k));
  }
  return out;
}

std::vector<std::vector<RankedHit>> search_all(Searcher& searcher, const std::vector<float>& queries, int dim, int k) {
  const int nq = static_cast<int>(queries.size()) / dim;
  SearchOptions o;
  o.top_k = k;
  std::vector<std::vector<RankedHit>> out;
  for (int q = 0; q < nq; ++q) {
    std::vector<float> one(queries.begin() + static_cast<ptrdiff_t>(q) * dim,
                           queries.begin() + static_cast<ptrdiff_t>(q + 1) * dim);
    out.push_back(searcher.search({"q"}, one, o)[0].hits);
  }
  return out;
}

// Share of the exact top k found in `got`.
double recall(const std::vector<std::vector<SearchHit>>& truth, const std::vector<std::vector<RankedHit>>& got) {
  int64_t found = 0, total = 0;
  for (size_t q = 0; q < truth.size(); ++q) {
    std::set<int64_t> ids;
    for (const auto& h : got[q]) ids.insert(h.id);
    for (const auto& h : truth[q]) found += ids.count(h.id), ++total;
  }
  return total ? double(found) / double(total) : 1;
}

struct WarningCapture {
  std::vector<std::string> lines;
  WarningCapture() {
    set_index_warning_handler([this](const std::string& m) { lines.push_back(m); });
  }
  ~WarningCapture() {
    set_index_warning_handler([](const std::string& m) { std::fprintf(stderr, "cnclip: warning: %s\n", m.c_str()); });
  }
};

TEST(VectorSpecs, ResolveParseAndNames) {
  EXPECT_EQ(VectorSpec{}.resolve(10'000'000), "flat");
  VectorSpec a = VectorSpec::parse("auto", 512);
  EXPECT_EQ(a.resolve(VectorSpec::kAutoApproximateAbove), "flat");
  EXPECT_EQ(a.resolve(1'000'000), "IVF1024,SQ8");
  EXPECT_EQ(a.resolve(10'000'000), "IVF4096,SQ8");
  EXPECT_EQ(VectorSpec::parse("IVF,PQ16", 64).resolve(20'000), "IVF128,PQ16");
  EXPECT_EQ(VectorSpec::parse("HNSW32", 64).resolve(5), "HNSW32");
  EXPECT_EQ(canonical_vector_type("SQfp16", 64), "flat-fp16");
  EXPECT_EQ(canonical_vector_type("flat-sq8", 64), "flat-sq8");
  EXPECT_EQ(canonical_vector_type("IVF256,SQ8", 64), "IVF256,SQ8");
  // The coarse quantizer is part of the name (`cnclip info` once said IVF8,SQ8 here).
  EXPECT_EQ(canonical_vector_type("IVF8_HNSW4,SQ8", 64), "IVF8_HNSW4,SQ8");
  EXPECT_EQ(canonical_vector_type("HNSW32,SQ8", 64), "HNSW32,SQ8");
  EXPECT_EQ(ivf_nlist(100), 16);
  EXPECT_EQ(ivf_nlist(1'000'000), 1024);
  // PQ7: 64 is not a multiple of 7. The rest FAISS's factory accepts: IVF0 and HNSW0 crashed the
  // first write (and every later one, the type being stored), IDMap failed each, IVF1000000000
  // allocated 24 GB of empty lists.
  // FAISS factory strings from its own recipes stay accepted.
  for (const char* good : {"IVF4096,PQ64x4fs", "OPQ16_64,IVF256,PQ16", "IVF1024_HNSW32,SQ8", "SQfp16", "PCA64,Flat",
                           "RR64,Flat", "HNSW32,PQ16", "PQ16x4fs", "PQ16np", "HNSW2", "PQ8x16", "IVF1048576,SQ8"}) {
    EXPECT_NO_THROW(VectorSpec::parse(good, 64)) << good;
  }
  for (const char* bad : {"", "IVF", "nonsense", "IVF10,PQ7", "IVF0,SQ8", "HNSW0", "IVF16_HNSW0,SQ8", "PQ0",
                          "IDMap,Flat", "IVF99999999,SQ8", "IVF1000000000,SQ8", "HNSW100000", "HNSW1",
                          "IVF16_HNSW1,Flat", "PCA8,IDMap,Flat", "PQ1x24", "NSG32", "IVF16,SQ8,RFlat", "PCA128,Flat"}) {
    try {
      VectorSpec::parse(bad, 64);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("--vectors"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("IVF1024"), std::string::npos) << "the string as given: " << e.what();
    }
  }
}

// A lone query over a large flat index (with a selector: a filter, the rows a delta masks; or without)
// and over a scalar-quantized one is scanned by every compute thread, each a range of rows: the
// answer is the one-thread answer, ids, order and scores, for any k (also beyond one range's rows).
TEST(ScaleTypes, ALoneQueryScannedOnEveryThreadAnswersAsOnOne) {
  constexpr int kDim = 16;
  constexpr int64_t kN = 150'000;  // over vector_index.cpp's kParallelScanRows (65,536)
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 300, 5);
  const auto queries = queries_near(vectors, kDim, 4, 6);
  std::vector<int64_t> ids(kN);
  for (int64_t i = 0; i < kN; ++i) ids[static_cast<size_t>(i)] = 3 * i + 7;
  std::vector<std::unique_ptr<VectorIndex>> indexes;
  indexes.push_back(VectorIndex::from_vectors(kDim, ids, vectors));
  for (const char* type : {"flat-fp16", "flat-sq8"}) {
    const std::string path = dir / (std::string(type) + ".faiss");
    build_snapshot(path, type, kDim, kN, [&](const std::function<void(int64_t, const float*)>& add) {
      for (int64_t i = 0; i < kN; ++i) add(ids[static_cast<size_t>(i)], &vectors[static_cast<size_t>(i) * kDim]);
    });
    indexes.push_back(VectorIndex::open_file(path));
  }
  const std::function<bool(int64_t)> everything, some = [](int64_t id) { return id % 5 != 2; };
  for (const auto& index : indexes) {
    for (const auto* allowed : {&everything, &some}) {
      for (int k : {1, 10, 100, 80'000}) {
        SCOPED_TRACE(index->type() + (*allowed ? " filtered" : "") + " k=" + std::to_string(k));
        omp_set_num_threads(1);
        const auto one = index->search(queries.data(), 1, k, *allowed);
        omp_set_num_threads(2);
        const auto split = index->search(queries.data(), 1, k, *allowed);
        ASSERT_EQ(one.size(), 1u);
        ASSERT_EQ(split.size(), 1u);
        ASSERT_EQ(one[0].size(), split[0].size());
        EXPECT_EQ(one[0].size(), static_cast<size_t>(std::min<int64_t>(k, *allowed ? kN - kN / 5 : kN)));
        // Equal scores (quantized codes make ties) may come in either order, and at the cut either
        // tied row: the same scores, and the same ids above the last score.
        auto a = one[0], b = split[0];
        sort_by_score(a);
        sort_by_score(b);
        for (size_t j = 0; j < a.size(); ++j) {
          ASSERT_EQ(a[j].score, b[j].score) << j;
          if (a[j].score > a.back().score) {
            ASSERT_EQ(a[j].id, b[j].id) << j;
          }
        }
      }
    }
  }
  omp_set_num_threads(omp_get_num_procs());
}

// cnclip's scan of scalar-quantized codes (sq_scan.h) answers as FAISS's own scan of the same index:
// the same rows (but for rows tied at the k-th score within rounding), scores within 1e-5, for each
// layout it scans (8-bit codes in an IVF over residuals or not, with per-dimension or uniform ranges,
// flat; fp16 codes flat and in an IVF), with and without a row selector, for one query (its lists or
// rows shared out across threads) and for many (queries across threads); and bit for bit the same
// on 1 and 2 threads. 108 dimensions: the AVX2 loops' 32-wide steps, an 8-wide one, then their
// scalar tails.
// CTest runs it again with CNCLIP_SQ_SCAN=scalar (the loop of a CPU without AVX2; fp16 is then FAISS's).
TEST(SqScan, AnswersAsFaissOnEveryLayoutItScans) {
  constexpr int kDim = 108, kNq = 24, kK = 42;
  constexpr int64_t kN = 70'000;  // a flat index's rows are shared out past 65,536
  const auto vectors = clustered_vectors(kN, kDim, 200, 11);
  const auto queries = queries_near(vectors, kDim, kNq, 12);
  std::vector<std::pair<std::string, std::unique_ptr<faiss::Index>>> layouts;
  layouts.emplace_back(
      "IVF64,SQ8", std::unique_ptr<faiss::Index>(faiss::index_factory(kDim, "IVF64,SQ8", faiss::METRIC_INNER_PRODUCT)));
  auto ivf = [&](faiss::ScalarQuantizer::QuantizerType qt, bool residual) {
    auto* coarse = new faiss::IndexFlatIP(kDim);
    auto index =
        std::make_unique<faiss::IndexIVFScalarQuantizer>(coarse, kDim, 64, qt, faiss::METRIC_INNER_PRODUCT, residual);
    index->own_fields = true;
    return index;
  };
  layouts.emplace_back("IVF64 direct SQ8", ivf(faiss::ScalarQuantizer::QT_8bit, false));
  layouts.emplace_back("IVF64 SQ8_uniform", ivf(faiss::ScalarQuantizer::QT_8bit_uniform, true));
  layouts.emplace_back("SQ8", std::make_unique<faiss::IndexScalarQuantizer>(kDim, faiss::ScalarQuantizer::QT_8bit,
                                                                            faiss::METRIC_INNER_PRODUCT));
  layouts.emplace_back("SQ8_uniform", std::make_unique<faiss::IndexScalarQuantizer>(
                                          kDim, faiss::ScalarQuantizer::QT_8bit_uniform, faiss::METRIC_INNER_PRODUCT));
  layouts.emplace_back("SQfp16", std::make_unique<faiss::IndexScalarQuantizer>(kDim, faiss::ScalarQuantizer::QT_fp16,
                                                                               faiss::METRIC_INNER_PRODUCT));
  layouts.emplace_back("IVF64 SQfp16", ivf(faiss::ScalarQuantizer::QT_fp16, true));
  std::vector<uint8_t> bits(static_cast<size_t>((kN + 7) / 8), 0xff);
  for (int64_t i = 0; i < kN; i += 3) bits[static_cast<size_t>(i >> 3)] &= static_cast<uint8_t>(~(1u << (i & 7)));
  const faiss::IDSelectorBitmap every_third_dropped(bits.size(), bits.data());
  for (auto& [name, index] : layouts) {
    index->train(kN / 4, vectors.data());
    index->add(kN, vectors.data());
    const bool fp16 = name.find("fp16") != std::string::npos;
    if (fp16 && std::string(sq_scan_isa()) != "avx2") {
      ASSERT_FALSE(sq_scan_serves(index.get())) << name << ": fp16 codes are scanned with AVX2 only";
      continue;
    }
    ASSERT_TRUE(sq_scan_serves(index.get())) << name;
    auto* as_ivf = dynamic_cast<faiss::IndexIVF*>(index.get());
    for (const faiss::IDSelector* sel : {static_cast<const faiss::IDSelector*>(nullptr),
                                         static_cast<const faiss::IDSelector*>(&every_third_dropped)}) {
      for (int nq : {1, kNq}) {
        for (int64_t nprobe : as_ivf ? std::vector<int64_t>{1, 5, 64} : std::vector<int64_t>{0}) {
          SCOPED_TRACE(name + (sel ? " selected" : "") + " nq=" + std::to_string(nq) +
                       " nprobe=" + std::to_string(nprobe));
          const size_t out = static_cast<size_t>(nq) * kK;
          std::vector<float> want_scores(out);
          std::vector<faiss::Index::idx_t> want_rows(out);
          faiss::SearchParametersIVF ivf_params;
          ivf_params.nprobe = static_cast<size_t>(nprobe);
          faiss::SearchParameters flat_params;
          faiss::SearchParameters* params = as_ivf ? &ivf_params : &flat_params;
          params->sel = const_cast<faiss::IDSelector*>(sel);
          index->search(nq, queries.data(), kK, want_scores.data(), want_rows.data(), params);
          std::vector<float> scores(out), scores_one(out);
          std::vector<int64_t> rows(out), rows_one(out);
          omp_set_num_threads(2);
          sq_search(*index, nq, queries.data(), kK, nprobe, sel, scores.data(), rows.data());
          omp_set_num_threads(1);
          sq_search(*index, nq, queries.data(), kK, nprobe, sel, scores_one.data(), rows_one.data());
          ASSERT_EQ(rows, rows_one);
          ASSERT_EQ(0, std::memcmp(scores.data(), scores_one.data(), out * sizeof(float)));
          for (int q = 0; q < nq; ++q) {
            const size_t at = static_cast<size_t>(q) * kK;
            int found = 0;
            for (int j = 0; j < kK; ++j) {
              ASSERT_EQ(rows[at + j] < 0, want_rows[at + j] < 0) << "query " << q << " rank " << j;
              if (rows[at + j] < 0) continue;
              ++found;
              if (sel) {
                ASSERT_NE(rows[at + j] % 3, 0) << "a row the selector drops";
              }
              EXPECT_NEAR(scores[at + j], want_scores[at + j], 1e-5) << "query " << q << " rank " << j;
              if (j > 0) {
                ASSERT_GE(scores[at + j - 1], scores[at + j]);
              }
            }
            ASSERT_GT(found, 0);
            const float last = scores[at + found - 1];
            const std::set<int64_t> mine(rows.begin() + static_cast<ptrdiff_t>(at),
                                         rows.begin() + static_cast<ptrdiff_t>(at + found));
            for (int j = 0; j < found; ++j) {
              if (want_scores[at + j] > last + 1e-5f) {
                EXPECT_TRUE(mine.count(want_rows[at + j])) << "query " << q << ": FAISS's row " << want_rows[at + j];
              }
            }
          }
        }
      }
    }
    // A range search: every row above the radius, as FAISS's IVF range search over every list finds
    // them (FAISS 1.7.3 has none for flat codes: there, as the top-k scan over every row finds them).
    for (const faiss::IDSelector* sel : {static_cast<const faiss::IDSelector*>(nullptr),
                                         static_cast<const faiss::IDSelector*>(&every_third_dropped)}) {
      for (int kRangeNq : {1, 5}) {  // one query shared out across threads; queries across threads
        SCOPED_TRACE(name + " range search" + (sel ? " selected" : "") + " nq=" + std::to_string(kRangeNq));
        constexpr float kRadius = 0.45f;
        faiss::RangeSearchResult got(kRangeNq);
        omp_set_num_threads(2);
        sq_range_search(*index, kRangeNq, queries.data(), kRadius, sel, &got);
        std::vector<float> all_scores(static_cast<size_t>(kRangeNq) * kN);
        std::vector<int64_t> all_rows(all_scores.size());
        std::vector<std::map<int64_t, float>> want(static_cast<size_t>(kRangeNq));
        if (as_ivf) {
          faiss::RangeSearchResult faiss_result(kRangeNq);
          faiss::SearchParametersIVF params;
          params.nprobe = as_ivf->nlist;
          params.sel = const_cast<faiss::IDSelector*>(sel);
          index->range_search(kRangeNq, queries.data(), kRadius, &faiss_result, &params);
          for (int q = 0; q < kRangeNq; ++q) {
            for (size_t j = faiss_result.lims[q]; j < faiss_result.lims[q + 1]; ++j)
              want[q][faiss_result.labels[j]] = faiss_result.distances[j];
          }
        } else {
          sq_search(*index, kRangeNq, queries.data(), kN, 0, sel, all_scores.data(), all_rows.data());
          for (int q = 0; q < kRangeNq; ++q) {
            for (int64_t j = 0; j < kN; ++j) {
              const size_t at = static_cast<size_t>(q) * kN + static_cast<size_t>(j);
              if (all_rows[at] >= 0 && all_scores[at] > kRadius) want[q][all_rows[at]] = all_scores[at];
            }
          }
        }
        size_t total = 0;
        for (int q = 0; q < kRangeNq; ++q) {
          std::map<int64_t, float> mine;
          for (size_t j = got.lims[q]; j < got.lims[q + 1]; ++j) {
            ASSERT_GT(got.distances[j], kRadius);
            ASSERT_TRUE(mine.emplace(got.labels[j], got.distances[j]).second) << "row twice: " << got.labels[j];
          }
          total += mine.size();
          for (const auto& [row, score] : mine) {
            if (sel) {
              ASSERT_NE(row % 3, 0) << "a row the selector drops";
            }
            if (score > kRadius + 1e-5f) {
              ASSERT_TRUE(want[q].count(row)) << "query " << q << ": row " << row << " only here";
              EXPECT_NEAR(score, want[q][row], 1e-5);
            }
          }
          for (const auto& [row, score] : want[q]) {
            if (score > kRadius + 1e-5f) {
              EXPECT_TRUE(mine.count(row)) << "query " << q << ": row " << row << " missed";
            }
          }
        }
        EXPECT_GT(total, 20u * kRangeNq) << "the radius should find rows";
      }
    }
    // A damaged query is refused, not ranked.
    std::vector<float> damaged(queries.begin(), queries.begin() + kDim);
    damaged[7] = std::nanf("");
    std::vector<float> s(kK);
    std::vector<int64_t> r(kK);
    try {
      sq_search(*index, 1, damaged.data(), kK, 4, nullptr, s.data(), r.data());
      ADD_FAILURE() << name << ": a NaN query was searched";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << name;
    }
  }
  omp_set_num_threads(omp_get_num_procs());
}

// Every type reaches the recall floor (recall@10 >= 0.95 against flat) on a generated clustered
// set with queries that are not indexed vectors, and every score returned is the exact cosine.
TEST(ScaleTypes, RecallFloorAndExactScoresOnAGeneratedSet) {
  OneThread one_thread;
  constexpr int kDim = 64, kN = 20000, kQ = 100;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 200, 1);
  const auto queries = queries_near(vectors, kDim, kQ, 2);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  const auto truth = brute_force(store->catalog(), kDim, queries, 10);
  for (const char* type :
       {"flat", "flat-fp16", "flat-sq8", "ivf", "HNSW32", "HNSW32,SQ8", "IVF,PQ16", "PCA64,IVF,SQ8"}) {
    SCOPED_TRACE(type);
    const auto start = std::chrono::steady_clock::now();
    store->set_vector_spec(VectorSpec::parse(type, kDim));
    store->write_snapshot();
    const auto built = std::chrono::steady_clock::now();
    auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
    auto loaded = reader->search_vectors();
    EXPECT_EQ(loaded->type(), canonical_vector_type(VectorSpec::parse(type, kDim).resolve(kN), kDim));
    EXPECT_EQ(loaded->size(), kN);
    EXPECT_EQ(loaded->exact(), std::string(type) == "flat");
    Searcher searcher(*reader);
    const auto got = search_all(searcher, queries, kDim, 10);
    const double r = recall(truth, got);
    std::printf("%-10s recall@10 %.3f  built in %.1f s, searched in %.1f s  %s\n", type, r,
                std::chrono::duration<double>(built - start).count(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - built).count(),
                store->snapshot_report().c_str());
    EXPECT_GE(r, 0.95);
    if (std::string(type) == "flat") {
      EXPECT_EQ(r, 1.0);
    }
    for (size_t q = 0; q < got.size(); ++q) {
      for (const auto& h : got[q]) {  // the exact cosine, whatever the type
        const auto v = reader->catalog().embedding(h.id);
        double s = 0;
        for (int d = 0; d < kDim; ++d) s += double(queries[q * kDim + d]) * v[d];
        ASSERT_NEAR(h.score, s, 1e-5) << "id " << h.id;
      }
    }
  }
}

// auto's test of whether IVF pays off (VectorSpec::kAutoMaxProbeShare): on vectors with no structure
// (uniform on the sphere) an IVF reaches recall@10 0.95 only by probing most of its lists, so with a
// limit on the share it writes nothing and says why; on clustered vectors it is written, tuned within
// the limit. Without a limit (an IVF asked for by name) it is written whatever it needs.
TEST(ScaleTypes, IvfThatNeedsMostOfItsListsIsNotWrittenUnderALimit) {
  OneThread one_thread;
  constexpr int kDim = 64, kN = 20000;
  test::TempDir dir;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> gaussian(static_cast<size_t>(kN) * kDim);
  for (auto& x : gaussian) x = normal(rng);
  const auto uniform = test::normalized_rows(std::move(gaussian), kDim);
  const auto clustered = clustered_vectors(kN, kDim, 16, 1);
  auto build = [&](const std::vector<float>& vectors, const std::string& path, double share, std::string* report) {
    return build_snapshot(path, "IVF128,SQ8", kDim, kN, ids_from_1(vectors, kDim), report, share);
  };
  std::string report;
  EXPECT_EQ(build(uniform, dir / "u.faiss", VectorSpec::kAutoMaxProbeShare, &report), SnapshotBuild::kNotFaster);
  EXPECT_FALSE(std::filesystem::exists(dir / "u.faiss"));
  EXPECT_NE(report.find("no faster than flat"), std::string::npos) << report;
  EXPECT_EQ(build(uniform, dir / "u2.faiss", 1.0, &report), SnapshotBuild::kWritten);
  EXPECT_EQ(VectorIndex::open_file(dir / "u2.faiss")->size(), kN);
  const auto nprobe = [](const std::string& r) { return std::atoll(r.substr(r.find("nprobe ") + 7).c_str()); };
  EXPECT_GT(nprobe(report), 128 * VectorSpec::kAutoMaxProbeShare) << report;
  std::printf("uniform: %s\n", report.c_str());
  EXPECT_EQ(build(clustered, dir / "c.faiss", VectorSpec::kAutoMaxProbeShare, &report), SnapshotBuild::kWritten)
      << report;
  EXPECT_LE(nprobe(report), 128 * VectorSpec::kAutoMaxProbeShare) << report;
  std::printf("clustered: %s\n", report.c_str());
  EXPECT_EQ(VectorIndex::open_file(dir / "c.faiss")->size(), kN);
}

// What auto remembers of such a finding (catalog meta, flat until the index doubles) survives the
// same spec given again, as every `index --vectors auto PATH` does, and goes with another spec or
// when a snapshot rebuild asks again. The meta's earlier name (before it served every type) is read.
TEST(ScaleTypes, AutosFindingIsKeptUntilAskedAgain) {
  test::TempDir dir;
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  const auto until = [&] { return store->catalog().meta("vectors_flat_until").value_or("unset"); };
  store->set_vector_spec(VectorSpec::parse("auto", 8));
  store->catalog().set_meta("vectors_flat_until", "2000000");  // as write_snapshot records it
  store->set_vector_spec(VectorSpec::parse("auto", 8));
  EXPECT_EQ(until(), "2000000");
  store->set_vector_spec(VectorSpec::parse("auto", 8), /*ask_again=*/true);
  EXPECT_EQ(until(), "0");
  store->catalog().set_meta("vectors_flat_until", "2000000");
  store->set_vector_spec(VectorSpec::parse("flat", 8));
  EXPECT_EQ(until(), "0");
  test::TempDir older;
  auto old = IndexStore::open(older / "index", IndexAccess::kWrite);
  old->catalog().set_meta("vectors", "ivf");  // as an earlier version stored it
  EXPECT_NE(old->wanted_vector_type(), "flat");
  old->catalog().set_meta("vectors_auto_flat_until", "2000000");
  EXPECT_EQ(old->wanted_vector_type(), "flat");
}

// A type FAISS cannot train on the index's few vectors (an IVF with more lists than vectors, a PQ
// with fewer than 256) is written as flat, says why, and is kept as the setting: later writes do
// not train it again until the index has grown, and once trainable it is built. It never fails a
// write (it made every later `cnclip index` fail when the spec was stored before any build).
TEST(ScaleTypes, ATypeTooBigForTheIndexIsFlatUntilItGrows) {
  OneThread one_thread;
  constexpr int kDim = 16;
  const auto vectors = clustered_vectors(600, kDim, 8, 21);
  for (const char* type : {"IVF64,SQ8", "IVF16,PQ4"}) {
    SCOPED_TRACE(type);
    test::TempDir dir;
    auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
    const std::vector<float> few(vectors.begin(), vectors.begin() + 10 * kDim);
    fill_index(*store, few, kDim);
    store->set_vector_spec(VectorSpec::parse(type, kDim));
    ASSERT_NO_THROW(store->write_snapshot());
    EXPECT_EQ(store->open_snapshot()->type(), "flat");
    EXPECT_NE(store->snapshot_fallback().find("cannot be trained on 10 vectors"), std::string::npos)
        << store->snapshot_fallback();
    // Not before FAISS could train it: an IVF's lists, a PQ's 256 centroids.
    const std::string needed = std::string(type) == "IVF64,SQ8" ? "64" : "256";
    EXPECT_NE(store->snapshot_fallback().find("tried again when the index holds " + needed + " vectors"),
              std::string::npos)
        << store->snapshot_fallback();
    EXPECT_EQ(store->vector_spec().text, type) << "the setting is kept";
    EXPECT_EQ(store->wanted_vector_type(), "flat");
    EXPECT_FALSE(store->ensure_snapshot()) << "not trained again at every write";
    {
      CatalogTransaction tx(store->catalog());
      for (int64_t i = 10; i < 600; ++i) {
        store->catalog().insert(FileRecord{0, path_of(i + 1), 1, 0, "h" + std::to_string(i), 0},
                                &vectors[static_cast<size_t>(i) * kDim], kDim);
      }
      tx.commit();
    }
    EXPECT_TRUE(store->ensure_snapshot());
    EXPECT_EQ(store->snapshot_fallback(), "");
    EXPECT_EQ(store->open_snapshot()->type(), canonical_vector_type(type, kDim));
    EXPECT_EQ(store->catalog().meta("vectors_flat_until").value_or("unset"), "0");
  }
}

// A small index is trained as it is: FAISS's "WARNING clustering N points to K centroids" (shown as
// a cnclip warning with -q too) is not printed for fewer than 39 vectors per list.
TEST(ScaleTypes, TrainingASmallIndexPrintsNoFaissWarning) {
  OneThread one_thread;
  constexpr int kDim = 16, kN = 300;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 8, 12);
  for (const char* type : {"IVF16,SQ8", "IVF16,PQ4"}) {
    SCOPED_TRACE(type);
    testing::internal::CaptureStderr();
    const auto built = build_snapshot(dir / "s.faiss", type, kDim, kN, ids_from_1(vectors, kDim));
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_EQ(built, SnapshotBuild::kWritten);
    EXPECT_EQ(err.find("WARNING"), std::string::npos) << err;
  }
}

// Types FAISS builds but cnclip cannot search as filters do (PQ and fast-scan codes refuse search
// parameters; HNSW over PQ is made with the L2 metric) are not kept: the file is deleted, the build
// says why, and IndexStore writes flat until another --vectors is given. Each failed every search.
TEST(ScaleTypes, ATypeCnclipCannotSearchIsNotKept) {
  OneThread one_thread;
  constexpr int kDim = 16, kN = 400;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 8, 13);
  for (const char* type : {"PQ4", "PQ4x4fs", "HNSW16,PQ4"}) {
    SCOPED_TRACE(type);
    std::string report;
    const auto built = build_snapshot(dir / "s.faiss", type, kDim, kN, ids_from_1(vectors, kDim), &report);
    EXPECT_EQ(built, SnapshotBuild::kUnusable) << report;
    EXPECT_FALSE(std::filesystem::exists(dir / "s.faiss"));
    EXPECT_NE(report.find("not a type cnclip can search"), std::string::npos) << report;
    // The reason as it is (it once read "inconsistent header" for HNSW over PQ).
    if (std::string(type) == "HNSW16,PQ4") {
      EXPECT_NE(report.find("FAISS made it with the L2 metric, not the inner product"), std::string::npos) << report;
    }
  }
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  store->set_vector_spec(VectorSpec::parse("PQ4", kDim));
  store->write_snapshot();
  EXPECT_EQ(store->open_snapshot()->type(), "flat");
  EXPECT_NE(store->snapshot_fallback().find("flat until another --vectors is given"), std::string::npos)
      << store->snapshot_fallback();
  EXPECT_FALSE(store->ensure_snapshot()) << "not built again at every write";
  Searcher searcher(*store);
  EXPECT_EQ(search_all(searcher, queries_near(vectors, kDim, 3, 14), kDim, 5)[0].size(), 5u);
}

// A flat-fp16 snapshot is built with its codes allocated once: growing them as vectors came
// doubled their buffer, and the copy held both (10M vectors: 10.2 GB of codes, 19.9 GB peak RSS).
// Five batches of 65,536 (the builder's) 512-d vectors, 320 MiB of codes: grown, the fifth batch
// copied 256 MiB into a 512 MiB buffer. Measured in a child process, whose peak RSS is its own.
TEST(ScaleTypes, AFlatFp16BuildHoldsItsCodesOnce) {
  constexpr int kDim512 = 512;
  constexpr int64_t kCount = 5 * 65'536;
  const double codes_mib = static_cast<double>(kCount) * kDim512 * 2 / (1 << 20);
  test::TempDir dir;
  const std::string path = dir / "s.faiss";
  const pid_t pid = fork();
  if (pid == 0) {
    omp_set_num_threads(1);  // libgomp is not fork-safe once the parent has used it
    auto rss_mib = [] {
      long pages = 0, resident = 0;
      FILE* f = std::fopen("/proc/self/statm", "r");
      if (!f || std::fscanf(f, "%ld %ld", &pages, &resident) != 2) _exit(3);
      std::fclose(f);
      return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20);
    };
    const double before = rss_mib();
    std::vector<float> v(kDim512);
    const auto built = build_snapshot(path, "flat-fp16", kDim512, kCount, [&](const auto& add) {
      for (int64_t i = 0; i < kCount; ++i) {
        for (int d = 0; d < kDim512; ++d) v[d] = static_cast<float>((i + d) % 97) / 97.0f - 0.5f;
        add(i + 1, v.data());
      }
    });
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    const double peak = static_cast<double>(usage.ru_maxrss) / 1024;
    std::FILE* out = std::fopen((dir / "rss").c_str(), "w");
    std::fprintf(out, "%d %.0f\n", built == SnapshotBuild::kWritten ? 1 : 0, peak - before);
    std::fclose(out);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  int written = 0;
  double grown = 0;
  std::ifstream(dir / "rss") >> written >> grown;
  ASSERT_EQ(written, 1);
  // The codes, the builder's batch of floats (128 MiB) and FAISS's encoding of one batch; the
  // doubled buffer came to ~700 MiB.
  EXPECT_LT(grown, codes_mib + 128 + 100)
      << "peak RSS grew by " << grown << " MiB for " << codes_mib << " MiB of codes";
  EXPECT_EQ(VectorIndex::open_file(path)->size(), kCount);
}

// An index with no vectors yet: an approximate type is flat (empty) until FAISS can train it, not an
// untrained snapshot kept until 10,000 changes.
TEST(ScaleTypes, AnApproximateTypeOnAnEmptyIndexWaitsForVectors) {
  OneThread one_thread;
  constexpr int kDim = 16;
  test::TempDir dir;
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, {}, kDim);
  for (const char* type : {"ivf", "IVF16,PQ4"}) {
    SCOPED_TRACE(type);
    store->set_vector_spec(VectorSpec::parse(type, kDim), /*ask_again=*/true);
    store->write_snapshot();
    EXPECT_EQ(store->open_snapshot()->type(), "flat");
    EXPECT_NE(store->snapshot_fallback().find("cannot be trained on 0 vectors"), std::string::npos)
        << store->snapshot_fallback();
  }
  const auto vectors = clustered_vectors(300, kDim, 8, 4);
  fill_index(*store, vectors, kDim);
  EXPECT_TRUE(store->ensure_snapshot());
  EXPECT_EQ(store->open_snapshot()->type(), "IVF16,PQ4");
}

// How much change an approximate snapshot is kept with (delta_kept_up_to), and what it prevents:
// after most of a small IVF's vectors were removed, the next write rebuilds it instead of leaving
// lists of masked ids that hide the rest.
TEST(ScaleTypes, ASmallApproximateSnapshotIsRebuiltAfterMuchOfItChanged) {
  EXPECT_EQ(IndexStore::delta_kept_up_to(70), 7);
  EXPECT_EQ(IndexStore::delta_kept_up_to(50'000), 5'000);
  EXPECT_EQ(IndexStore::delta_kept_up_to(1'000'000), 10'000);
  EXPECT_EQ(IndexStore::delta_kept_up_to(100'000'000), 1'000'000);
  OneThread one_thread;
  constexpr int kDim = 16, kN = 700;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 20, 8);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  store->set_vector_spec(VectorSpec::parse("IVF16,SQ8", kDim));  // one type at every size
  store->write_snapshot();
  ASSERT_EQ(store->open_snapshot()->type(), "IVF16,SQ8");
  IndexInfo info = index_info(*store);
  EXPECT_EQ(info.vectors_setting, "IVF16,SQ8");
  EXPECT_EQ(info.snapshot_type, "IVF16,SQ8");
  const std::unique_ptr<faiss::Index> written(faiss::read_index(store->snapshot_path().c_str()));
  const faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(written.get());
  ASSERT_NE(ivf, nullptr);
  EXPECT_EQ(info.snapshot_search_parameter, "nprobe " + std::to_string(ivf->nprobe));
  EXPECT_EQ(info.snapshot_changed_since, 0);
  EXPECT_EQ(info.snapshot_note, "");
  {
    CatalogTransaction tx(store->catalog());
    for (int64_t id = 1; id <= 60; ++id) store->catalog().remove(id);
    tx.commit();
  }
  EXPECT_FALSE(store->ensure_snapshot()) << "60 of 700 changed: kept with its delta";
  info = index_info(*store);
  EXPECT_EQ(info.snapshot_type, "IVF16,SQ8");
  EXPECT_EQ(info.snapshot_changed_since, 60) << "what each search reads from the catalog";
  EXPECT_EQ(info.vectors, 640);
  {
    CatalogTransaction tx(store->catalog());
    for (int64_t id = 61; id <= 600; ++id) store->catalog().remove(id);
    tx.commit();
  }
  EXPECT_TRUE(store->ensure_snapshot());
  auto snapshot = store->open_snapshot();
  EXPECT_EQ(snapshot->type(), "IVF16,SQ8");
  EXPECT_EQ(snapshot->size(), 100);
}

// Asked for more results than the tuned search reaches (nprobe and efSearch are tuned for the top
// 10), an approximate snapshot widens its search: every vector of a small one is found, and a range
// search down to -1 (`--sort date --threshold -1`) finds them all.
TEST(ScaleTypes, ALargeKReachesEveryVectorOfASmallApproximateSnapshot) {
  OneThread one_thread;
  constexpr int kDim = 16, kN = 700;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 20, 10);
  const auto queries = queries_near(vectors, kDim, 2, 11);
  for (const char* type : {"IVF32,SQ8", "HNSW8"}) {
    SCOPED_TRACE(type);
    build_snapshot(dir / "s.faiss", type, kDim, kN, ids_from_1(vectors, kDim));
    auto index = VectorIndex::open_file(dir / "s.faiss");
    for (int k : {kN / 2, kN, 2 * kN}) {
      const auto hits = index->search(queries.data(), 2, k);
      for (const auto& h : hits) EXPECT_GE(h.size(), static_cast<size_t>(std::min(k, kN)) * 95 / 100) << "k=" << k;
    }
    // A range search (`--sort date --threshold`) down to -1: every vector.
    for (const auto& h : index->range_search(queries.data(), 2, -1.0f)) EXPECT_EQ(h.size(), static_cast<size_t>(kN));
  }
}

// Ctrl-C stops a snapshot build (k-means inside FAISS, HNSW's adds in cnclip's loop) with
// kInterrupted, which the CLI maps to exit 130. In a child process: the interrupt flag stays set.
TEST(ScaleTypesDeathTest, ASnapshotBuildStopsOnInterrupt) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  constexpr int kDim = 16, kN = 2000;
  const auto vectors = clustered_vectors(kN, kDim, 20, 9);
  test::TempDir dir;
  for (const char* type : {"IVF32,SQ8", "HNSW16"}) {
    SCOPED_TRACE(type);
    EXPECT_EXIT(
        {
          request_interrupt();
          try {
            build_snapshot(dir / "s.faiss", type, kDim, kN, ids_from_1(vectors, kDim));
          } catch (const Exception& e) {
            // Checked in the child: a "threadsafe" death test runs the test body again in a new
            // process, whose TempDir is not the parent's.
            std::exit(e.code() == ErrorCode::kInterrupted && !std::filesystem::exists(dir / "s.faiss") ? 42 : 1);
          }
          std::exit(0);
        },
        ::testing::ExitedWithCode(42), "");
  }
  // Asked for during the sampling pass: FAISS's k-means stops (its InterruptCallback), so the pass
  // that adds the vectors never starts.
  EXPECT_EXIT(
      {
        int64_t seen = 0;
        try {
          build_snapshot(dir / "s.faiss", "IVF64,SQ8", kDim, kN,
                         [&](const std::function<void(int64_t, const float*)>& add) {
                           for (int64_t i = 0; i < kN; ++i) {
                             if (++seen > kN) std::exit(7);  // the second pass
                             add(i + 1, &vectors[static_cast<size_t>(i) * kDim]);
                           }
                           request_interrupt();
                         });
        } catch (const Exception& e) {
          std::exit(e.code() == ErrorCode::kInterrupted ? 42 : 1);
        }
        std::exit(0);
      },
      ::testing::ExitedWithCode(42), "");
}

// Switching types keeps results: back on flat, the same answers as before; --exact on any type
// answers as flat; approximate types find each indexed vector as its own best match.
TEST(ScaleTypes, SwitchingTypesKeepsResults) {
  OneThread one_thread;
  constexpr int kDim = 32, kN = 3000;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 40, 3);
  const auto queries = queries_near(vectors, kDim, 40, 4);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  store->write_snapshot();
  std::vector<std::vector<RankedHit>> before;
  {
    Searcher s(*store);
    before = search_all(s, queries, kDim, 10);
  }
  auto same = [](const std::vector<std::vector<RankedHit>>& a, const std::vector<std::vector<RankedHit>>& b) {
    if (a.size() != b.size()) return false;
    for (size_t q = 0; q < a.size(); ++q) {
      if (a[q].size() != b[q].size()) return false;
      for (size_t j = 0; j < a[q].size(); ++j) {
        if (a[q][j].id != b[q][j].id || a[q][j].path != b[q][j].path || a[q][j].score != b[q][j].score) return false;
      }
    }
    return true;
  };
  for (const char* type : {"ivf", "flat-fp16", "HNSW16", "flat-sq8", "flat"}) {
    SCOPED_TRACE(type);
    store->set_vector_spec(VectorSpec::parse(type, kDim));
    EXPECT_TRUE(store->ensure_snapshot()) << "a new type is built at once";
    EXPECT_FALSE(store->ensure_snapshot()) << "and only once";
    Searcher exact(*store, /*exact=*/true);
    EXPECT_TRUE(same(search_all(exact, queries, kDim, 10), before));
    Searcher any(*store);
    for (int i = 0; i < kN; i += 97) {
      const std::vector<float> self(vectors.begin() + static_cast<ptrdiff_t>(i) * kDim,
                                    vectors.begin() + static_cast<ptrdiff_t>(i + 1) * kDim);
      SearchOptions o;
      o.top_k = 1;
      const auto hits = any.search({"self"}, self, o)[0].hits;
      ASSERT_EQ(hits.size(), 1u);
      EXPECT_EQ(hits[0].id, i + 1);
      EXPECT_NEAR(hits[0].score, 1.0f, 1e-5);
    }
  }
  Searcher after(*store);
  EXPECT_TRUE(same(search_all(after, queries, kDim, 10), before));
}

// A damaged snapshot of any type (random bytes at its start, middle and end, cut short, extended)
// is reported once, naming it, and the catalog's vectors answer instead: the same results as flat.
TEST(ScaleTypes, DamagedSnapshotOfEachTypeFallsBackToTheCatalog) {
  OneThread one_thread;
  constexpr int kDim = 32, kN = 3000;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN, kDim, 40, 5);
  const auto queries = queries_near(vectors, kDim, 20, 6);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  const auto truth = brute_force(store->catalog(), kDim, queries, 10);
  for (const char* type : {"flat", "flat-fp16", "flat-sq8", "ivf", "HNSW16"}) {
    store->set_vector_spec(VectorSpec::parse(type, kDim));
    store->write_snapshot();
    const std::string snap = store->snapshot_path();
    const std::string good = test::read_text(snap);
    const size_t size = good.size();
    std::vector<std::pair<std::string, std::string>> damages;
    for (size_t at : {size_t{0}, size_t{5}, size / 3, size / 2, size - 30, size - 9}) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] ^ 0x5a);
      damages.emplace_back("byte " + std::to_string(at), bad);
    }
    damages.emplace_back("cut", good.substr(0, size - 100));
    damages.emplace_back("extended", good + std::string(16, '\0'));
    for (const auto& [what, bytes] : damages) {
      SCOPED_TRACE(std::string(type) + ", " + what);
      test::write_text(snap, bytes);
      WarningCapture warnings;
      auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
      VectorsOrigin origin;
      auto loaded = reader->search_vectors(false, &origin);
      EXPECT_EQ(loaded->type(), "flat");
      EXPECT_TRUE(loaded->exact());
      EXPECT_EQ(loaded->size(), kN);
      ASSERT_EQ(warnings.lines.size(), 1u);
      EXPECT_NE(warnings.lines[0].find(snap), std::string::npos) << warnings.lines[0];
      // The reason is kept for `cnclip info` (JSON snapshot_problem), not only warned.
      EXPECT_EQ(origin.snapshot_generation, -1);
      EXPECT_EQ(origin.problem.rfind(snap + ": not a usable vector file (", 0), 0u) << origin.problem;
      EXPECT_NE(warnings.lines[0].find(origin.problem), std::string::npos) << warnings.lines[0];
      EXPECT_EQ(index_info(*reader).snapshot_problem, origin.problem);
      Searcher searcher(*reader);
      EXPECT_EQ(recall(truth, search_all(searcher, queries, kDim, 10)), 1.0);
    }
    test::write_text(snap, good);
    EXPECT_FALSE(store->ensure_snapshot());
    // The next writer replaces a damaged one.
    test::write_text(snap, damages[2].second);
    EXPECT_TRUE(store->ensure_snapshot());
    EXPECT_NE(store->open_snapshot(), nullptr);
  }
}

// While an index run commits batch after batch (adds, re-encoded files, removals), a search uses
// the last snapshot plus the delta since, and answers exactly as the catalog does; no removed file
// and no old vector of a re-encoded one is ever returned.
TEST(ScaleDelta, AddsChangesAndRemovesDuringARun) {
  OneThread one_thread;
  constexpr int kDim = 32, kN = 3000;
  for (const char* type : {"flat", "ivf"}) {
    SCOPED_TRACE(type);
    test::TempDir dir;
    auto vectors = clustered_vectors(kN + 600, kDim, 40, 7);
    const std::vector<float> first(vectors.begin(), vectors.begin() + static_cast<ptrdiff_t>(kN) * kDim);
    auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
    fill_index(*store, first, kDim);
    store->set_vector_spec(VectorSpec::parse(type, kDim));
    store->write_snapshot();
    const int64_t snapshot_generation = store->catalog().generation();
    std::mt19937 rng(11);
    std::set<int64_t> removed, changed, added;
    int64_t next = kN;
    for (int batch = 0; batch < 6; ++batch) {
      {
        CatalogTransaction tx(store->catalog());
        for (int i = 0; i < 100; ++i, ++next) {  // new files
          added.insert(store->catalog().insert(FileRecord{0, path_of(next + 1), 1, 0, "n", 0},
                                               &vectors[static_cast<size_t>(next) * kDim], kDim));
        }
        for (int i = 0; i < 20; ++i) {  // re-encoded: the vector of another file
          const int64_t id = 1 + rng() % kN;
          if (removed.count(id)) continue;
          auto r = store->catalog().find(path_of(id));
          ASSERT_TRUE(r);
          store->catalog().update(*r, &vectors[static_cast<size_t>(rng() % (kN + 600)) * kDim], kDim);
          changed.insert(id);
        }
        for (int i = 0; i < 20; ++i) {  // removed
          const int64_t id = 1 + rng() % kN;
          if (removed.insert(id).second) store->catalog().remove(id);
        }
        tx.commit();
      }
      // A reader during the run (a search process started now).
      auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
      auto loaded = reader->search_vectors();
      EXPECT_EQ(loaded->size(), reader->catalog().count());
      EXPECT_EQ(loaded->exact(), std::string(type) == "flat");
      EXPECT_EQ(loaded->type(), std::string(type) == "flat" ? "flat" : "IVF64,SQ8");
      const auto log = reader->catalog().changed_since(snapshot_generation);
      std::set<int64_t> expected_log(added);
      expected_log.insert(changed.begin(), changed.end());
      expected_log.insert(removed.begin(), removed.end());
      EXPECT_EQ(std::set<int64_t>(log.begin(), log.end()), expected_log);
      Searcher searcher(*reader);
      // Each changed or added file is found by its current vector, with score 1.
      for (int64_t id : expected_log) {
        const auto v = reader->catalog().embedding(id);
        if (v.empty()) continue;
        SearchOptions o;
        o.top_k = 3;
        const auto hits = searcher.search({"q"}, v, o)[0].hits;
        ASSERT_FALSE(hits.empty());
        EXPECT_NEAR(hits[0].score, 1.0f, 1e-5) << "id " << id;
        for (const auto& h : hits) EXPECT_EQ(removed.count(h.id), 0u) << "removed id " << h.id << " returned";
      }
      // And a flat index answers exactly as the catalog does.
      if (std::string(type) == "flat") {
        const auto queries = queries_near(vectors, kDim, 30, 100 + batch);
        const auto truth = brute_force(reader->catalog(), kDim, queries, 10);
        const auto got = search_all(searcher, queries, kDim, 10);
        for (size_t q = 0; q < truth.size(); ++q) {
          ASSERT_EQ(got[q].size(), truth[q].size());
          for (size_t j = 0; j < truth[q].size(); ++j) {
            // Rank by rank the exact scores; a file and its copy (a re-encoded file took another's
            // vector) score the same up to float rounding, so their order may differ.
            EXPECT_NEAR(got[q][j].score, truth[q][j].score, 1e-5);
            const auto v = reader->catalog().embedding(got[q][j].id);
            ASSERT_FALSE(v.empty()) << "removed id " << got[q][j].id << " returned";
            double s = 0;
            for (int d = 0; d < kDim; ++d) s += double(queries[q * kDim + d]) * v[d];
            EXPECT_NEAR(got[q][j].score, s, 1e-5) << "id " << got[q][j].id << " has an old vector";
          }
        }
      }
    }
    // The end of the run: flat is rewritten, and so is the IVF: 840 of its 3,000 ids changed, over a
    // tenth (IndexStore::delta_kept_up_to; a small delta is kept, ASmallApproximateSnapshotIs...).
    EXPECT_TRUE(store->ensure_snapshot());
    auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
    EXPECT_EQ(reader->search_vectors()->size(), reader->catalog().count());
    if (std::string(type) == "flat") {
      EXPECT_TRUE(reader->catalog().changed_since(snapshot_generation).empty());
    }
  }
}

// A catalog written before the change log existed gets one at the next writer's open, starting at
// its generation: an older snapshot is not combined with it.
// A run that only added files since the snapshot: the reader's snapshot plus delta answers as the
// catalog does (no row of the snapshot is masked, so its scan needs no selector).
TEST(ScaleDelta, AddsOnlyAnswerAsTheCatalogDoes) {
  OneThread one_thread;
  constexpr int kDim = 32, kN = 3000, kAdded = 250;
  test::TempDir dir;
  const auto vectors = clustered_vectors(kN + kAdded, kDim, 40, 9);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, std::vector<float>(vectors.begin(), vectors.begin() + static_cast<ptrdiff_t>(kN) * kDim), kDim);
  store->write_snapshot();
  {
    CatalogTransaction tx(store->catalog());
    for (int i = kN; i < kN + kAdded; ++i) {
      store->catalog().insert(FileRecord{0, path_of(i + 1), 1, 0, "n", 0}, &vectors[static_cast<size_t>(i) * kDim],
                              kDim);
    }
    tx.commit();
  }
  auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
  std::vector<int64_t> ids;
  std::vector<float> rows;
  reader->catalog().for_each_embedding(kDim, [&](int64_t id, const float* v) {
    ids.push_back(id);
    rows.insert(rows.end(), v, v + kDim);
  });
  const auto delta = reader->search_vectors(), catalog = VectorIndex::from_vectors(kDim, ids, rows);
  ASSERT_EQ(delta->size(), kN + kAdded);
  const auto queries = queries_near(vectors, kDim, 20, 10);
  for (int q = 0; q < 20; ++q) {
    for (const std::function<bool(int64_t)>& allowed :
         {std::function<bool(int64_t)>{}, std::function<bool(int64_t)>([](int64_t id) { return id % 2 == 0; })}) {
      auto a = delta->search(&queries[static_cast<size_t>(q) * kDim], 1, 15, allowed)[0];
      auto b = catalog->search(&queries[static_cast<size_t>(q) * kDim], 1, 15, allowed)[0];
      sort_by_score(a);
      sort_by_score(b);
      ASSERT_EQ(a.size(), b.size()) << q;
      for (size_t j = 0; j < a.size(); ++j) {
        EXPECT_EQ(a[j].id, b[j].id) << q << " " << j;
        EXPECT_NEAR(a[j].score, b[j].score, 1e-6) << q << " " << j;
      }
    }
  }
}

TEST(ScaleDelta, OlderSnapshotsThanTheLogAreNotUsed) {
  constexpr int kDim = 16;
  test::TempDir dir;
  const auto vectors = clustered_vectors(200, kDim, 4, 9);
  auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
  fill_index(*store, vectors, kDim);
  store->write_snapshot();
  const int64_t g = store->catalog().generation();
  EXPECT_EQ(store->catalog().changes_since(), g);
  {
    CatalogTransaction tx(store->catalog());
    store->catalog().remove(1);
    tx.commit();
  }
  EXPECT_EQ(store->catalog().changed_since(g), std::vector<int64_t>{1});
  // As if the log had begun only now: the snapshot of g cannot be combined with it.
  store->catalog().prune_changes(g + 1);
  auto reader = IndexStore::open(dir / "index", IndexAccess::kRead);
  auto loaded = reader->search_vectors();
  EXPECT_EQ(loaded->size(), 199);
  EXPECT_NE(loaded->ids(), nullptr) << "the catalog's vectors, not the snapshot with a delta";
}

// Adds `count` more vectors (ids after the index's) in one commit, as an index run's batch.
void add_vectors(IndexStore& store, int64_t count, int dim, unsigned seed) {
  const auto more = clustered_vectors(count, dim, 10, seed);
  const int64_t n = store.catalog().count();
  CatalogTransaction tx(store.catalog());
  for (int64_t i = 0; i < count; ++i) {
    store.catalog().insert(FileRecord{0, path_of(n + i + 1), 1, 0, "m" + std::to_string(n + i), 0},
                           &more[static_cast<size_t>(i) * dim], dim);
  }
  tx.commit();
}

std::vector<std::string> snapshot_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("vectors-", 0) == 0) out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A rebuild (an index run's last step, an IVF retrained) leaves the older snapshot searchable while
// it builds: searches meanwhile use it with its delta, never every embedding from the catalog, which
// deleting it first made them do for the whole build (minutes for an IVF at 10M). Once the new one
// is written, it is the only one.
TEST(ScaleDelta, SearchesDuringARebuildUseTheOlderSnapshot) {
  constexpr int kDim = 64, kN = 20'000;
  test::TempDir dir;
  const std::string idx = dir / "index";
  auto store = IndexStore::open(idx, IndexAccess::kWrite);
  fill_index(*store, clustered_vectors(kN, kDim, 100, 21), kDim);
  store->write_snapshot();  // flat
  const int64_t before = store->catalog().generation();
  add_vectors(*store, 100, kDim, 22);
  store->set_vector_spec(VectorSpec::parse("IVF128,SQ8", kDim));
  std::atomic<bool> building{true}, first_read{false};
  std::vector<VectorsOrigin> seen;
  std::thread reader([&] {
    auto r = IndexStore::open(idx, IndexAccess::kRead);
    while (building) {
      VectorsOrigin origin;
      const auto vectors = r->search_vectors(false, &origin);
      EXPECT_EQ(vectors->size(), kN + 100);
      seen.push_back(origin);
      first_read = true;
    }
  });
  while (!first_read) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  store->write_snapshot();
  const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  building = false;
  reader.join();
  ASSERT_FALSE(seen.empty());
  int64_t on_old = 0;
  for (const auto& o : seen) {
    EXPECT_NE(o.snapshot_generation, -1) << "a search during the build read every embedding from the catalog";
    if (o.snapshot_generation == before) {
      ++on_old;
      EXPECT_EQ(o.changed_since, 100);
    }
  }
  EXPECT_GE(on_old, 2) << seen.size() << " reads during a build of " << build_s << " s";
  EXPECT_EQ(snapshot_files(idx),
            std::vector<std::string>{"vectors-" + std::to_string(store->catalog().generation()) + ".faiss"});
  ASSERT_NE(store->open_snapshot(), nullptr);
  EXPECT_EQ(store->open_snapshot()->type(), "IVF128,SQ8");
}

// On a disk without room for a new snapshot beside the older one, the older one is deleted first, so
// that the rebuild fits (searches meanwhile read the catalog's vectors).
TEST(ScaleDelta, ARebuildOnADiskWithoutRoomForTwoDeletesTheOlderFirst) {
  if (::geteuid() != 0) GTEST_SKIP() << "filling a disk needs a tmpfs mounted as root";
  constexpr int kDim = 64, kN = 20'000;
  test::TempDir dir;
  const std::string disk = dir / "disk", idx = disk + "/index";
  std::filesystem::create_directories(disk);
  auto tmpfs = test::ScopedMount::tmpfs(disk, 48u << 20);
  ASSERT_TRUE(tmpfs.ok()) << tmpfs.why();
  {
    auto store = IndexStore::open(idx, IndexAccess::kWrite);
    fill_index(*store, clustered_vectors(kN, kDim, 100, 23), kDim);
    store->write_snapshot();
    add_vectors(*store, 10, kDim, 24);
    const auto old = snapshot_files(idx);
    ASSERT_EQ(old.size(), 1u);
    const auto snapshot_bytes = std::filesystem::file_size(idx + "/" + old[0]);
    // Room for half a snapshot: the new one fits only in the older one's place.
    const auto available = std::filesystem::space(disk).available;
    ASSERT_GT(available, snapshot_bytes);
    std::ofstream(disk + "/filler", std::ios::binary)
        << std::string(static_cast<size_t>(available - snapshot_bytes / 2), 'f');
    store->write_snapshot();
    EXPECT_EQ(snapshot_files(idx),
              std::vector<std::string>{"vectors-" + std::to_string(store->catalog().generation()) + ".faiss"});
    auto written = store->open_snapshot();
    ASSERT_NE(written, nullptr);
    EXPECT_EQ(written->size(), kN + 10);
  }
  std::filesystem::remove(disk + "/filler");
}

// The CLI: `cnclip index --vectors TYPE` with no path rebuilds the snapshot of an index filled only
// by import; searches answer from it, --exact as flat; a bad type is a usage error naming it.
TEST(ScaleCli, IndexVectorsRebuildsAnImportedIndex) {
  test::TempDir dir;
  const std::string idx = dir / "index";
  constexpr int kDim = 32, kN = 2000;
  const auto vectors = clustered_vectors(kN, kDim, 30, 12);
  write_npy(dir / "v.npy", vectors.data(), {kN, kDim});
  std::string paths;
  for (int i = 0; i < kN; ++i) paths += path_of(i + 1) + "\n";
  test::write_text(dir / "p.txt", paths);
  const std::vector<std::string> common{"--index", idx, "--model", test::tiny_bundle()};
  auto r = test::run_cnclip(test::concat({"import", "--npy", dir / "v.npy", "--paths", dir / "p.txt"}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto flat =
      test::run_cnclip(test::concat({"search-text", "小狗", "--no-server", "-k", "5", "--format", "jsonl"}, common));
  ASSERT_EQ(flat.exit_code, 0) << flat.err;
  r = test::run_cnclip({"index", "--vectors", "ivf", "--format", "json", "--index", idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["type"], "IVF32,SQ8");
  EXPECT_EQ(j["count"], kN);
  EXPECT_NE(j["tuning"].get<std::string>().find("nprobe"), std::string::npos);
  auto exact = test::run_cnclip(
      test::concat({"search-text", "小狗", "--no-server", "-k", "5", "--format", "jsonl", "--exact"}, common));
  ASSERT_EQ(exact.exit_code, 0) << exact.err;
  EXPECT_EQ(exact.out, flat.out);
  auto approximate =
      test::run_cnclip(test::concat({"search-text", "小狗", "--no-server", "-k", "1", "--format", "paths"}, common));
  ASSERT_EQ(approximate.exit_code, 0) << approximate.err;
  EXPECT_EQ(approximate.out,
            nlohmann::json::parse(flat.out.substr(0, flat.out.find('\n')))["path"].get<std::string>() + "\n");
  r = test::run_cnclip({"index", "--vectors", "IVF,PQ5", "--index", idx});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("IVF,PQ5"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = test::run_cnclip({"index", "--vectors", "flat", "--index", idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("rebuilt as flat"), std::string::npos) << r.err;
  auto back =
      test::run_cnclip(test::concat({"search-text", "小狗", "--no-server", "-k", "5", "--format", "jsonl"}, common));
  EXPECT_EQ(back.out, flat.out);
}

// As a new user tried it: a few photos indexed with `--vectors ivf` (or a FAISS type too big for
// them), then the type given again without paths. Each run succeeds with a flat snapshot and one
// line saying why, the later index runs and searches work without training again, and the setting
// holds. A type refused up front leaves no index behind; `--vectors ''` is a usage error.
TEST(ScaleCli, AnApproximateTypeOnAFewPhotosIsFlatAndSaysWhy) {
  test::TempDir dir;
  const std::string idx = dir / "index", photos = dir / "photos";
  std::filesystem::create_directories(photos);
  for (const char* f : {"pokemon.jpeg", "chelsea_rgba.png", "astronaut_palette.png", "coffee_2048x1366_exif6.jpg"}) {
    test::copy_file(test::fixtures(std::string("images/") + f), photos + "/" + f);
  }
  const std::vector<std::string> common{"--index", idx, "--model", test::tiny_bundle()};
  auto r = test::run_cnclip(test::concat({"index", "--vectors", "PQ0", photos}, common));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_FALSE(std::filesystem::exists(idx)) << "a refused type leaves no index behind";
  r = test::run_cnclip(test::concat({"index", "--vectors", "", photos}, common));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--vectors: the index type is empty"), std::string::npos) << r.err;
  r = test::run_cnclip(test::concat({"index", "--vectors", "ivf", photos}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("vector snapshot written as flat: IVF16,SQ8 cannot be trained on 4 vectors"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("tried again when the index holds 16 vectors"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("WARNING"), std::string::npos) << "no FAISS warning: " << r.err;
  // `cnclip info` says what searches read and why it is not the setting's type.
  r = test::run_cnclip({"info", "--index", idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vectors:  4 (flat snapshot; --vectors ivf: IVF16,SQ8 cannot be trained on 4 vectors"),
            std::string::npos)
      << r.out;
  r = test::run_cnclip({"info", "--index", idx, "--format", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["vectors_setting"], "ivf");
  EXPECT_EQ(info["snapshot"]["type"], "flat");
  EXPECT_NE(info["snapshot_note"].get<std::string>().find("tried again when the index holds 16 vectors"),
            std::string::npos)
      << r.out;
  for (const char* type : {"ivf", "IVF1024,SQ8", "IVF,PQ4"}) {
    SCOPED_TRACE(type);
    r = test::run_cnclip(test::concat({"index", "--vectors", type}, common));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("rebuilt as flat (4 vectors"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("cannot be trained on 4 vectors"), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("Error in"), std::string::npos) << "FAISS's reason, not its source location: " << r.err;
    r = test::run_cnclip(test::concat({"index", photos}, common));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err.find("error"), std::string::npos) << r.err;
    r = test::run_cnclip(test::concat({"index", "--format", "json", "--vectors", type, photos}, common));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto s =
        test::run_cnclip(test::concat({"search-text", "小狗", "--no-server", "-k", "4", "--format", "paths"}, common));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    EXPECT_EQ(test::lines(s.out).size(), 4u);
  }
  // A photo more is still too few for IVF16,PQ4 (256): no training, no notice, no error.
  test::copy_file(test::fixtures("images/pokemon.jpeg"), photos + "/again.jpeg");
  r = test::run_cnclip(test::concat({"index", photos}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("written as flat"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 added"), std::string::npos) << r.err;
  r = test::run_cnclip({"info", "--index", idx, "--format", "json"});
  info = nlohmann::json::parse(r.out);
  EXPECT_EQ(info["vectors_setting"], "IVF,PQ4");
  EXPECT_NE(info["snapshot_note"].get<std::string>().find("tried again when the index holds 256 vectors"),
            std::string::npos)
      << r.out;
  // Set back to flat: nothing to explain.
  r = test::run_cnclip(test::concat({"index", "--vectors", "flat"}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip({"info", "--index", idx});
  EXPECT_NE(r.out.find("vectors:  5 (flat snapshot)\n"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace cnclip

namespace cnclip {
namespace {

// `scripts/bench.sh --scale N` (scripts/bench_scale.sh) runs these one process each, so that each
// phase's peak RSS is its own. CNCLIP_SCALE_DIR is the work folder, CNCLIP_SCALE_N the size,
// CNCLIP_SCALE_TYPE the snapshot type. Each prints one JSON line starting with "SCALE ".
constexpr int kBenchDim = 512;  // ViT-B-16's
constexpr int kBenchQueries = 200;

std::string bench_env(const char* name, const char* fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Each phase runs as cnclip's commands do: restarted once with runtime.h's OpenMP and malloc settings
// (restart_with_runtime_environment, with this process's own arguments). Without them a 1M flat-fp16
// search process opened its snapshot in 4.4-4.8 s instead of 1.1-2.1 s (FAISS reads the codes into
// malloc'd memory, first touched in 4 KiB pages instead of huge ones).
void run_as_cnclip_does() {
  if (!runtime_restart_wanted()) return;
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  for (size_t at = 0; at < all.size();) {
    const size_t end = all.find('\0', at);
    args.push_back(all.substr(at, end == std::string::npos ? std::string::npos : end - at));
    at = end == std::string::npos ? all.size() : end + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  restart_with_runtime_environment(argv.data());
}

// The index: N clustered 512-d vectors (N / 100 scenes), and 200 queries near them.
TEST(ScaleBench, DISABLED_Fill) {
  run_as_cnclip_does();
  const std::string dir = bench_env("CNCLIP_SCALE_DIR");
  const int64_t n = std::atoll(bench_env("CNCLIP_SCALE_N", "1000000").c_str());
  ASSERT_FALSE(dir.empty());
  const auto start = std::chrono::steady_clock::now();
  auto store = IndexStore::open(dir + "/index", IndexAccess::kWrite);
  std::vector<float> sample;
  constexpr int64_t kBlock = 100'000;
  for (int64_t at = 0; at < n; at += kBlock) {
    const int64_t m = std::min(kBlock, n - at);
    // One set of scene centres for the whole index (same seed), new members per block.
    auto block = clustered_vectors(m, kBenchDim, static_cast<int>(std::max<int64_t>(n / 100, 10)), 1);
    if (at > 0) {
      std::mt19937 rng(static_cast<unsigned>(at));
      std::normal_distribution<float> normal;
      // Members of the same scenes, moved a little so blocks differ.
      for (int64_t i = 0; i < m; ++i) {
        float* v = &block[static_cast<size_t>(i) * kBenchDim];
        double norm = 0;
        for (int d = 0; d < kBenchDim; ++d) norm += std::pow(v[d] += 0.02f * normal(rng), 2);
        for (int d = 0; d < kBenchDim; ++d) v[d] = static_cast<float>(v[d] / std::sqrt(norm));
      }
    }
    CatalogTransaction tx(store->catalog());
    store->catalog().set_meta("embedding_dim", std::to_string(kBenchDim));
    for (int64_t i = 0; i < m; ++i) {
      store->catalog().insert(FileRecord{0, path_of(at + i + 1), 1, 0, "h", 0},
                              &block[static_cast<size_t>(i) * kBenchDim], kBenchDim);
    }
    tx.commit();
    if (at == 0) sample = std::move(block);
  }
  const auto queries = queries_near(sample, kBenchDim, kBenchQueries, 99);
  write_npy(dir + "/queries.npy", queries.data(), {kBenchQueries, kBenchDim});
  std::printf("SCALE {\"phase\":\"fill\",\"n\":%lld,\"seconds\":%.1f}\n", static_cast<long long>(n),
              seconds_since(start));
}

// One snapshot of CNCLIP_SCALE_TYPE: build time, size on disk, tuning.
TEST(ScaleBench, DISABLED_Build) {
  run_as_cnclip_does();
  const std::string dir = bench_env("CNCLIP_SCALE_DIR"), type = bench_env("CNCLIP_SCALE_TYPE", "flat");
  auto store = IndexStore::open(dir + "/index", IndexAccess::kWrite);
  store->set_vector_spec(VectorSpec::parse(type, kBenchDim));
  const auto start = std::chrono::steady_clock::now();
  store->write_snapshot();
  const double secs = seconds_since(start);
  struct stat st {};
  ::stat(store->snapshot_path().c_str(), &st);
  nlohmann::json j{{"phase", "build"},
                   {"type", type},
                   {"resolved", store->wanted_vector_type()},
                   {"seconds", secs},
                   {"bytes", static_cast<int64_t>(st.st_size)},
                   {"tuning", store->snapshot_report()}};
  std::printf("SCALE %s\n", j.dump().c_str());
}

// A search process: open (snapshot + delta, checksum) and the first query = cold; then the other
// queries one by one = warm. Recall@10 against the flat run's answers (truth.bin, written by it).
TEST(ScaleBench, DISABLED_Query) {
  run_as_cnclip_does();
  const std::string dir = bench_env("CNCLIP_SCALE_DIR"), type = bench_env("CNCLIP_SCALE_TYPE", "flat");
  // The values, not NpyArray::data (its raw bytes: each byte taken as a float made queries that the
  // search rightly refused as damaged, score 669.9, the first time this bench ran).
  const std::vector<float> queries = read_npy(dir + "/queries.npy").value().as_float();
  const auto start = std::chrono::steady_clock::now();
  auto store = IndexStore::open(dir + "/index", IndexAccess::kRead);
  auto searcher = std::make_unique<Searcher>(*store);
  const double open = seconds_since(start);
  std::vector<double> warm;
  std::vector<int64_t> ids;
  double cold = 0;
  SearchOptions o;
  o.top_k = 10;
  // CNCLIP_SCALE_QUERIES: fewer queries (2 to 200) for a quick look; recall then counts those only.
  const int n_queries = std::clamp(std::atoi(bench_env("CNCLIP_SCALE_QUERIES", "200").c_str()), 2, kBenchQueries);
  for (int q = 0; q < n_queries; ++q) {
    const std::vector<float> one(queries.begin() + static_cast<ptrdiff_t>(q) * kBenchDim,
                                 queries.begin() + static_cast<ptrdiff_t>(q + 1) * kBenchDim);
    const auto t = std::chrono::steady_clock::now();
    const auto hits = searcher->search({"q"}, one, o)[0].hits;
    (q == 0 ? cold : warm.emplace_back()) = seconds_since(t);
    for (int j = 0; j < 10; ++j) ids.push_back(j < static_cast<int>(hits.size()) ? hits[j].id : -1);
  }
  const std::string truth_path = dir + "/truth.bin";
  double recall_at_10 = -1;
  if (type == "flat" && bench_env("CNCLIP_SCALE_TRUTH") == "write") {
    std::ofstream(truth_path, std::ios::binary)
        .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 8));
  }
  std::vector<int64_t> truth(ids.size());
  if (std::ifstream in{truth_path, std::ios::binary}) {
    in.read(reinterpret_cast<char*>(truth.data()), static_cast<std::streamsize>(truth.size() * 8));
    int64_t found = 0;
    for (int q = 0; q < n_queries; ++q) {
      const std::set<int64_t> got(ids.begin() + q * 10, ids.begin() + q * 10 + 10);
      for (int j = 0; j < 10; ++j) found += got.count(truth[static_cast<size_t>(q) * 10 + j]);
    }
    recall_at_10 = double(found) / (n_queries * 10.0);
  }
  std::sort(warm.begin(), warm.end());
  // The type loaded, asked of the store after the searcher is gone: asking while it held the snapshot
  // mapped the file a second time, which the process's peak RSS counted twice (the 1M flat search
  // "peaked at 4.0 GB for a 2 GB snapshot" in the first run of this bench).
  searcher.reset();
  nlohmann::json j{{"phase", "query"},
                   {"type", type},
                   {"loaded", store->search_vectors()->type()},
                   {"open_s", open},
                   {"cold_s", open + cold},
                   {"warm_p50_ms", warm[warm.size() / 2] * 1000},
                   {"warm_p90_ms", warm[warm.size() * 9 / 10] * 1000},
                   {"recall_at_10", recall_at_10},
                   {"scan", sq_scan_isa()}};
  std::printf("SCALE %s\n", j.dump().c_str());
}

// An index run in progress: CNCLIP_SCALE_ADD vectors committed in batches of 100, no new snapshot
// (what a search sees mid-run: the snapshot plus that delta).
TEST(ScaleBench, DISABLED_Run) {
  run_as_cnclip_does();
  const std::string dir = bench_env("CNCLIP_SCALE_DIR");
  const int64_t add = std::atoll(bench_env("CNCLIP_SCALE_ADD", "5000").c_str());
  auto store = IndexStore::open(dir + "/index", IndexAccess::kWrite);
  const int64_t n = store->catalog().count();
  const auto more = clustered_vectors(add, kBenchDim, 1000, 77);
  for (int64_t at = 0; at < add; at += 100) {
    CatalogTransaction tx(store->catalog());
    for (int64_t i = at; i < std::min(add, at + 100); ++i) {
      store->catalog().insert(FileRecord{0, path_of(n + i + 1), 1, 0, "h", 0},
                              &more[static_cast<size_t>(i) * kBenchDim], kBenchDim);
    }
    tx.commit();
  }
  std::printf("SCALE {\"phase\":\"run\",\"added\":%lld}\n", static_cast<long long>(add));
}

}  // namespace
}  // namespace cnclip
