// run_index and embed_image_files as a library: the same embeddings whatever the split of the model
// over threads, and a model that fails inside a worker ends the run with its error and leaves the
// index as it was.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "cnclip/embed_files.h"
#include "cnclip/error.h"
#include "cnclip/image.h"
#include "cnclip/indexer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cnclip;

namespace {

const char* kImages[] = {"astronaut_palette.png", "camera_gray_1000x100.png",
                         "chelsea_rgba.png",      "coffee_2048x1366_exif6.jpg",
                         "pokemon.jpeg",          "rocket_rgb16_17x9.png"};

class RecordingObserver : public IndexObserver {
 public:
  void on_progress(int64_t done, int64_t total) override {
    EXPECT_GE(done, last_done);  // progress never goes back, whatever order batches finish in
    last_done = done;
    last_total = total;
  }
  void on_file_error(const Error& e) override { errors.push_back(e.message); }
  int64_t last_done = -1, last_total = -1;
  std::vector<std::string> errors;
};

// A folder of the fixture images, each under several names (11 photos, one bad file).
void make_photos(const std::string& dir) {
  fs::create_directories(dir);
  int n = 0;
  for (int copy = 0; copy < 2; ++copy) {
    for (const char* name : kImages) {
      if (n++ == 11) break;
      test::copy_file(test::fixtures(std::string("images/") + name), dir + "/" + std::to_string(copy) + "_" + name);
    }
  }
  test::write_text(dir + "/broken.jpg", "not a jpeg");
}

std::map<std::string, std::vector<float>> embeddings_of(IndexStore& store) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& f : store.catalog().files_under("")) out[f.path] = store.catalog().embedding(f.id);
  return out;
}

std::map<std::string, std::vector<float>> index_with(const std::string& photos, const std::string& index_dir,
                                                     int workers, int batch_size, RecordingObserver& observer) {
  auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 2});
  auto store = IndexStore::open(index_dir, IndexAccess::kWrite);
  IndexOptions options;
  options.paths = {photos};
  options.encode.model_workers = workers;
  options.encode.batch_size = batch_size;
  IndexSummary summary = run_index(*store, *model, options, observer);
  EXPECT_EQ(summary.added, 11);
  EXPECT_EQ(summary.failed, 1);
  return embeddings_of(*store);
}

}  // namespace

TEST(Indexer, SameEmbeddingsWhateverTheWorkerSplit) {
  test::TempDir dir;
  make_photos(dir / "photos");
  // Reference: each image encoded alone, on the calling thread.
  auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 2});
  const int r = model->manifest().image.size;
  std::map<std::string, std::vector<float>> expected;
  for (const auto& entry : fs::directory_iterator(dir / "photos")) {
    if (entry.path().filename() == "broken.jpg") continue;
    std::vector<float> pixels(static_cast<size_t>(3) * r * r);
    auto bytes = read_file_bytes(entry.path().string()).value();
    ASSERT_TRUE(
        preprocess_image(bytes, entry.path().string(), model->manifest().image, DecodeOptions{}, pixels.data()));
    expected[fs::canonical(entry.path()).string()] = model->encode_images(pixels.data(), 1);
  }
  ASSERT_EQ(expected.size(), 11u);

  int run = 0;
  for (auto [workers, batch] : std::vector<std::pair<int, int>>{{1, 4}, {2, 4}, {2, 3}, {2, 1}, {0, 4}}) {
    RecordingObserver observer;
    auto got = index_with(dir / "photos", dir / ("index" + std::to_string(run++)), workers, batch, observer);
    EXPECT_EQ(observer.last_done, 12);
    EXPECT_EQ(observer.last_total, 12);
    ASSERT_EQ(observer.errors.size(), 1u);
    EXPECT_NE(observer.errors[0].find("broken.jpg"), std::string::npos) << observer.errors[0];
    ASSERT_EQ(got.size(), expected.size()) << "workers " << workers << " batch " << batch;
    for (const auto& [path, e] : expected) {
      ASSERT_TRUE(got.count(path)) << path;
      ASSERT_EQ(got[path].size(), e.size());
      for (size_t d = 0; d < e.size(); ++d) {
        EXPECT_NEAR(got[path][d], e[d], 1e-5) << path << " workers " << workers << " batch " << batch;
      }
    }
  }
}

