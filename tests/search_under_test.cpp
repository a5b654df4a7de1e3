// --under PATH where PATH is a file: that file alone (it gave no results at all), for search-text,
// search-image, classify --indexed and dups, and never a file that only shares its name as a prefix.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "cnclip/catalog.h"
#include "cnclip/index_store.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

class UnderFile : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::canonical(tmp_.path()).string();
    photos_ = root_ + "/photos";
    fs::create_directories(photos_ + "/sub");
    test::copy_file(test::fixtures("images/pokemon.jpeg"), photos_ + "/p.jpeg");
    // Names that start with the file's name: "p.jpeg.png", and a folder "p.jpeg.d".
    test::copy_file(test::fixtures("images/chelsea_rgba.png"), photos_ + "/p.jpeg.png");
    fs::create_directories(photos_ + "/p.jpeg.d");
    test::copy_file(test::fixtures("images/astronaut_palette.png"), photos_ + "/p.jpeg.d/a.png");
    test::copy_file(test::fixtures("images/coffee_2048x1366_exif6.jpg"), photos_ + "/sub/c.jpg");
    const auto r = test::run_cnclip(test::concat({"index", "-q", photos_}, common()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::vector<std::string> common() const { return {"--model", test::tiny_bundle(), "--index", root_ + "/idx"}; }
  std::vector<json> rows(const std::vector<std::string>& args) {
    const auto r = test::run_cnclip(test::concat(test::concat(args, common()), {"--format", "jsonl"}));
    EXPECT_EQ(r.exit_code, 0) << args[0] << ": " << r.err;
    std::vector<json> out;
    for (const auto& l : test::lines(r.out)) out.push_back(json::parse(l));
    return out;
  }

  test::TempDir tmp_;
  std::string root_, photos_;
};

TEST_F(UnderFile, SearchKeepsThatFileWithItsOwnScore) {
  const auto all = rows({"search-text", "小狗", "-k", "10"});
  ASSERT_EQ(all.size(), 4u);
  for (const std::string file : {"/p.jpeg", "/sub/c.jpg", "/p.jpeg.png"}) {
    SCOPED_TRACE(file);
    const auto one = rows({"search-text", "小狗", "-k", "10", "--under", photos_ + file});
    ASSERT_EQ(one.size(), 1u);
    EXPECT_EQ(one[0]["path"], photos_ + file);
    EXPECT_EQ(one[0]["rank"], 1);
    for (const auto& a : all) {
      if (a["path"] == photos_ + file) {
        EXPECT_EQ(a["score"], one[0]["score"]);
      }
    }
  }
  // Given relative and through '..', as any path is.
  test::RunOptions in_sub;
  in_sub.cwd = photos_ + "/sub";
  const auto rel = test::run_cnclip(
      test::concat({"search-text", "小狗", "--format", "paths", "--under", "../p.jpeg"}, common()), in_sub);
  EXPECT_EQ(rel.exit_code, 0) << rel.err;
  EXPECT_EQ(rel.out, photos_ + "/p.jpeg\n");
  // A folder still means everything below it, and only that.
  const auto sub = rows({"search-text", "小狗", "--under", photos_ + "/p.jpeg.d"});
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0]["path"], photos_ + "/p.jpeg.d/a.png");
  EXPECT_EQ(rows({"search-text", "小狗", "--under", photos_}).size(), 4u);
  // search-image too (its own file, --exclude-self: nothing left).
  const auto img = rows({"search-image", photos_ + "/sub/c.jpg", "--under", photos_ + "/p.jpeg"});
  ASSERT_EQ(img.size(), 1u);
  EXPECT_EQ(img[0]["path"], photos_ + "/p.jpeg");
  EXPECT_TRUE(rows({"search-image", photos_ + "/p.jpeg", "--exclude-self", "--under", photos_ + "/p.jpeg"}).empty());
}

TEST_F(UnderFile, ClassifyAndDupsAndTheCatalog) {
  const auto c = rows({"classify", "--indexed", "--labels", "猫,狗", "--under", photos_ + "/p.jpeg"});
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["path"], photos_ + "/p.jpeg");
  // A pair needs both of its files under PATH: a file alone has none (and is no error), while its
  // folder has the copy's pair.
  test::copy_file(photos_ + "/p.jpeg", photos_ + "/sub/copy.jpeg");
  const auto r = test::run_cnclip(test::concat({"index", "-q", photos_}, common()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto dups = [&](const std::string& under) {
    return test::run_cnclip({"dups", "--format", "jsonl", "--under", under, "--index", root_ + "/idx"});
  };
  const auto d = dups(photos_ + "/p.jpeg");
  EXPECT_EQ(d.exit_code, 0) << d.err;
  EXPECT_EQ(d.out, "");
  const auto all = dups(photos_);
  EXPECT_EQ(all.exit_code, 0) << all.err;
  EXPECT_NE(all.out.find(photos_ + "/sub/copy.jpeg"), std::string::npos) << all.out;

  auto store = IndexStore::open(root_ + "/idx", IndexAccess::kRead);
  std::vector<std::string> got;
  for (const auto& f : store->catalog().files_at_or_under(photos_ + "/p.jpeg")) got.push_back(f.path);
  EXPECT_EQ(got, std::vector<std::string>{photos_ + "/p.jpeg"});
  got.clear();
  for (const auto& f : store->catalog().files_at_or_under(photos_)) got.push_back(f.path);
  EXPECT_EQ(got.size(), 5u);
  EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
  // files_under keeps its meaning (the indexer's: strictly below a folder).
  EXPECT_TRUE(store->catalog().files_under(photos_ + "/p.jpeg").empty());
}

}  // namespace
}  // namespace cnclip
