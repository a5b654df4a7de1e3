// Embedding on many machines (issue 15, point 4): `embed-image --shard K/N --out PREFIX` and the
// merge by `cnclip import`. The split covers every file exactly once for several N and is the same
// wherever the photos are mounted and in whatever order they are listed; the merged index equals an
// index made on one machine (to float rounding: same_rows); importing again changes nothing; a killed or interrupted
// shard continues where it stopped; outputs of another shard or model are never overwritten.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <thread>

#include "cnclip/catalog.h"
#include "cnclip/import.h"
#include "cnclip/npy.h"
#include "cnclip/shard.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void make_photo(const std::string& path, unsigned seed) {
  static const char* sources[] = {"pokemon.jpeg", "chelsea_rgba.png", "astronaut_palette.png"};
  cv::Mat img = cv::imread(test::fixtures(std::string("images/") + sources[seed % 3]), cv::IMREAD_COLOR);
  cv::resize(img, img, cv::Size(120 + seed % 50, 90 + seed % 40));
  cv::theRNG().state = seed;
  cv::Mat noise(img.size(), img.type());
  cv::randn(noise, cv::Scalar::all(0), cv::Scalar::all(20 + seed % 30));
  img += noise + cv::Scalar(seed * 37 % 90, seed * 11 % 90, seed * 5 % 90);
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_TRUE(cv::imwrite(path, img)) << path;
}

// `n` photos in nested folders below `dir`.
void make_photos(const std::string& dir, int n, unsigned seed = 0) {
  for (int i = 0; i < n; ++i) {
    make_photo(dir + "/y" + std::to_string(2020 + i % 3) + "/m" + std::to_string(i % 5) + "/p" + std::to_string(i) +
                   (i % 4 == 3 ? ".png" : ".jpg"),
               seed + static_cast<unsigned>(i));
  }
}

// path -> embedding of an index.
std::map<std::string, std::vector<float>> index_rows(const std::string& index) {
  auto c = Catalog::open_read_only(index + "/catalog.sqlite3");
  std::map<std::string, std::vector<float>> out;
  for (const auto& r : c->files_under("")) out[r.path] = c->embedding(r.id);
  return out;
}

// Whether two sets of rows hold the same paths with the same embeddings: to float rounding (1e-6),
// not bit for bit. A photo's embedding is computed by the same tower whatever batch it is in, but
// which BLAS kernel computes a row of a batch's product, and so its last bits, may depend on the
// batch: OpenBLAS's AVX2 kernels (OPENBLAS_CORETYPE=Haswell, as this workplace sets it) on an
// AVX-512 CPU gave rows 1e-7 apart for one image alone and in a batch of four; its own choice there
// (Cooperlake) and BLIS compute a row alike whatever the batch.
constexpr float kRounding = 1e-6f;
::testing::AssertionResult same_rows(const std::map<std::string, std::vector<float>>& got,
                                     const std::map<std::string, std::vector<float>>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << got.size() << " rows, expected " << want.size();
  }
  for (const auto& [path, embedding] : want) {
    auto it = got.find(path);
    if (it == got.end()) return ::testing::AssertionFailure() << "missing " << path;
    if (it->second.size() != embedding.size()) return ::testing::AssertionFailure() << "dimension of " << path;
    for (size_t i = 0; i < embedding.size(); ++i) {
      if (!(std::fabs(it->second[i] - embedding[i]) <= kRounding)) {
        return ::testing::AssertionFailure()
               << path << " differs at " << i << ": " << it->second[i] << " against " << embedding[i];
      }
    }
  }
  return ::testing::AssertionSuccess();
}

// path -> row of PREFIX.npy, from PREFIX.paths.
std::map<std::string, std::vector<float>> shard_rows(const std::string& prefix) {
  auto m = read_npy(prefix + ".npy");
  EXPECT_TRUE(m) << prefix;
  if (!m) return {};
  const auto paths = test::lines(test::read_text(prefix + ".paths"));
  EXPECT_EQ(static_cast<int64_t>(paths.size()), m.value().shape[0]);
  const auto data = m.value().as_float();
  const size_t dim = static_cast<size_t>(m.value().shape[1]);
  std::map<std::string, std::vector<float>> out;
  for (size_t i = 0; i < paths.size(); ++i) out[paths[i]] = std::vector<float>(&data[i * dim], &data[(i + 1) * dim]);
  return out;
}

// Every file of a directory tree with its size and mtime, to see that nothing was written.
std::map<std::string, std::pair<uintmax_t, fs::file_time_type>> tree_state(const std::string& dir) {
  std::map<std::string, std::pair<uintmax_t, fs::file_time_type>> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    // An index's lock file is written by every writer that takes it; it holds no data.
    if (e.is_regular_file() && e.path().filename() != "lock")
      out[e.path().string()] = {e.file_size(), e.last_write_time()};
  }
  return out;
}

// The key of every file in shard K of N, for K = 1..N, through select_shard.
std::vector<std::set<std::string>> split(const std::vector<std::string>& inputs, int64_t n,
                                         const std::string& root = "") {
  std::vector<std::set<std::string>> out;
  for (int64_t k = 1; k <= n; ++k) {
    std::set<std::string> keys;
    for (const auto& f : select_shard(inputs, ShardSpec{k, n}, root, WalkOptions{}).files) {
      EXPECT_TRUE(keys.insert(f.key).second) << "twice in one shard: " << f.key;
    }
    out.push_back(std::move(keys));
  }
  return out;
}