// Photos with the same bytes are one vector in the index, whatever batches the model saw them in:
// int8's activation scale is chosen per model call, so the same pixels among other photos embed
// differently (and OpenBLAS's AVX2 kernels round a row by its batch mates, ~1e-7, in fp32).
TEST(Indexer, ExactCopiesShareOneEmbedding) {
  test::TempDir dir;
  fs::create_directories(dir / "photos");
  const std::string original = test::fixtures("images/pokemon.jpeg");
  // The copies land in batches with different other photos at every batch size tried.
  int n = 0;
  for (const char* name : kImages) {
    test::copy_file(test::fixtures(std::string("images/") + name), dir / ("photos/" + std::string(name)));
    if (++n % 2 == 0) test::copy_file(original, dir / ("photos/copy" + std::to_string(n) + ".jpeg"));
  }
  auto model = Model::open(test::tiny_int8_bundle(), ModelOptions{"cpu", 2});
  auto copies_of = [&](IndexStore& store, const std::string& under = "") {
    std::vector<std::pair<int64_t, std::vector<float>>> out;
    for (const auto& f : store.catalog().files_under(under)) {
      if (f.path.find("copy") != std::string::npos || f.path.find("pokemon") != std::string::npos) {
        out.emplace_back(f.id, store.catalog().embedding(f.id));
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  };
  auto run = [&](IndexStore& store, int batch, const std::string& path, bool reindex) {
    IndexOptions options;
    options.paths = {path};
    options.encode.model_workers = 2;
    options.encode.batch_size = batch;
    options.reindex = reindex;
    RecordingObserver observer;
    return run_index(store, *model, options, observer);
  };
  const size_t dim = static_cast<size_t>(model->manifest().embedding_dim);
  auto expect_one_vector = [dim](const std::vector<std::pair<int64_t, std::vector<float>>>& copies, size_t count,
                                 const std::string& what) {
    ASSERT_EQ(copies.size(), count) << what;
    ASSERT_EQ(copies[0].second.size(), dim) << what;
    for (const auto& [id, e] : copies) EXPECT_EQ(e, copies[0].second) << what << ": file id " << id;
  };
  for (int batch : {1, 2, 3, 4}) {
    SCOPED_TRACE("batch " + std::to_string(batch));
    auto store = IndexStore::open(dir / ("index" + std::to_string(batch)), IndexAccess::kWrite);
    EXPECT_EQ(run(*store, batch, dir / "photos", false).added, 9);
    expect_one_vector(copies_of(*store), 4, "one run");
    // A later run's copy, a touched copy encoded again, and a --reindex of everything.
    fs::create_directories(dir / ("more" + std::to_string(batch)));
    test::copy_file(test::fixtures("images/chelsea_rgba.png"), dir / ("more" + std::to_string(batch) + "/a.png"));
    test::copy_file(original, dir / ("more" + std::to_string(batch) + "/copy_later.jpeg"));
    EXPECT_EQ(run(*store, batch, dir / ("more" + std::to_string(batch)), false).added, 2);
    expect_one_vector(copies_of(*store), 5, "a later run");
    fs::last_write_time(dir / "photos/copy2.jpeg", fs::file_time_type::clock::now() + std::chrono::hours(1));
    EXPECT_EQ(run(*store, batch, dir / "photos", false).updated, 1);
    expect_one_vector(copies_of(*store), 5, "a touched copy");
    // --reindex asks for the model's output again: a copy outside the paths given is no source then
    // (its vector may be of other decode options, or an older export); it takes the fresh vector.
    const std::string photos = fs::canonical(dir / "photos").string();
    EXPECT_EQ(run(*store, batch, dir / "photos", true).updated, 9);
    expect_one_vector(copies_of(*store), 5, "--reindex of one folder");
    // Even when the photos outside hold another vector: --reindex of the later folder encodes its copy,
    // and the copies outside take its vector.
    const std::string more = dir / ("more" + std::to_string(batch));
    std::vector<float> planted(dim, 0.0f);
    planted[0] = 1.0f;
    {
      CatalogTransaction tx(store->catalog());
      for (const auto& f : store->catalog().files_under(photos)) {
        if (f.path.find("copy") != std::string::npos || f.path.find("pokemon") != std::string::npos) {
          store->catalog().update(f, planted.data(), static_cast<int>(dim));
        }
      }
      tx.commit();
    }
    EXPECT_EQ(run(*store, batch, more, true).updated, 2);
    const auto later = store->catalog().find(fs::canonical(more + "/copy_later.jpeg").string());
    ASSERT_TRUE(later.has_value());
    EXPECT_NE(store->catalog().embedding(later->id), planted);
    expect_one_vector(copies_of(*store), 5, "--reindex beside another vector");
  }
}

TEST(Indexer, AModelFailingInAWorkerEndsTheRunAndKeepsTheIndex) {
  test::TempDir dir;
  make_photos(dir / "photos");
  RecordingObserver first;
  auto before = index_with(dir / "photos", dir / "index", 2, 4, first);

  // Another folder, with a bundle whose image tower is damaged: the load fails on the loader
  // thread and reaches every worker; the run must end with that error, not hang or half-commit.
  fs::create_directories(dir / "more");
  test::copy_file(test::fixtures("images/pokemon.jpeg"), dir / "more/new.jpeg");
  fs::copy(test::tiny_bundle(), dir / "bundle", fs::copy_options::recursive);
  const std::string tower = dir / "bundle/image_encoder.pt";
  std::string bytes = test::read_text(tower);
  test::write_text(tower, bytes.substr(0, bytes.size() / 2));
  for (int workers : {1, 2}) {
    try {
      auto model = Model::open(dir / "bundle", ModelOptions{"cpu", 2});
      auto store = IndexStore::open(dir / "index", IndexAccess::kWrite);
      IndexOptions options;
      options.paths = {dir / "more"};
      options.encode.model_workers = workers;
      RecordingObserver observer;
      run_index(*store, *model, options, observer);
      ADD_FAILURE() << "run_index succeeded with a damaged image tower";
    } catch (const Exception& e) {
      EXPECT_NE(std::string(e.what()).find("image_encoder.pt"), std::string::npos) << e.what();
    }
  }
  auto store = IndexStore::open(dir / "index", IndexAccess::kRead);
  EXPECT_EQ(embeddings_of(*store), before);
}

TEST(EmbedImageFiles, InInputOrderWithFailuresInPlace) {
  test::TempDir dir;
  test::write_text(dir / "broken.jpg", "not a jpeg");
  std::vector<std::string> paths;
  for (int round = 0; round < 3; ++round) {
    for (const char* name : kImages) paths.push_back(test::fixtures(std::string("images/") + name));
    paths.push_back(dir / "broken.jpg");
    paths.push_back(dir / "missing.png");
  }
  auto model = Model::open(test::tiny_bundle(), ModelOptions{"cpu", 2});
  const int r = model->manifest().image.size;
  for (auto [workers, batch] : std::vector<std::pair<int, int>>{{1, 4}, {2, 3}, {2, 1}}) {
    EmbedFilesOptions options;
    options.encode.model_workers = workers;
    options.encode.batch_size = batch;
    size_t expected_index = 0;
    embed_image_files(*model, paths, options, [&](size_t i, const float* embedding, const Error* error) {
      ASSERT_EQ(i, expected_index++);
      const bool bad = paths[i].find(dir.path()) == 0;
      ASSERT_EQ(embedding == nullptr, bad) << paths[i];
      if (bad) {
        EXPECT_NE(error->message.find(paths[i]), std::string::npos) << error->message;
        return;
      }
      std::vector<float> pixels(static_cast<size_t>(3) * r * r);
      ASSERT_TRUE(preprocess_image_file(paths[i], model->manifest().image, DecodeOptions{}, pixels.data()));
      const auto alone = model->encode_images(pixels.data(), 1);
      for (int d = 0; d < model->dim(); ++d) EXPECT_NEAR(embedding[d], alone[d], 1e-5) << paths[i];
    });
    EXPECT_EQ(expected_index, paths.size()) << "workers " << workers << " batch " << batch;
  }
}
