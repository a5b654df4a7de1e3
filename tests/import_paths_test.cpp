// `import --npy M.npy --paths -`: the paths come from stdin, as '-' means everywhere else, one per
// line or NUL-terminated with -0 (so names holding a newline survive); -0 applies to a --paths file
// too, and NUL-separated input read as lines is refused with a pointer to -0.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>

#include "cnclip/npy.h"
#include "test_util.h"

namespace cnclip {
namespace {

constexpr int kDim = 32;  // the tiny bundle's

class ImportPaths : public ::testing::Test {
 protected:
  void SetUp() override {
    // Three unit rows.
    std::vector<float> m(3 * kDim, 0.0f);
    for (int r = 0; r < 3; ++r) m[static_cast<size_t>(r * kDim + r)] = 1.0f;
    write_npy(npy_, m.data(), {3, kDim});
  }
  test::RunResult import(const std::vector<std::string>& args, const std::string& stdin_text) {
    return test::run_cnclip(
        test::concat({"import", "--model", test::tiny_bundle(), "--index", index_, "--npy", npy_}, args), stdin_text);
  }
  std::set<std::string> indexed() { return test::indexed_paths(index_); }

  test::TempDir tmp_;
  const std::string npy_ = tmp_ / "m.npy";
  const std::string index_ = tmp_ / "idx";
};

TEST_F(ImportPaths, DashReadsOnePathPerLineFromStdin) {
  const auto r = import({"--paths", "-"}, "/p/a.jpg\r\n\n/p/b.jpg\n/p/c d.jpg");  // CRLF, a blank line, no last newline
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed(), (std::set<std::string>{"/p/a.jpg", "/p/b.jpg", "/p/c d.jpg"}));
  // The same rows again change nothing (as from a file).
  const auto again = import({"--paths", "-"}, "/p/a.jpg\n/p/b.jpg\n/p/c d.jpg\n");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("3 unchanged"), std::string::npos) << again.err;
}

TEST_F(ImportPaths, NullSeparatedFromStdinOrAFile) {
  const std::string names = std::string("/p/new\nline.jpg\0/p/cr\r.jpg\0/p/last.jpg", 38);  // no last NUL
  auto r = import({"--paths", "-", "-0"}, names);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed(), (std::set<std::string>{"/p/new\nline.jpg", "/p/cr\r.jpg", "/p/last.jpg"}));

  test::write_text(tmp_ / "paths0", std::string("/q/1.jpg\0/q/2.jpg\0\0/q/3.jpg\0", 28));
  r = import({"--null", "--paths", tmp_ / "paths0"}, "");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed().count("/q/3.jpg"), 1u);
}

TEST_F(ImportPaths, MistakesChangeNothing) {
  // NUL-separated names read as lines: refused, pointing at -0, nothing imported.
  auto r = import({"--paths", "-"}, std::string("/p/a.jpg\0/p/b.jpg\0/p/c.jpg\0", 27));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("stdin:1: the path contains a NUL byte"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("add -0"), std::string::npos) << r.err;
  // A count that differs names stdin.
  r = import({"--paths", "-"}, "/p/a.jpg\n/p/b.jpg\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("stdin: 2 paths for 3 embeddings"), std::string::npos) << r.err;
  // stdin once only; -0 only with --paths (JSONL is one object per line).
  r = test::run_cnclip(
      {"import", "--model", test::tiny_bundle(), "--index", index_, "-", "--npy", npy_, "--paths", "-"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("'-' (stdin) can be given once"), std::string::npos) << r.err;
  r = test::run_cnclip({"import", "-0", "--model", test::tiny_bundle(), "--index", index_, "rows.jsonl"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("-0 goes with --paths"), std::string::npos) << r.err;
  EXPECT_FALSE(std::ifstream(index_ + "/catalog.sqlite3").good()) << "nothing was created";
}

}  // namespace
}  // namespace cnclip
