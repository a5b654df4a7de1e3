// `cnclip dups`: grouping on imported fixed vectors (chains, exact copies, thresholds, --under, the
// output formats) and end to end on generated copies (resized, re-encoded) of distinct images.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "cnclip/catalog.h"
#include "cnclip/dups.h"
#include "cnclip/index_store.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr int kDim = 32;  // the tiny bundle's embedding size

// A unit vector at cosine `c` from axis `a`, turned towards axis `b`.
std::vector<float> at_cosine(int a, int b, double c) {
  std::vector<float> v(kDim, 0.0f);
  v[a] = static_cast<float>(c);
  v[b] = static_cast<float>(std::sqrt(1 - c * c));
  return v;
}

class Dups : public ::testing::Test {
 protected:
  // Rows imported in this order (so catalog ids follow it): path, vector, content hash ("" = none).
  struct Row {
    std::string path;
    std::vector<float> v;
    std::string hash;
  };
  void load(const std::vector<Row>& rows) {
    std::string jsonl;
    for (const auto& r : rows) jsonl += json{{"path", r.path}, {"embedding", r.v}}.dump() + "\n";
    test::write_text(dir_ / "rows.jsonl", jsonl);
    auto r = run({"import", dir_ / "rows.jsonl", "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // Imported rows have no content hash; give them the ones asked for, as `index` would have.
    auto store = IndexStore::open(index(), IndexAccess::kWrite);
    CatalogTransaction tx(store->catalog());
    for (const auto& row : rows) {
      if (row.hash.empty()) continue;
      auto rec = store->catalog().find(row.path);
      ASSERT_TRUE(rec) << row.path;
      rec->content_hash = row.hash;
      store->catalog().update(*rec, nullptr, kDim);
    }
    tx.commit();
    store->write_snapshot();
  }
  test::RunResult run(const std::vector<std::string>& args) {
    return test::run_cnclip(test::concat(args, {"--index", index()}));
  }
  std::vector<json> groups(const std::vector<std::string>& args = {}) {
    auto r = run(test::concat({"dups", "--format", "jsonl"}, args));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::vector<json> out;
    for (const auto& line : test::lines(r.out)) out.push_back(json::parse(line));
    return out;
  }
  std::string index() const { return dir_ / "index"; }
  test::TempDir dir_;
};

TEST_F(Dups, ChainsDoNotMergePhotosThatAreNotSimilar) {
  // a-b 0.96, b-c 0.96, a-c 0.8432 (twice the angle): a chain at 0.95. Unrelated: d, e.
  const double c = 0.96, c2 = 2 * c * c - 1;
  load({{"/p/a.jpg", at_cosine(0, 1, 1.0), ""},
        {"/p/b.jpg", at_cosine(0, 1, c), ""},
        {"/p/c.jpg", at_cosine(0, 1, c2), ""},
        {"/p/d.jpg", at_cosine(5, 6, 1.0), ""},
        {"/p/e.jpg", at_cosine(7, 8, 1.0), ""}});
  auto g = groups();
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0]["group"], 1);
  EXPECT_EQ(g[0]["exact"], false);
  EXPECT_EQ(g[0]["paths"], json({"/p/a.jpg", "/p/b.jpg"}));
  EXPECT_NEAR(g[0]["scores"][0].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(g[0]["scores"][1].get<double>(), c, 1e-6);
  // Threshold below a-c: the three together, each scored against the first, best first.
  g = groups({"--threshold", "0.8"});
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0]["paths"], json({"/p/a.jpg", "/p/b.jpg", "/p/c.jpg"}));
  EXPECT_NEAR(g[0]["scores"][2].get<double>(), c2, 1e-6);
  // Above a-b: nothing.
  EXPECT_TRUE(groups({"--threshold", "0.97"}).empty());
  // A threshold exactly at a pair's cosine keeps it (>=): b-a printed 0.960000.
  EXPECT_EQ(groups({"--threshold", "0.959999"}).size(), 1u);
}

