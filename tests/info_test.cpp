// `cnclip info`: the index folder is shown absolute and canonical however it was given, and single
// files indexed as roots are labelled as files, in the text and the JSON form and in the library.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cnclip/info.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

class Info : public ::testing::Test {
 protected:
  void SetUp() override {
    // Canonical from the start: the expected paths must not depend on /tmp being a link.
    root_ = fs::canonical(tmp_.path()).string();
    fs::create_directories(root_ + "/photos");
    test::copy_file(test::fixtures("images/pokemon.jpeg"), root_ + "/photos/p.jpeg");
    test::copy_file(test::fixtures("images/chelsea_rgba.png"), root_ + "/single.png");
    index_ = root_ + "/idx";
  }
  test::RunResult cnclip_in(const std::string& cwd, const std::vector<std::string>& args) {
    test::RunOptions in;
    in.cwd = cwd;
    return test::run_cnclip(args, in);
  }
  void index(const std::string& what) {
    const auto r = test::run_cnclip({"index", "-q", "--model", test::tiny_bundle(), "--index", index_, what});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }

  test::TempDir tmp_;
  std::string root_, index_;
};

TEST_F(Info, IndexPathIsAbsoluteAndCanonicalHoweverGiven) {
  index(root_ + "/photos");
  fs::create_directory_symlink(index_, root_ + "/link-to-idx");
  fs::create_directories(root_ + "/sub");
  // Relative, with '..', through a symbolic link, and from $CNCLIP_INDEX: always the real folder.
  for (const std::string& given : {std::string("idx"), std::string("./sub/../idx/"), std::string("link-to-idx")}) {
    const auto j = cnclip_in(root_, {"info", "--format", "json", "--index", given});
    ASSERT_EQ(j.exit_code, 0) << given << ": " << j.err;
    EXPECT_EQ(json::parse(j.out)["index"], index_) << given;
    const auto t = cnclip_in(root_, {"info", "--index", given});
    ASSERT_EQ(t.exit_code, 0) << t.err;
    EXPECT_EQ(test::lines(t.out).at(0), "index:    " + index_) << given;
  }
  test::RunOptions in_sub;
  in_sub.cwd = root_ + "/sub";
  in_sub.env = {"CNCLIP_INDEX=../idx"};
  const auto e = test::run_cnclip({"info", "--format", "json"}, in_sub);
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_EQ(json::parse(e.out)["index"], index_);

  // The library call behind both (and behind the server's /api/v1/info).
  const std::string cwd = fs::current_path().string();
  ASSERT_EQ(::chdir(root_.c_str()), 0);
  const IndexInfo info = read_index_info("link-to-idx");
  ASSERT_EQ(::chdir(cwd.c_str()), 0);
  EXPECT_EQ(info.index, index_);
  EXPECT_EQ(empty_index_info(root_ + "/not-yet/../later/").index, root_ + "/later");
}

// index and repair name the index in their JSON as info does: absolute and canonical, whatever was
// typed (they printed it as given: "link-to-idx/", "./sub/../idx").
TEST_F(Info, IndexAndRepairJsonNameTheIndexAsInfoDoes) {
  fs::create_directories(root_ + "/sub");
  const auto first = cnclip_in(
      root_, {"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", "./sub/../idx/", "photos"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(json::parse(first.out)["index"], index_);
  fs::create_directory_symlink(index_, root_ + "/link-to-idx");
  for (const std::string& given : {std::string("link-to-idx/"), std::string("idx")}) {
    const auto again = cnclip_in(
        root_, {"index", "--format", "json", "-q", "--model", test::tiny_bundle(), "--index", given, "photos"});
    ASSERT_EQ(again.exit_code, 0) << given << ": " << again.err;
    EXPECT_EQ(json::parse(again.out)["index"], index_) << given;
    EXPECT_EQ(json::parse(again.out)["unchanged"], 1) << given;
    const auto repair = cnclip_in(root_, {"repair", "--format", "json", "--index", given});
    ASSERT_EQ(repair.exit_code, 0) << given << ": " << repair.err;
    EXPECT_EQ(json::parse(repair.out)["index"], index_) << given;
    EXPECT_EQ(json::parse(repair.out)["damaged"], false) << given;
  }
}

TEST_F(Info, SingleFileRootsAreLabelledFiles) {
  index(root_ + "/photos");
  // An index of folders only: no folders_kind, as before.
  auto j = json::parse(test::run_cnclip({"info", "--format", "json", "--index", index_}).out);
  EXPECT_EQ(j["folders"], json::array({root_ + "/photos"}));
  EXPECT_FALSE(j.contains("folders_kind")) << j.dump();

  index(root_ + "/single.png");
  const auto t = test::run_cnclip({"info", "--index", index_});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const auto lines = test::lines(t.out);
  ASSERT_GE(lines.size(), 2u);
  EXPECT_EQ(lines[lines.size() - 2], "folder:   " + root_ + "/photos") << t.out;
  EXPECT_EQ(lines[lines.size() - 1], "file:     " + root_ + "/single.png") << t.out;

  j = json::parse(test::run_cnclip({"info", "--format", "json", "--index", index_}).out);
  EXPECT_EQ(j["folders"], json::array({root_ + "/photos", root_ + "/single.png"}));
  EXPECT_EQ(j["folders_kind"], json::array({"folder", "file"}));
  // Right after folders (no folders_bytes here), before disk_bytes.
  const auto ordered =
      nlohmann::ordered_json::parse(test::run_cnclip({"info", "--format", "json", "--index", index_}).out);
  std::vector<std::string> keys;
  for (auto it = ordered.begin(); it != ordered.end(); ++it) keys.push_back(it.key());
  const auto at = std::find(keys.begin(), keys.end(), "folders_kind");
  ASSERT_TRUE(at != keys.end() && at + 1 != keys.end());
  EXPECT_EQ(*(at - 1), "folders");
  EXPECT_EQ(*(at + 1), "disk_bytes");
}

}  // namespace
}  // namespace cnclip