TEST(ShardSpecParse, TakesKOverN) {
  auto s = parse_shard_spec("3/8");
  EXPECT_EQ(s.index, 3);
  EXPECT_EQ(s.count, 8);
  EXPECT_EQ(s.to_string(), "3/8");
  EXPECT_EQ(parse_shard_spec("1/1").count, 1);
  EXPECT_EQ(parse_shard_spec("1000000/1000000").index, 1000000);
}

// Bad K/N: exit 2 and one line in plain words, before the model is even looked at (the model path
// given does not exist).
TEST(ShardCli, BadShardsAreUsageErrorsInPlainWords) {
  test::TempDir dir;
  make_photo(dir / "p/a.jpg", 1);
  const std::string expects = ": expects K/N, two whole numbers with 1 <= K <= N, e.g. 2/8 for the second of 8 shards";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"0/4", "--shard 0/4: shards are counted from 1 (the first of 4 is 1/4)"},
      {"5/4", "--shard 5/4: there are only 4 shards (K must be at most N)"},
      {"1/0", "--shard 1/0: the number of shards N must be at least 1"},
      {"0/0", "--shard 0/0: the number of shards N must be at least 1"},
      {"1/2000000", "--shard 1/2000000: at most 1000000 shards"},
      {"a/b", "--shard 'a/b'" + expects},
      {"3", "--shard '3'" + expects},
      {"-1/4", "--shard '-1/4'" + expects},
      {"1.5/4", "--shard '1.5/4'" + expects},
      {"1/4x", "--shard '1/4x'" + expects},
      {" 1/4", "--shard ' 1/4'" + expects},
      {"1/", "--shard '1/'" + expects},
      {"/4", "--shard '/4'" + expects},
      {"", "--shard ''" + expects},
      {"99999999999999999999/4", "--shard '99999999999999999999/4'" + expects},
  };
  for (const auto& [value, message] : cases) {
    SCOPED_TRACE(value);
    auto r =
        test::run_cnclip({"embed-image", "--shard", value, dir / "p", "--model", dir / "no-model", "--out", dir / "s"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err, "cnclip: error: " + message + "\n");
    EXPECT_EQ(r.out, "");
    EXPECT_FALSE(fs::exists(dir / "s.partial"));
  }
  // The other options of a shard run, the same way.
  const std::vector<std::pair<std::vector<std::string>, std::string>> others = {
      {{"--shard", "1/2", "--save-every", "5"}, "--save-every goes with --out (only written shards are resumed)"},
      {{"--shard", "1/2", "--out", dir / "nowhere/s"},
       "--out " + dir / "nowhere/s" + ": no folder " + dir / "nowhere (No such file or directory)"},
      {{"--shard", "1/2", "--out", dir / "p/"},
       "--out " + dir / "p/: give a prefix for the file names (e.g. " + dir / "p/" + "shard-1), not a folder"},
      {{"--shard", "1/2", "--root", dir / "p/a.jpg"}, "--root: " + dir / "p/a.jpg is not a folder"},
      {{"--shard", "1/2", "--root", dir / "elsewhere"},
       "--root: no folder " + dir / "elsewhere (No such file or directory)"},
      {{"--shard", "1/2", "--save-every", "-1", "--out", dir / "s"}, ""},
  };
  for (const auto& [args, message] : others) {
    SCOPED_TRACE(args[2]);
    auto r =
        test::run_cnclip(test::concat(test::concat({"embed-image"}, args), {dir / "p", "--model", dir / "no-model"}));
    EXPECT_EQ(r.exit_code, 2) << r.err;
    if (!message.empty()) {
      EXPECT_EQ(r.err, "cnclip: error: " + message + "\n");
    }
  }
  // A listed file outside --root has no key relative to it.
  fs::create_directories(dir / "root");
  auto r = test::run_cnclip(
      {"embed-image", "--shard", "1/2", "--root", dir / "root", dir / "p/a.jpg", "--model", dir / "no-model"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cnclip: error: " + dir / "p/a.jpg" + ": not below --root " + dir / "root" +
                       " (every input must be, so that its key is the same everywhere)\n");
}

// The split function is XXH3-64 of the key, pinned by the xxHash reference value of the empty input
// (0x2D06800538D394C2, xxHash's own test vectors): a library or code change that moved files between
// shards would split one collection differently on machines with different builds.
TEST(ShardSplit, IsXxh3OfTheKey) {
  const uint64_t empty = 0x2D06800538D394C2ull;
  for (int64_t n : {1, 2, 3, 7, 8, 1000, 999983}) EXPECT_EQ(shard_of("", n), 1 + static_cast<int64_t>(empty % n)) << n;
}

// Every file in exactly one shard, for several N; the shards of similar size.
TEST(ShardSplit, EveryFileInExactlyOneShard) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  std::set<std::string> all;
  for (int i = 0; i < 400; ++i) {
    const std::string rel =
        "d" + std::to_string(i % 9) + "/e" + std::to_string(i % 4) + "/f" + std::to_string(i) + ".jpg";
    fs::create_directories(fs::path(photos + "/" + rel).parent_path());
    test::write_text(photos + "/" + rel, "x");  // the split never opens a file
    all.insert(rel);
  }
  test::write_text(photos + "/notes.txt", "not a photo");
  fs::create_directories(photos + "/.hidden");
  test::write_text(photos + "/.hidden/h.jpg", "hidden: not taken by default");
  for (int64_t n : {1, 2, 3, 5, 8, 16, 50}) {
    SCOPED_TRACE(n);
    const auto shards = split({photos}, n);
    std::set<std::string> seen;
    size_t smallest = all.size(), largest = 0;
    for (const auto& keys : shards) {
      for (const auto& k : keys) EXPECT_TRUE(seen.insert(k).second) << "in two shards: " << k;
      smallest = std::min(smallest, keys.size());
      largest = std::max(largest, keys.size());
    }
    EXPECT_EQ(seen, all);
    const double mean = 400.0 / static_cast<double>(n);
    if (n <= 8) {
      EXPECT_GT(smallest, mean * 0.6);
      EXPECT_LT(largest, mean * 1.4);
    }
    // select_shard's total counts every file of every shard.
    EXPECT_EQ(select_shard({photos}, ShardSpec{1, n}, "", WalkOptions{}).total, 400);
  }
}