TEST_F(Dups, TheFirstIndexedLeadsAndTakesOnlyItsOwnNeighbours) {
  // b is indexed first: it leads, and takes a and c (both at 0.96 from it); a-c are 0.8432 apart.
  const double c = 0.96;
  load({{"/p/b.jpg", at_cosine(0, 1, c), ""},
        {"/p/a.jpg", at_cosine(0, 1, 1.0), ""},
        {"/p/c.jpg", at_cosine(0, 1, 2 * c * c - 1), ""},
        {"/p/x.jpg", at_cosine(3, 4, 1.0), ""},
        {"/p/y.jpg", at_cosine(3, 4, 0.99), ""}});
  auto g = groups();
  ASSERT_EQ(g.size(), 2u);
  ASSERT_EQ(g[0]["paths"].size(), 3u);
  EXPECT_EQ(g[0]["paths"][0], "/p/b.jpg");
  EXPECT_EQ((std::set<std::string>{g[0]["paths"][1], g[0]["paths"][2]}),
            (std::set<std::string>{"/p/a.jpg", "/p/c.jpg"}));
  EXPECT_EQ(g[1]["paths"], json({"/p/x.jpg", "/p/y.jpg"}));
  EXPECT_EQ(g[1]["group"], 2);
}

TEST_F(Dups, ExactCopiesComeFirstAndANearGroupTakesThemWhole) {
  load({{"/p/near.jpg", at_cosine(2, 3, 0.99), "h-near"},
        {"/p/orig.jpg", at_cosine(2, 3, 1.0), "h1"},
        {"/p/copy.jpg", at_cosine(2, 3, 1.0), "h1"},
        {"/p/copy2.jpg", at_cosine(2, 3, 1.0), "h1"},
        {"/p/lonely.jpg", at_cosine(9, 10, 1.0), "h2"},
        {"/p/same-bytes-a.jpg", at_cosine(11, 12, 1.0), "h3"},
        {"/p/same-bytes-b.jpg", at_cosine(11, 12, 1.0), "h3"}});
  auto g = groups();
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0]["exact"], true);
  EXPECT_EQ(g[0]["paths"], json({"/p/same-bytes-a.jpg", "/p/same-bytes-b.jpg"}));
  EXPECT_EQ(g[0]["scores"], json({1.0, 1.0}));
  // near.jpg (indexed first) leads; orig.jpg's copies come with it, at its score, and their exact
  // group is not listed as well: each file is in one group only (a "keep the first of each group"
  // script must never delete every copy).
  EXPECT_EQ(g[1]["exact"], false);
  EXPECT_EQ(g[1]["paths"], json({"/p/near.jpg", "/p/orig.jpg", "/p/copy.jpg", "/p/copy2.jpg"}));
  for (int i = 1; i < 4; ++i) EXPECT_NEAR(g[1]["scores"][i].get<double>(), 0.99, 1e-6) << i;
  std::set<std::string> seen;
  for (const auto& group : g) {
    for (const auto& p : group["paths"]) EXPECT_TRUE(seen.insert(p.get<std::string>()).second) << p << " twice";
  }
  // Exact copies are found whatever the threshold; then nothing absorbs them.
  auto exact_only = groups({"--threshold", "1"});
  ASSERT_EQ(exact_only.size(), 2u);
  EXPECT_EQ(exact_only[0]["paths"], json({"/p/orig.jpg", "/p/copy.jpg", "/p/copy2.jpg"}));
  EXPECT_EQ(exact_only[0]["exact"], true);
}

