// The command line as a whole: help, version, unknown commands. The commands have their own files:
// cli_model_test (model-info, tokenize, embed-*, preprocess), cli_index_test, cli_search_test, cli_import_test.
#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST(Cli, HelpVersionAndUsageErrors) {
  auto r = test::run_cnclip({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  for (const char* sub : {"index", "search-text", "search-image", "embed-text", "embed-image", "model-info", "tokenize",
                          "preprocess", "info", "remove"}) {
    EXPECT_NE(r.out.find(sub), std::string::npos) << sub;
  }
  r = test::run_cnclip({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("cnclip"), std::string::npos);
  r = test::run_cnclip({"frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("cnclip: error"), std::string::npos);
  r = test::run_cnclip({"search-text", "狗", "--format", "xml", "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
}  // namespace cnclip
