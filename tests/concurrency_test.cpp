// Searches while an index run commits batches: a reader (its own IndexStore, as a second `cnclip
// search-text` process would have) must only ever see a committed state, with every vector under
// the right path and every score a cosine. Part of the ThreadSanitizer slice (scripts/test.sh), which
// also runs the encode pipeline and catalog tests.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cnclip/indexer.h"
#include "cnclip/model.h"
#include "cnclip/search.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cnclip;

namespace {

// Small fixture images only, so that a run has many short batches for the reader to land between.
const char* kSmallImages[] = {"pokemon.jpeg", "rocket_rgb16_17x9.png", "camera_gray_1000x100.png",
                              "astronaut_palette.png"};

struct Observation {
  int64_t size = 0;                                 // Searcher::size()
  std::vector<std::pair<std::string, float>> hits;  // path, score
};

double dot(const std::vector<float>& a, const float* b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

}  // namespace

TEST(Concurrency, SearchDuringAnIndexRunSeesOnlyCommittedStates) {
  test::TempDir dir;
  const std::string photos = dir / "photos", index_dir = dir / "index";
  fs::create_directories(photos);
  const int kCopies = 10;  // 40 photos in batches of 2: 20 commits
  for (int copy = 0; copy < kCopies; ++copy) {
    for (const char* name : kSmallImages) {
      test::copy_file(test::fixtures(std::string("images/") + name), photos + "/" + std::to_string(copy) + "_" + name);
    }
  }
  const int64_t kTotal = kCopies * 4;

  // One intra-op thread: LibTorch's OpenMP pool is not instrumented for ThreadSanitizer.
  auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 1});
  const std::vector<float> query = model->encode_texts({"小狗"});
  const auto dim = query.size();
  auto writer = IndexStore::open(index_dir, IndexAccess::kWrite);  // creates the catalog

  std::atomic<bool> done{false};
  std::vector<Observation> seen;
  std::string reader_error;
  std::thread reader([&] {
    try {
      // Until the run ends, then once more: the last read sees the final state.
      for (bool last = false; !last;) {
        last = done.load();
        auto store = IndexStore::open(index_dir, IndexAccess::kRead);
        Searcher searcher(*store);
        SearchOptions options;
        options.top_k = 1000;  // everything
        Observation o;
        o.size = searcher.size();
        if (o.size > 0) {
          const auto results = searcher.search({"q"}, query, options);
          for (const auto& hit : results.at(0).hits) o.hits.emplace_back(hit.path, hit.score);
        }
        seen.push_back(std::move(o));
      }
    } catch (const std::exception& e) {
      reader_error = e.what();
    }
  });

  IndexOptions options;
  options.paths = {photos};
  options.encode.batch_size = 2;
  options.encode.decode_threads = 2;
  options.encode.model_workers = 2;
  IndexObserver observer;
  IndexSummary summary;
  try {
    summary = run_index(*writer, *model, options, observer);
  } catch (...) {
    done = true;
    reader.join();
    throw;
  }
  done = true;
  reader.join();
  ASSERT_EQ(reader_error, "");
  EXPECT_EQ(summary.added, kTotal);

  // The final embeddings: every score a reader saw must be the query's cosine with the vector
  // committed for that very path (a vector under another file's id would give another score).
  std::map<std::string, std::vector<float>> committed;
  for (const auto& f : writer->catalog().files_under("")) committed[f.path] = writer->catalog().embedding(f.id);
  ASSERT_EQ(static_cast<int64_t>(committed.size()), kTotal);

  ASSERT_GE(seen.size(), 2u);
  int64_t previous = 0;
  int in_between = 0;  // reads that landed while the run was part-way through
  for (const auto& o : seen) {
    EXPECT_GE(o.size, previous) << "a reader saw the index shrink during an add-only run";
    previous = o.size;
    if (o.size > 0 && o.size < kTotal) ++in_between;
    EXPECT_EQ(static_cast<int64_t>(o.hits.size()), o.size) << "hits and vector count disagree";
    std::set<std::string> paths;
    for (const auto& [path, score] : o.hits) {
      EXPECT_TRUE(paths.insert(path).second) << path << " returned twice";
      EXPECT_GE(score, -1.0f - 1e-5f);
      EXPECT_LE(score, 1.0f + 1e-5f);
      auto it = committed.find(path);
      ASSERT_NE(it, committed.end()) << path << " is not in the final index";
      ASSERT_EQ(it->second.size(), dim);
      EXPECT_NEAR(score, dot(query, it->second.data()), 1e-4) << path;
    }
  }
  EXPECT_EQ(seen.back().size, kTotal);
  // Not a hard requirement of correctness, but without it the test proves little: with 20 commits
  // and a reader looping without pause, some reads land mid-run.
  EXPECT_GT(in_between, 0) << "no read landed during the run (" << seen.size() << " reads)";
}