TEST_F(Dups, AnExactGroupJoiningAsLeaderKeepsItsCopiesAtScoreOne) {
  load({{"/p/orig.jpg", at_cosine(2, 3, 1.0), "h1"},
        {"/p/copy.jpg", at_cosine(2, 3, 1.0), "h1"},
        {"/p/near.jpg", at_cosine(2, 3, 0.98), "h-near"}});
  auto g = groups();
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0]["exact"], false);
  EXPECT_EQ(g[0]["paths"], json({"/p/orig.jpg", "/p/copy.jpg", "/p/near.jpg"}));
  EXPECT_NEAR(g[0]["scores"][1].get<double>(), 1.0, 1e-6);
  EXPECT_NEAR(g[0]["scores"][2].get<double>(), 0.98, 1e-6);
}

TEST_F(Dups, UnderLimitsBothMembersAndEveryFormatPrintsTheGroups) {
  load({{"/p/in/a.jpg", at_cosine(0, 1, 1.0), ""},
        {"/p/in/b.jpg", at_cosine(0, 1, 0.98), ""},
        {"/p/out/c.jpg", at_cosine(0, 1, 0.99), ""},
        {"/p/in/x.jpg", at_cosine(4, 5, 1.0), ""},
        {"/p/out/y.jpg", at_cosine(4, 5, 0.99), ""}});
  auto all = groups();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0]["paths"], json({"/p/in/a.jpg", "/p/out/c.jpg", "/p/in/b.jpg"}));
  // --under a folder that does not exist here is refused like search's --under; the library takes
  // catalog paths, so test it there.
  auto store = IndexStore::open(index(), IndexAccess::kRead);
  DupsOptions o;
  o.under = "/p/in";
  auto in = find_duplicates(*store, o);
  ASSERT_EQ(in.size(), 1u);
  EXPECT_EQ(in[0].paths, (std::vector<std::string>{"/p/in/a.jpg", "/p/in/b.jpg"}));
  o.under = "/p/out";
  EXPECT_TRUE(find_duplicates(*store, o).empty());

  auto r = run({"dups", "--format", "jsonl"});
  EXPECT_EQ(test::lines(r.out)[1],
            R"({"group":2,"exact":false,"paths":["/p/in/x.jpg","/p/out/y.jpg"],"scores":[1.000000,0.990000]})");
  r = run({"dups", "--format", "json"});
  EXPECT_EQ(r.exit_code, 0);
  auto arr = json::parse(r.out);
  ASSERT_EQ(arr.size(), 2u);
  EXPECT_EQ(arr[1]["paths"], json({"/p/in/x.jpg", "/p/out/y.jpg"}));
  r = run({"dups", "--format", "paths"});
  EXPECT_EQ(r.out, "/p/in/a.jpg\n/p/out/c.jpg\n/p/in/b.jpg\n\n/p/in/x.jpg\n/p/out/y.jpg\n");
  r = run({"dups", "--format", "paths", "-0"});
  EXPECT_EQ(r.out, std::string("/p/in/a.jpg\0/p/out/c.jpg\0/p/in/b.jpg\0\0/p/in/x.jpg\0/p/out/y.jpg\0", 63));
  r = run({"dups", "--format", "table"});
  EXPECT_EQ(r.out,
            "group 1: 3 near duplicates (cosine to the first)\n"
            "  1.000000  /p/in/a.jpg\n"
            "  0.990000  /p/out/c.jpg\n"
            "  0.980000  /p/in/b.jpg\n"
            "\n"
            "group 2: 2 near duplicates (cosine to the first)\n"
            "  1.000000  /p/in/x.jpg\n"
            "  0.990000  /p/out/y.jpg\n");
  r = run({"dups", "--format", "table", "--threshold", "0.999"});
  EXPECT_EQ(r.out, "(no duplicates at threshold 0.999000)\n");
  r = run({"dups", "--format", "json", "--threshold", "0.999"});
  EXPECT_EQ(r.out, "[]\n");
}

