// search --threshold: every finite value given applies. The command line used -2 as "not given", so
// a threshold below -2 was dropped: `--sort date --threshold -5` was refused as if none was given.
#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"

namespace cnclip {
namespace {

using test::shell_quote;

TEST(SearchThreshold, AnyGivenValueCountsAsGiven) {
  test::TempDir tmp;
  const std::string photos = tmp / "photos", index = tmp / "idx";
  ASSERT_EQ(std::system(("mkdir -p " + shell_quote(photos) + " && cp " + shell_quote(test::fixtures("images")) +
                         "/*.png " + shell_quote(photos))
                            .c_str()),
            0);
  const std::vector<std::string> common{"--model", test::tiny_bundle(), "--index", index};
  ASSERT_EQ(test::run_cnclip(test::concat({"index", "-q", photos}, common)).exit_code, 0);
  const auto all = test::run_cnclip(test::concat({"search-text", "小狗", "-k", "100", "--format", "paths"}, common));
  ASSERT_EQ(all.exit_code, 0) << all.err;
  ASSERT_GE(test::lines(all.out).size(), 3u);
  for (const std::string t : {"-1", "-2", "-5", "-1e30"}) {
    SCOPED_TRACE(t);
    // With --sort date a threshold is required: each of these is one.
    const auto by_date = test::run_cnclip(test::concat(
        {"search-text", "小狗", "-k", "100", "--format", "paths", "--sort", "date", "--threshold", t}, common));
    EXPECT_EQ(by_date.exit_code, 0) << by_date.err;
    EXPECT_EQ(test::lines(by_date.out).size(), test::lines(all.out).size());
  }
  const auto none = test::run_cnclip(test::concat({"search-text", "小狗", "--sort", "date"}, common));
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.err.find("give --threshold too"), std::string::npos) << none.err;
  // A threshold over every score keeps nothing.
  const auto high =
      test::run_cnclip(test::concat({"search-text", "小狗", "--format", "paths", "--threshold", "1.5"}, common));
  EXPECT_EQ(high.exit_code, 0) << high.err;
  EXPECT_EQ(high.out, "");
}

}  // namespace
}  // namespace cnclip