// The same photos mounted elsewhere, given in another order, or listed instead of walked (relative
// to --root): each file lands in the same shard.
TEST(ShardSplit, SameShardsWhereverAndHoweverTheFilesAreGiven) {
  test::TempDir dir;
  std::vector<std::string> rels;
  for (int i = 0; i < 120; ++i) rels.push_back("a" + std::to_string(i % 6) + "/b" + std::to_string(i) + ".jpg");
  for (const char* place : {"machine1/mnt/photos", "machine2/data/shared/photos"}) {
    for (const auto& rel : rels) {
      const std::string file = dir / (std::string(place) + "/" + rel);
      fs::create_directories(fs::path(file).parent_path());
      test::write_text(file, "x");
    }
  }
  const std::string one = dir / "machine1/mnt/photos", two = dir / "machine2/data/shared/photos";
  const auto walked1 = split({one}, 5), walked2 = split({two}, 5);
  EXPECT_EQ(walked1, walked2);
  // Each top folder walked on its own, relative to --root: the same keys, so the same split.
  std::vector<std::string> folders;
  for (int i = 5; i >= 0; --i) folders.push_back(two + "/a" + std::to_string(i));
  EXPECT_EQ(split(folders, 5, two), walked1);
  // A list of files in reverse order, relative to --root.
  std::vector<std::string> listed;
  for (auto it = rels.rbegin(); it != rels.rend(); ++it) listed.push_back(two + "/" + *it);
  EXPECT_EQ(split(listed, 5, two), walked1);
  // A list of relative paths without --root: the key is the path as given, lexically normal.
  std::vector<std::string> relative;
  for (const auto& r : rels) relative.push_back("./" + r);
  const fs::path cwd = fs::current_path();
  fs::current_path(one);
  const auto rel_split = split(relative, 5);
  fs::current_path(cwd);
  EXPECT_EQ(rel_split, walked1);
}

// The point of it all: N shards embedded separately and imported equal one `cnclip index` of the
// same folder, row for row (to float rounding, same_rows), whatever the batch sizes; a broken file is listed as
// failed by the one shard it belongs to.
TEST(ShardMerge, MergedShardsEqualOneMachineIndex) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 36);
  test::write_text(photos + "/y2021/broken.jpg", "not an image");
  auto ref = test::run_cnclip({"index", "-q", photos, "--model", test::tiny_bundle(), "--index", dir / "ref"});
  ASSERT_EQ(ref.exit_code, 0) << ref.err;
  const auto want = index_rows(dir / "ref");
  ASSERT_EQ(want.size(), 36u);

  for (int n : {1, 3, 4}) {
    SCOPED_TRACE(n);
    std::vector<std::string> npys;
    int failed_listed = 0;
    for (int k = 1; k <= n; ++k) {
      const std::string prefix = dir / ("n" + std::to_string(n) + "-" + std::to_string(k));
      auto r =
          test::run_cnclip({"embed-image", "-q", "--shard", std::to_string(k) + "/" + std::to_string(n), "--batch-size",
                            std::to_string(1 + k % 3), "--out", prefix, photos, "--model", test::tiny_bundle()});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(r.out, "");  // nothing on stdout: the outputs are the files
      const json manifest = json::parse(test::read_text(prefix + ".json"));
      EXPECT_EQ(manifest["format"], "cnclip-shard");
      EXPECT_EQ(manifest["settings"]["shard"], std::to_string(k) + "/" + std::to_string(n));
      EXPECT_EQ(manifest["settings"]["model"]["embedding_dim"], 32);
      EXPECT_EQ(manifest["embedded"].get<size_t>(), shard_rows(prefix).size());
      for (const auto& f : manifest["failed"]) {
        EXPECT_EQ(f["path"], photos + "/y2021/broken.jpg");
        ++failed_listed;
      }
      EXPECT_FALSE(fs::exists(prefix + ".partial")) << "the saved work is removed once the outputs are written";
      npys.push_back(prefix + ".npy");
    }
    EXPECT_EQ(failed_listed, 1);
    const std::string index = dir / ("merged" + std::to_string(n));
    auto imp = test::run_cnclip(
        test::concat(test::concat({"import"}, npys), {"--model", test::tiny_bundle(), "--index", index}));
    ASSERT_EQ(imp.exit_code, 0) << imp.err;
    EXPECT_NE(imp.err.find("imported 36 new and 0 updated embeddings"), std::string::npos) << imp.err;
    EXPECT_TRUE(same_rows(index_rows(index), want));
    // And searches agree: the same files in the same order with the same scores (to rounding).
    const std::vector<std::string> query{"search-image", photos + "/y2020/m0/p0.jpg", "-k", "10", "--format", "jsonl",
                                         "--model",      test::tiny_bundle()};
    auto a = test::run_cnclip(test::concat(query, {"--index", dir / "ref"}));
    auto b = test::run_cnclip(test::concat(query, {"--index", index}));
    ASSERT_EQ(a.exit_code, 0) << a.err;
    ASSERT_EQ(b.exit_code, 0) << b.err;
    // (Imported entries have no width and height: import does not open the photos.)
    auto hits = [](const std::string& out) {
      std::vector<std::pair<std::string, double>> v;
      for (const auto& l : test::lines(out)) v.emplace_back(json::parse(l)["path"], json::parse(l)["score"]);
      return v;
    };
    const auto ha = hits(a.out), hb = hits(b.out);
    ASSERT_EQ(ha.size(), 10u);
    ASSERT_EQ(hb.size(), ha.size());
    for (size_t i = 0; i < ha.size(); ++i) {
      EXPECT_EQ(hb[i].first, ha[i].first) << i;
      EXPECT_NEAR(hb[i].second, ha[i].second, 1e-5) << i;
    }
  }
}