TEST_F(Dups, BadThresholdsAndMissingIndexAreErrors) {
  for (const std::string t : {"0", "-0.5", "1.5", "nan", "inf", "x"}) {
    auto r = run({"dups", "--threshold", t});
    EXPECT_EQ(r.exit_code, 2) << t;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
    EXPECT_NE(r.err.find("--threshold"), std::string::npos) << r.err;
  }
  auto r = run({"dups"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no index"), std::string::npos) << r.err;
}

// End to end: distinct photos, and of each a half-size copy, a re-encoded copy (JPEG quality 60)
// and, for one, a byte-for-byte copy; indexed with the tiny model.
TEST(DupsEndToEnd, ResizedAndReencodedCopiesGroupWithTheirOriginal) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  fs::create_directories(photos);
  const std::string script = R"(
import sys
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
for name in ['pokemon.jpeg', 'chelsea_rgba.png', 'astronaut_palette.png', 'coffee_2048x1366_exif6.jpg']:
    base = name.split('.')[0]
    im = Image.open(src + '/' + name).convert('RGB')
    im.save(out + '/' + base + '.png')
    im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(out + '/' + base + '-half.png')
    im.save(out + '/' + base + '-q60.jpg', quality=60)
)";
  test::write_text(dir / "make.py", script);
  ASSERT_EQ(std::system((std::string(CNCLIP_PYTHON) + " " + test::shell_quote(dir / "make.py") + " " +
                         test::shell_quote(test::fixtures("images")) + " " + test::shell_quote(photos))
                            .c_str()),
            0);
  test::copy_file(photos + "/pokemon.png", photos + "/pokemon-copy.png");
  const std::vector<std::string> idx{"--index", dir / "index"};
  auto r = test::run_cnclip(test::concat({"index", "-q", photos, "--model", test::tiny_bundle()}, idx));
  ASSERT_EQ(r.exit_code, 0) << r.err;

  // With random weights the tiny model's cosines say little about real photos; what holds is that
  // each copy is closer to its own original than any other photo is. Take the threshold between
  // the two, from the stored embeddings, and check the groups at it.
  auto store = IndexStore::open(dir / "index", IndexAccess::kRead);
  std::map<std::string, std::vector<float>> e;
  for (const auto& f : store->catalog().files_under(""))
    e[fs::path(f.path).stem().string()] = store->catalog().embedding(f.id);
  auto cosine = [&](const std::string& a, const std::string& b) {
    double s = 0;
    for (int d = 0; d < kDim; ++d) s += double(e[a][d]) * e[b][d];
    return s;
  };
  auto family = [](const std::string& name) { return name.substr(0, name.find('-')); };
  double same_min = 1, other_max = -1;
  for (const auto& [a, va] : e) {
    for (const auto& [b, vb] : e) {
      if (a >= b) continue;
      if (family(a) == family(b)) same_min = std::min(same_min, cosine(a, b));
      else other_max = std::max(other_max, cosine(a, b));
    }
  }
  std::cerr << "tiny model: copies >= " << same_min << ", different photos <= " << other_max << "\n";
  ASSERT_LT(other_max, same_min) << "the tiny model does not separate these copies";
  const double t = (same_min + other_max) / 2;
  r = test::run_cnclip(test::concat({"dups", "--format", "jsonl", "--threshold", std::to_string(t)}, idx));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::set<std::set<std::string>> got;
  for (const auto& line : test::lines(r.out)) {
    const json g = json::parse(line);
    EXPECT_FALSE(g["exact"]) << line;  // the exact pair is inside pokemon's near group
    std::set<std::string> names;
    for (const auto& p : g["paths"]) names.insert(fs::path(p.get<std::string>()).stem().string());
    got.insert(names);
  }
  std::set<std::set<std::string>> want;
  for (const char* base : {"chelsea_rgba", "astronaut_palette", "coffee_2048x1366_exif6"}) {
    const std::string b = base;
    want.insert({b, b + "-half", b + "-q60"});
  }
  // The exact copies (pokemon, pokemon-copy) come whole with their near duplicates, in one group.
  want.insert({"pokemon", "pokemon-copy", "pokemon-half", "pokemon-q60"});
  EXPECT_EQ(got, want) << r.out;
}

}  // namespace
}  // namespace cnclip
