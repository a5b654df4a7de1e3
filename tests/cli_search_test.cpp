// cnclip search-text and search-image end to end: formats, --under, image queries, errors of empty,
// missing and mismatched indexes, the int8 sibling of a model.
#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST_F(Photos, SearchFormatsUnderAndImageQueries) {
  index_json(test::shell_quote(photos) + idx_arg());
  const std::string query = photos + "/2024 旅行/海边/夕阳.png";

  auto r = search("search-image " + test::shell_quote(query) + " --format json -k 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto arr = json::parse(r.out);
  ASSERT_TRUE(arr.is_array());
  ASSERT_EQ(arr.size(), 3u);
  EXPECT_EQ(arr[0]["path"], query);
  EXPECT_GE(arr[0]["score"].get<double>(), 0.999);
  EXPECT_EQ(arr[0]["rank"], 1);
  EXPECT_EQ(arr[1]["rank"], 2);

  r = search("search-image " + test::shell_quote(query) + " --exclude-self --format paths -k 2");
  ASSERT_EQ(r.exit_code, 0);
  auto paths = test::lines(r.out);
  ASSERT_EQ(paths.size(), 2u);
  EXPECT_NE(paths[0], query);

  // A query image outside the index works too (it is encoded).
  r = search("search-image " + test::shell_quote(test::fixtures("images/pokemon.jpeg")) + " -k 1 --format jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);

  r = search("search-text 海边 --under " + test::shell_quote(photos + "/家") + " --format paths");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  paths = test::lines(r.out);
  ASSERT_EQ(paths.size(), 2u);
  for (const auto& p : paths) EXPECT_EQ(p.rfind(photos + "/家/", 0), 0u) << p;

  r = search("search-text 海边 --format table -k 2");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("query: 海边"), std::string::npos);
  EXPECT_NE(r.out.find("   1  "), std::string::npos);

  // Not a terminal: jsonl by default. Several queries, also from stdin.
  r = test::run_cnclip_line("search-text - -k 2" + model_arg() + idx_arg(), "小狗\n猫\n");
  ASSERT_EQ(r.exit_code, 0);
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0]["query"], "小狗");
  EXPECT_EQ(rows[3]["query"], "猫");

  r = search("search-text 猫 --threshold 1.5");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_TRUE(r.out.empty());

  r = test::run_cnclip_line("search-text 猫 --format jsonl" + model_arg() + idx_arg() + " | head -c 0");
  // remove one file; it is gone from results
  r = test::run_cnclip_line("remove " + test::shell_quote(photos + "/家") + idx_arg());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = search("search-text 猫 -k 10 --format paths");
  EXPECT_EQ(test::lines(r.out).size(), 3u);
}

TEST_F(Photos, ClearErrorsForEmptyMissingAndMismatchedIndexes) {
  auto r = search("search-text 猫");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cnclip index"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u);

  index_json(test::shell_quote(photos) + idx_arg());
  r = test::run_cnclip_line("search-text 猫 --model " + test::shell_quote(test::random_tiny_bundle()) + idx_arg());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--reindex"), std::string::npos) << r.err;
  r = test::run_cnclip_line("index " + test::shell_quote(photos) + " --model " +
                            test::shell_quote(test::random_tiny_bundle()) + idx_arg());
  EXPECT_EQ(r.exit_code, 1);
  r = test::run_cnclip_line("index -q --reindex --format json " + test::shell_quote(photos) + " --model " +
                            test::shell_quote(test::random_tiny_bundle()) + idx_arg());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 5);

  r = test::run_cnclip_line("search-text - --model " + test::shell_quote(test::random_tiny_bundle()) + idx_arg(),
                            "ab\xff\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;

  r = test::run_cnclip_line("index /nonexistent/photos" + model_arg() + " --index " + test::shell_quote(dir / "other"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent/photos"), std::string::npos);
}

TEST(CliPrecision, Int8SiblingOnlyWhenAskedFor) {
  test::TempDir dir;
  const std::string idx = " --index " + test::shell_quote(dir / "i");
  const std::string int8 = " --model " + test::shell_quote(test::tiny_int8_bundle());
  auto info = test::run_cnclip_line("model-info" + int8);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["precision"], "int8");
  auto r = test::run_cnclip_line("index -q " + test::shell_quote(test::fixtures("images")) + model_arg() + idx);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip_line("search-text 皮卡丘 -k 1" + int8 + idx);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--mixed-precision"), std::string::npos) << r.err;
  r = test::run_cnclip_line("search-text 皮卡丘 -k 1 --mixed-precision --format jsonl" + int8 + idx);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
  // The index keeps its own model: fp32 still matches without the flag.
  r = test::run_cnclip_line("index -q --mixed-precision " + test::shell_quote(test::fixtures("images")) + int8 + idx);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip_line("search-text 皮卡丘 -k 1" + model_arg() + idx);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace cnclip