// The shard's JSON lines on stdout (no --out) import to the same rows as its .npy.
TEST(ShardMerge, JsonlOfAShardImportsTheSameRows) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 20, 100);
  auto j = test::run_cnclip({"embed-image", "--shard", "2/3", photos, "--model", test::tiny_bundle()});
  ASSERT_EQ(j.exit_code, 0) << j.err;
  test::write_text(dir / "s.jsonl", j.out);
  auto n = test::run_cnclip(
      {"embed-image", "-q", "--shard", "2/3", "--out", dir / "s", photos, "--model", test::tiny_bundle()});
  ASSERT_EQ(n.exit_code, 0) << n.err;
  const auto rows = shard_rows(dir / "s");
  EXPECT_EQ(test::lines(j.out).size(), rows.size());
  EXPECT_NE(j.err.find("cnclip: shard 2/3: " + std::to_string(rows.size()) + " of 20 files"), std::string::npos)
      << j.err;
  // A folder is a collection only with --shard or --out (among images to print, it is a mistake);
  // --shard 1/1 gives every photo of it, in the walk's sorted order, and the three shards' lines
  // together are exactly those lines.
  auto plain = test::run_cnclip({"embed-image", photos, "--model", test::tiny_bundle()});
  EXPECT_EQ(plain.exit_code, 2);
  EXPECT_EQ(plain.err, "cnclip: error: image: '" + photos +
                           "' is a folder; give image files ('cnclip index' takes folders) (see 'cnclip embed-image "
                           "--help')\n");
  auto all = test::run_cnclip({"embed-image", "-q", "--shard", "1/1", photos, "--model", test::tiny_bundle()});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  const auto all_lines = test::lines(all.out);
  ASSERT_EQ(all_lines.size(), 20u);
  std::vector<std::string> sorted_paths, shard_lines;
  for (const auto& l : all_lines) sorted_paths.push_back(json::parse(l)["path"]);
  EXPECT_TRUE(std::is_sorted(sorted_paths.begin(), sorted_paths.end()));
  for (int k = 1; k <= 3; ++k) {
    auto part = test::run_cnclip(
        {"embed-image", "-q", "--shard", std::to_string(k) + "/3", photos, "--model", test::tiny_bundle()});
    ASSERT_EQ(part.exit_code, 0) << part.err;
    for (const auto& l : test::lines(part.out)) shard_lines.push_back(l);
  }
  auto by_path = [](const std::vector<std::string>& lines) {
    std::map<std::string, std::vector<float>> out;
    for (const auto& l : lines) out[json::parse(l)["path"]] = json::parse(l)["embedding"].get<std::vector<float>>();
    return out;
  };
  EXPECT_EQ(shard_lines.size(), all_lines.size());
  EXPECT_TRUE(same_rows(by_path(shard_lines), by_path(all_lines)));
  ASSERT_EQ(
      test::run_cnclip({"import", dir / "s.jsonl", "--model", test::tiny_bundle(), "--index", dir / "a"}).exit_code, 0);
  ASSERT_EQ(test::run_cnclip({"import", dir / "s.npy", "--model", test::tiny_bundle(), "--index", dir / "b"}).exit_code,
            0);
  EXPECT_TRUE(same_rows(index_rows(dir / "a"), rows));  // two runs of the shard: to rounding
  EXPECT_EQ(index_rows(dir / "b"), rows);               // the same run's rows: exactly
}

// Importing shards a second time (all of them, or one, in any order) changes nothing: no row, no
// generation, no file of the index is written.
TEST(ShardMerge, ImportingTwiceChangesNothing) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 24, 200);
  std::vector<std::string> npys;
  for (int k = 1; k <= 3; ++k) {
    const std::string prefix = dir / ("s" + std::to_string(k));
    ASSERT_EQ(test::run_cnclip({"embed-image", "-q", "--shard", std::to_string(k) + "/3", "--out", prefix, photos,
                                "--model", test::tiny_bundle()})
                  .exit_code,
              0);
    npys.push_back(prefix + ".npy");
  }
  const std::string index = dir / "idx";
  const std::vector<std::string> common{"--model", test::tiny_bundle(), "--index", index};
  auto first = test::run_cnclip(test::concat(test::concat({"import"}, npys), common));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  auto snapshot_of = [&] {
    auto c = Catalog::open_read_only(index + "/catalog.sqlite3");
    std::vector<std::tuple<int64_t, std::string, int64_t, int64_t, int64_t, std::vector<float>>> rows;
    for (const auto& r : c->files_under(""))
      rows.emplace_back(r.id, r.path, r.size, r.mtime_ns, r.indexed_at, c->embedding(r.id));
    return std::make_pair(c->generation(), rows);
  };
  const auto before = snapshot_of();
  const auto files_before = tree_state(index);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // a rewrite would show in indexed_at
  for (const auto& again : std::vector<std::vector<std::string>>{npys, {npys[1]}, {npys[2], npys[0], npys[1]}}) {
    SCOPED_TRACE(again.size());
    auto r = test::run_cnclip(test::concat(test::concat({"import"}, again), common));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("imported 0 new and 0 updated embeddings"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(" unchanged (already there)"), std::string::npos) << r.err;
    EXPECT_EQ(snapshot_of(), before);
    EXPECT_EQ(tree_state(index), files_before) << "a file of the index was written";
  }
  EXPECT_EQ(before.second.size(), 24u);
}

// Runs embed-image --out in a child process; returns its pid. stderr goes to `err`.
pid_t start_shard(const std::vector<std::string>& args, const std::string& err) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>("cnclip")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(CNCLIP_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

size_t saved_chunks(const std::string& partial) {
  size_t n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(partial, ec)) n += e.path().extension() == ".npy" ? 1 : 0;
  return n;
}

// Waits until `pid` has saved `chunks` chunks in `partial` (up to a minute, for sanitizer builds).
bool wait_for_chunks(pid_t pid, const std::string& partial, size_t chunks) {
  for (int i = 0; i < 12000; ++i) {
    if (saved_chunks(partial) >= chunks) return true;
    if (waitpid(pid, nullptr, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

class ShardResume : public ::testing::Test {
 protected:
  void SetUp() override {
    make_photos(photos_, 90, 300);
    auto r = test::run_cnclip({"embed-image", "-q", "--out", dir_ / "clean", photos_, "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    clean_ = shard_rows(dir_ / "clean");
    ASSERT_EQ(clean_.size(), 90u);
  }
  std::vector<std::string> args() const {
    return {"embed-image", "--out", prefix_, "--save-every", "0",       "--batch-size",
            "1",           "-j",    "1",     photos_,        "--model", test::tiny_bundle()};
  }
  // Starts a run and stops it with `signal` once it saved a few chunks; true when it was stopped
  // before the end (the test is void otherwise).
  bool start_and_stop(int signal, int* status) {
    const pid_t pid = start_shard(args(), dir_ / "err");
    const bool saved = wait_for_chunks(pid, prefix_ + ".partial", 3);
    ::kill(pid, signal);
    waitpid(pid, status, 0);
    return saved;
  }
  // The run after the interruption: completes, uses the saved work, and equals the clean run.
  void expect_rerun_completes() {
    const size_t saved_rows = [&] {
      size_t n = 0;
      for (const auto& e : fs::directory_iterator(prefix_ + ".partial")) {
        if (e.path().extension() == ".npy") n += static_cast<size_t>(read_npy(e.path().string()).value().shape[0]);
      }
      return n;
    }();
    ASSERT_GT(saved_rows, 0u);
    ASSERT_LT(saved_rows, 90u);
    auto r = test::run_cnclip({"embed-image", "--out", prefix_, photos_, "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("cnclip: " + std::to_string(saved_rows) +
                         " embeddings saved by an interrupted run are used again; " + std::to_string(90 - saved_rows) +
                         " to embed"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find("cnclip: wrote 90 embeddings to " + prefix_ + ".npy (" + std::to_string(saved_rows) +
                         " saved by an earlier run), 0 failed"),
              std::string::npos)
        << r.err;
    EXPECT_TRUE(same_rows(shard_rows(prefix_), clean_));
    EXPECT_FALSE(fs::exists(prefix_ + ".partial"));
  }
  test::TempDir dir_;
  std::string photos_ = dir_ / "photos";
  std::string prefix_ = dir_ / "shard";
  std::map<std::string, std::vector<float>> clean_;
};

// kill -9 in the middle: nothing importable is left (no PREFIX.npy), the saved chunks are used
// again by the next run, which completes.
TEST_F(ShardResume, KilledRunIsContinued) {
  int status = 0;
  ASSERT_TRUE(start_and_stop(SIGKILL, &status)) << "the run ended before it could be killed";
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_FALSE(fs::exists(prefix_ + ".npy"));
  auto imp = test::run_cnclip({"import", prefix_ + ".npy", "--model", test::tiny_bundle(), "--index", dir_ / "idx"});
  EXPECT_EQ(imp.exit_code, 1);
  EXPECT_FALSE(fs::exists(dir_ / "idx"));
  expect_rerun_completes();
}

// SIGTERM (a scheduler's time limit or preemption) and Ctrl-C: the run saves what is finished, says
// how to continue, exits 128 + the signal (143, 130).
TEST_F(ShardResume, TerminatedRunSavesAndExits128PlusTheSignal) {
  for (int sig : {SIGTERM, SIGINT}) {
    SCOPED_TRACE(sig);
    fs::remove_all(prefix_ + ".partial");
    fs::remove(prefix_ + ".npy");
    int status = 0;
    ASSERT_TRUE(start_and_stop(sig, &status)) << "the run ended before the signal";
    const std::string err = test::read_text(dir_ / "err");
    ASSERT_TRUE(WIFEXITED(status)) << err;
    EXPECT_EQ(WEXITSTATUS(status), 128 + sig) << err;
    EXPECT_NE(err.find("cnclip: error: interrupted: the finished embeddings are saved in " + prefix_ +
                       ".partial; run the same command again to continue\n"),
              std::string::npos)
        << err;
    EXPECT_FALSE(fs::exists(prefix_ + ".npy"));
    expect_rerun_completes();
  }
}

// A chunk cut off by a crash between its two files (the list written, the rows not) is encoded
// again; a saved file that changed since is encoded again from its new content.
TEST_F(ShardResume, TornChunksAndChangedFilesAreEncodedAgain) {
  int status = 0;
  ASSERT_TRUE(start_and_stop(SIGKILL, &status));
  const std::string partial = prefix_ + ".partial";
  std::vector<fs::path> npys;
  for (const auto& e : fs::directory_iterator(partial)) {
    if (e.path().extension() == ".npy") npys.push_back(e.path());
  }
  std::sort(npys.begin(), npys.end());
  ASSERT_GE(npys.size(), 2u);
  fs::remove(npys.back());  // the torn chunk: its .list stays
  // A file saved in the first chunk now holds another picture.
  const std::string changed =
      test::lines(test::read_text(fs::path(npys.front()).replace_extension(".list").string()))[0].substr(0);
  const std::string changed_path = changed.substr(changed.rfind('\t') + 1);
  const std::string other = dir_ / "other.jpg";
  make_photo(other, 9999);
  test::copy_file(other, changed_path);
  fs::last_write_time(changed_path, fs::last_write_time(changed_path) + std::chrono::seconds(5));
  auto r = test::run_cnclip({"embed-image", "-q", "--out", prefix_, photos_, "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto got = shard_rows(prefix_);
  ASSERT_EQ(got.size(), 90u);
  auto fresh = test::run_cnclip({"embed-image", changed_path, "--model", test::tiny_bundle()});
  ASSERT_EQ(fresh.exit_code, 0);
  const std::vector<float> want = json::parse(fresh.out)["embedding"].get<std::vector<float>>();
  EXPECT_TRUE(same_rows({{changed_path, got[changed_path]}}, {{changed_path, want}}))
      << "the changed file kept its old embedding";
  EXPECT_FALSE(same_rows({{changed_path, got[changed_path]}}, {{changed_path, clean_[changed_path]}}));
  got.erase(changed_path);
  auto clean = clean_;
  clean.erase(changed_path);
  EXPECT_TRUE(same_rows(got, clean));
}

// Complete outputs: the same run again does nothing (and writes nothing); with a file added it
// embeds the shard again and the new file is in it.
TEST(ShardOutputs, CompleteOutputsAreKeptUntilTheFilesChange) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 12, 400);
  const std::vector<std::string> run{"embed-image", "--shard", "1/1",     "--out",
                                     dir / "s",     photos,    "--model", test::tiny_bundle()};
  ASSERT_EQ(test::run_cnclip(run).exit_code, 0);
  const auto state = tree_state(dir.path());
  auto again = test::run_cnclip(run);
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find(dir / "s.npy: already complete (12 embeddings, 0 failed); nothing to do"), std::string::npos)
      << again.err;
  EXPECT_EQ(tree_state(dir.path()), state);
  make_photo(photos + "/new.jpg", 4242);
  auto more = test::run_cnclip(run);
  ASSERT_EQ(more.exit_code, 0) << more.err;
  const auto rows = shard_rows(dir / "s");
  EXPECT_EQ(rows.size(), 13u);
  EXPECT_EQ(rows.count(photos + "/new.jpg"), 1u);
}

// Outputs of another shard, another model or other decoding options, and files that are not
// outputs at all, are never overwritten: the run is refused (exit 1) and they stay as they were.
TEST(ShardOutputs, OtherOutputsAtThePrefixAreRefused) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 10, 500);
  const std::string prefix = dir / "s";
  ASSERT_EQ(test::run_cnclip({"embed-image", "--shard", "1/2", "--out", prefix, photos, "--model", test::tiny_bundle()})
                .exit_code,
            0);
  const auto state = tree_state(dir.path());
  const std::string tiny = test::tiny_bundle();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--shard", "2/2", "--model", tiny}, "not shard 2/2 of tiny fp32"},
      {{"--shard", "1/3", "--model", tiny}, "not shard 1/3 of tiny fp32"},
      {{"--shard", "1/2", "--model", test::random_tiny_bundle()}, ", not shard 1/2 of tiny fp32"},
      {{"--shard", "1/2", "--ignore-exif", "--model", tiny}, ", --ignore-exif"},
  };
  for (const auto& [args, what] : cases) {
    SCOPED_TRACE(what);
    auto r = test::run_cnclip(test::concat(test::concat({"embed-image"}, args), {"--out", prefix, photos}));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(test::lines(r.err).size(), 2u) << r.err;  // "shard K/N: n of m files", then the error
    EXPECT_NE(r.err.find("cnclip: error: " + prefix + ": the outputs there are shard 1/2 of tiny fp32"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("give another prefix, or delete " + prefix + ".npy to replace them"), std::string::npos)
        << r.err;
    EXPECT_EQ(tree_state(dir.path()), state);
  }
  // An .npy that embed-image did not write.
  std::vector<float> m(32, 0.5f);
  write_npy(dir / "mine.npy", m.data(), {1, 32});
  auto r = test::run_cnclip({"embed-image", "-q", "--out", dir / "mine", photos, "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cnclip: error: " + dir / "mine.npy" + ": exists and is not the output of embed-image --shard (no " +
                       dir / "mine.json" + " beside it); give another prefix\n");
  EXPECT_FALSE(fs::exists(dir / "mine.partial"));
  // Saved work of another run.
  fs::create_directories(dir / "other.partial");
  test::write_text(dir / "other.partial/settings.json", R"({"shard": "3/4"})");
  r = test::run_cnclip({"embed-image", "-q", "--out", dir / "other", photos, "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir / "other.partial: holds unfinished work of shard 3/4, not shard 1/1 of tiny fp32"),
            std::string::npos)
      << r.err;
}

// Two runs of one shard at once (a scheduler that started it twice): the second stops at once.
TEST(ShardOutputs, ASecondRunOfTheSameShardIsRefused) {
  test::TempDir dir;
  make_photos(dir / "photos", 3, 600);
  fs::create_directories(dir / "s.partial");
  const int fd = ::open((dir / "s.partial/lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  auto r = test::run_cnclip({"embed-image", "-q", "--out", dir / "s", dir / "photos", "--model", test::tiny_bundle()});
  ::close(fd);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cnclip: error: " + dir / "s.partial" +
                       ": another embed-image is writing this shard; wait for it to end\n");
  r = test::run_cnclip({"embed-image", "-q", "--out", dir / "s", dir / "photos", "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(shard_rows(dir / "s").size(), 3u);
}

// A name with a line break cannot be a line of PREFIX.paths: that file fails (listed with why), the
// others are written, and the run exits 0 like an index run with a broken photo.
TEST(ShardOutputs, NamesWithLineBreaksFailAlone) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  make_photos(photos, 4, 700);
  make_photo(photos + "/two\nlines.jpg", 7);
  make_photo(dir / "cr.jpg\r", 8);  // listed by name: a walk would not take the extension "jpg\r"
  auto r =
      test::run_cnclip({"embed-image", "--out", dir / "s", photos, dir / "cr.jpg\r", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("the name holds a line break"), std::string::npos) << r.err;
  EXPECT_EQ(shard_rows(dir / "s").size(), 4u);
  const json manifest = json::parse(test::read_text(dir / "s.json"));
  ASSERT_EQ(manifest["failed"].size(), 2u) << manifest.dump();
  EXPECT_EQ(manifest["failed"][0]["code"], "invalid_argument");
  std::set<std::string> failed{manifest["failed"][0]["path"], manifest["failed"][1]["path"]};
  EXPECT_EQ(failed, (std::set<std::string>{photos + "/two\nlines.jpg", dir / "cr.jpg\r"}));
  EXPECT_NE(r.err.find("wrote 4 embeddings to " + dir / "s.npy (0 saved by an earlier run), 2 failed (listed in " +
                       dir / "s.json)"),
            std::string::npos)
      << r.err;
}

// import checks a shard's manifest before reading its rows: embeddings of another model are
// refused (another precision of the same checkpoint with --mixed-precision), and so are a missing
// paths file and a manifest that does not match its matrix.
TEST(ShardImport, ManifestAndPathsAreChecked) {
  test::TempDir dir;
  make_photos(dir / "photos", 5, 800);
  ASSERT_EQ(test::run_cnclip({"embed-image", "-q", "--out", dir / "s", dir / "photos", "--model", test::tiny_bundle()})
                .exit_code,
            0);
  const std::string npy = dir / "s.npy";
  auto r = test::run_cnclip({"import", npy, "--model", test::random_tiny_bundle(), "--index", dir / "a"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cnclip: error: " + dir / "s.json" + ": the embeddings come from tiny fp32 (fingerprint "),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("import them with that model (--model), or embed again with this one"), std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir / "a"));
  r = test::run_cnclip({"import", npy, "--model", test::tiny_int8_bundle(), "--index", dir / "b"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("pass --mixed-precision to import them anyway"), std::string::npos) << r.err;
  r = test::run_cnclip({"import", npy, "--mixed-precision", "--model", test::tiny_int8_bundle(), "--index", dir / "b"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // The manifest records 5 rows; a matrix of 4 does not go with it.
  test::copy_file(dir / "s.json", dir / "t.json");
  auto rows = read_npy(dir / "s.npy").value().as_float();
  write_npy(dir / "t.npy", rows.data(), {4, 32});
  auto paths = test::lines(test::read_text(dir / "s.paths"));
  test::write_text(dir / "t.paths", paths[0] + "\n" + paths[1] + "\n" + paths[2] + "\n" + paths[3] + "\n");
  r = test::run_cnclip({"import", dir / "t.npy", "--model", test::tiny_bundle(), "--index", dir / "c"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cnclip: error: " + dir / "t.json" + ": records 5 embeddings, the .npy beside it holds 4\n");
  // Without its paths file; and a second file that is missing: nothing of the first is imported.
  fs::remove(dir / "t.paths");
  r = test::run_cnclip({"import", npy, dir / "t.npy", "--model", test::tiny_bundle(), "--index", dir / "d"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "cnclip: error: " + dir / "t.npy" + ": no " + dir / "t.paths" +
                       " beside it (the paths of its rows, one per line); give another file with --npy " +
                       dir / "t.npy" + " --paths FILE\n");
  EXPECT_FALSE(fs::exists(dir / "d"));
  r = test::run_cnclip({"import", npy, dir / "missing.jsonl", "--model", test::tiny_bundle(), "--index", dir / "d"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "cnclip: error: " + dir / "missing.jsonl" + ": cannot read a JSONL file: No such file or directory\n");
  EXPECT_FALSE(fs::exists(dir / "d"));
}

}  // namespace
}  // namespace cnclip

namespace cnclip {
namespace {

// An import stopped by Ctrl-C keeps the batches it committed and says how to finish; the same
// command then imports the rest and skips what is there.
TEST(ShardImport, InterruptedImportIsFinishedByRunningItAgain) {
  test::TempDir dir;
  const int n = 100000, dim = 32;
  std::vector<float> rows(static_cast<size_t>(n) * dim);
  std::string paths;
  uint32_t x = 12345;
  for (int i = 0; i < n; ++i) {
    for (int d = 0; d < dim; ++d) {
      x = x * 1664525u + 1013904223u;
      rows[static_cast<size_t>(i) * dim + d] = static_cast<float>(x >> 8) / 16777216.0f - 0.5f;  // normalized by import
    }
    paths += "/remote/d" + std::to_string(i % 100) + "/f" + std::to_string(i) + ".jpg\n";
  }
  write_npy(dir / "big.npy", rows.data(), {n, dim});
  test::write_text(dir / "big.paths", paths);
  const std::string index = dir / "idx";
  const pid_t pid =
      start_shard({"import", dir / "big.npy", "--model", test::tiny_bundle(), "--index", index}, dir / "err");
  auto committed = [&]() -> int64_t {
    try {
      return Catalog::open_read_only(index + "/catalog.sqlite3")->count();
    } catch (const Exception&) {
      return 0;
    }
  };
  for (int i = 0; i < 6000 && committed() == 0; ++i) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string err = test::read_text(dir / "err");
  ASSERT_TRUE(WIFEXITED(status)) << err;
  ASSERT_EQ(WEXITSTATUS(status), 130) << "the import ended before the signal: " << err;
  const int64_t kept = committed();
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, n);
  EXPECT_EQ(kept % 20000, 0) << "committed in batches of 20,000";
  EXPECT_EQ(err, "cnclip: error: import interrupted: " + std::to_string(kept) +
                     " embeddings written so far are kept; run the same command again to finish (what is there already "
                     "is skipped)\n");
  auto r = test::run_cnclip({"import", dir / "big.npy", "--model", test::tiny_bundle(), "--index", index});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "cnclip: imported " + std::to_string(n - kept) + " new and 0 updated embeddings, " +
                       std::to_string(kept) + " unchanged (already there)\n");
  EXPECT_EQ(committed(), n);
  auto info = test::run_cnclip({"info", "--format", "json", "--index", index});
  EXPECT_EQ(json::parse(info.out)["vectors"], n);
}

}  // namespace
}  // namespace cnclip

namespace cnclip {
namespace {

// Shards embedded where the photos are mounted at one place, merged on a machine where they are at
// another: --map-prefix stores them under the local path, with the local files' size and mtime, so
// that a later `index` of the local folder finds them all unchanged and encodes nothing.
TEST(ShardImport, MapPrefixMovesPathsToWhereThePhotosAreHere) {
  test::TempDir dir;
  const std::string cluster = dir / "cluster/shared/photos", here = dir / "laptop/photos";
  make_photos(cluster, 12, 900);
  fs::create_directories(here);
  fs::copy(cluster, here, fs::copy_options::recursive);
  for (int k = 1; k <= 2; ++k) {
    ASSERT_EQ(test::run_cnclip({"embed-image", "-q", "--shard", std::to_string(k) + "/2", "--out",
                                dir / ("s" + std::to_string(k)), cluster, "--model", test::tiny_bundle()})
                  .exit_code,
              0);
  }
  const std::string index = dir / "idx";
  auto r = test::run_cnclip({"import", dir / "s1.npy", dir / "s2.npy", "--map-prefix", dir / "elsewhere=/x",
                             "--map-prefix", cluster + "/=" + here, "--model", test::tiny_bundle(), "--index", index});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("cnclip: warning: --map-prefix " + dir / "elsewhere=/x: no imported path is below " +
                       dir / "elsewhere"),
            std::string::npos)
      << r.err;
  const auto rows = index_rows(index);
  ASSERT_EQ(rows.size(), 12u);
  const auto shard1 = shard_rows(dir / "s1");
  for (const auto& [path, e] : shard1) {
    const std::string local = here + path.substr(cluster.size());
    ASSERT_EQ(rows.count(local), 1u) << local;
    EXPECT_EQ(rows.at(local), e);
  }
  auto idx =
      test::run_cnclip({"index", "-q", "--format", "json", here, "--model", test::tiny_bundle(), "--index", index});
  ASSERT_EQ(idx.exit_code, 0) << idx.err;
  EXPECT_EQ(json::parse(idx.out)["unchanged"], 12) << idx.out;
  EXPECT_EQ(json::parse(idx.out)["added"], 0) << idx.out;
  // Malformed maps are usage errors naming the option.
  for (const auto& [map, why] : std::vector<std::pair<std::string, std::string>>{
           {"/a", "expects FROM=TO, e.g. /shared/photos=/home/me/photos"},
           {"=/b", "both sides of FROM=TO must be given"},
           {"/a=", "both sides of FROM=TO must be given"},
           {"a=/b", "FROM must be an absolute path, as the imported paths are"}}) {
    auto bad = test::run_cnclip(
        {"import", dir / "s1.npy", "--map-prefix", map, "--model", test::tiny_bundle(), "--index", dir / "other"});
    EXPECT_EQ(bad.exit_code, 2) << map;
    EXPECT_EQ(bad.err, "cnclip: error: --map-prefix " + map + ": " + why + "\n");
    EXPECT_FALSE(fs::exists(dir / "other"));
  }
}

TEST(ShardImport, MapPrefixRewritesWholeComponentsOnly) {
  std::vector<std::string> paths{"/data/photos/a.jpg", "/data/photos", "/data/photos2/b.jpg", "/other/c.jpg",
                                 "rel/d.jpg"};
  const auto counts =
      map_path_prefixes(paths, {parse_prefix_map("/data/photos/=/home/me/p"), parse_prefix_map("/=/mnt")});
  EXPECT_EQ(paths, (std::vector<std::string>{"/home/me/p/a.jpg", "/home/me/p", "/mnt/data/photos2/b.jpg",
                                             "/mnt/other/c.jpg", "rel/d.jpg"}));
  EXPECT_EQ(counts, (std::vector<int64_t>{2, 2}));
  std::vector<std::string> to_root{"/x/y/z.jpg"};
  map_path_prefixes(to_root, {parse_prefix_map("/x=/")});
  EXPECT_EQ(to_root, std::vector<std::string>{"/y/z.jpg"});
}

}  // namespace
}  // namespace cnclip
