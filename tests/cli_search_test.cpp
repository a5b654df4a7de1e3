// cnclip search-text and search-image end to end: formats, --exclude-self, --under, image queries,
// removed folders, errors of empty, missing and mismatched indexes, the int8 sibling of a model.
// (--threshold: search_threshold_test.cpp; a closed stdout: cli_output_test.cpp.)
#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST_F(Photos, SearchImageFindsItselfFirstInJson) {
  index_photos();
  const std::string query = photos + "/2024 旅行/海边/夕阳.png";
  auto r = run({"search-image", query, "--format", "json", "-k", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto arr = json::parse(r.out);
  ASSERT_TRUE(arr.is_array());
  ASSERT_EQ(arr.size(), 3u);
  EXPECT_EQ(arr[0]["path"], query);
  EXPECT_GE(arr[0]["score"].get<double>(), 0.999);
  EXPECT_EQ(arr[0]["rank"], 1);
  EXPECT_EQ(arr[1]["rank"], 2);
}

TEST_F(Photos, ExcludeSelfLeavesTheQueryImageOut) {
  index_photos();
  const std::string query = photos + "/2024 旅行/海边/夕阳.png";
  auto r = run({"search-image", query, "--exclude-self", "--format", "paths", "-k", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto paths = test::lines(r.out);
  ASSERT_EQ(paths.size(), 2u);
  for (const auto& p : paths) EXPECT_NE(p, query);
}

// A query image outside the index works too (it is encoded).
TEST_F(Photos, SearchImageWithAnImageOutsideTheIndex) {
  index_photos();
  auto r = run({"search-image", test::fixtures("images/pokemon.jpeg"), "-k", "1", "--format", "jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
}

TEST_F(Photos, UnderKeepsOnlyThatFolder) {
  index_photos();
  auto r = run({"search-text", "海边", "--under", photos + "/家", "--format", "paths"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto paths = test::lines(r.out);
  ASSERT_EQ(paths.size(), 2u);
  for (const auto& p : paths) EXPECT_EQ(p.rfind(photos + "/家/", 0), 0u) << p;
}

TEST_F(Photos, TableFormatHasTheQueryAndRanks) {
  index_photos();
  auto r = run({"search-text", "海边", "--format", "table", "-k", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("query: 海边"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   1  "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   2  "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("   3  "), std::string::npos) << r.out;
}

// Not a terminal: jsonl by default. Several queries, also from stdin.
TEST_F(Photos, QueriesFromStdinAsJsonLinesByDefault) {
  index_photos();
  auto r = run({"search-text", "-", "-k", "2"}, "小狗\n猫\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0]["query"], "小狗");
  EXPECT_EQ(rows[1]["query"], "小狗");
  EXPECT_EQ(rows[3]["query"], "猫");
}

// --threshold keeps the hits scoring at least that much: a value between the second and the third
// score keeps two (a threshold over every possible score proves nothing).
TEST_F(Photos, ThresholdKeepsTheHitsAboveIt) {
  index_photos();
  auto r = run({"search-text", "猫", "-k", "10", "--format", "jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto all = json_lines(r.out);
  ASSERT_EQ(all.size(), 5u);
  const double second = all[1]["score"], third = all[2]["score"];
  ASSERT_GT(second, third) << "the fixture needs distinct scores";
  char threshold[32];
  std::snprintf(threshold, sizeof threshold, "%.6f", (second + third) / 2);
  r = run({"search-text", "猫", "-k", "10", "--format", "jsonl", "--threshold", threshold});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto kept = json_lines(r.out);
  ASSERT_EQ(kept.size(), 2u) << "threshold " << threshold << ": " << r.out;
  EXPECT_EQ(kept[0]["path"], all[0]["path"]);
  EXPECT_EQ(kept[1]["path"], all[1]["path"]);
}

// Removing a folder takes every file below it out of the results.
TEST_F(Photos, RemovedFolderIsGoneFromResults) {
  index_photos();
  auto r = test::run_cnclip({"remove", photos + "/家", "--index", idx});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = run({"search-text", "猫", "-k", "10", "--format", "paths"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto paths = test::lines(r.out);
  EXPECT_EQ(paths.size(), 3u);  // 5 indexed, 小狗.jpeg and deep/er/x.webp removed
  for (const auto& p : paths) EXPECT_EQ(p.find(photos + "/家/"), std::string::npos) << p;
}

TEST_F(Photos, ClearErrorsForEmptyMissingAndMismatchedIndexes) {
  auto r = run({"search-text", "猫"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cnclip index"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u);

  index_photos();
  const std::string other = test::random_tiny_bundle();
  r = test::run_cnclip({"search-text", "猫", "--model", other, "--index", idx});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--reindex"), std::string::npos) << r.err;
  r = test::run_cnclip({"index", photos, "--model", other, "--index", idx});
  EXPECT_EQ(r.exit_code, 1);
  r = test::run_cnclip({"index", "-q", "--reindex", "--format", "json", photos, "--model", other, "--index", idx});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 5);

  r = test::run_cnclip({"search-text", "-", "--model", other, "--index", idx}, "ab\xff\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;

  r = test::run_cnclip({"index", "/nonexistent/photos", "--model", test::tiny_bundle(), "--index", dir / "other"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent/photos"), std::string::npos);
}

TEST(CliPrecision, Int8SiblingOnlyWhenAskedFor) {
  test::TempDir dir;
  const std::vector<std::string> idx{"--index", dir / "i"};
  const std::vector<std::string> int8{"--model", test::tiny_int8_bundle()};
  auto info = test::run_cnclip(test::concat({"model-info"}, int8));
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(json::parse(info.out)["precision"], "int8");
  auto r =
      test::run_cnclip(test::concat({"index", "-q", test::fixtures("images"), "--model", test::tiny_bundle()}, idx));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip(test::concat(test::concat({"search-text", "皮卡丘", "-k", "1"}, int8), idx));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--mixed-precision"), std::string::npos) << r.err;
  r = test::run_cnclip(test::concat(
      test::concat({"search-text", "皮卡丘", "-k", "1", "--mixed-precision", "--format", "jsonl"}, int8), idx));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
  // The index keeps its own model: fp32 still matches without the flag.
  r = test::run_cnclip(
      test::concat(test::concat({"index", "-q", "--mixed-precision", test::fixtures("images")}, int8), idx));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip(test::concat({"search-text", "皮卡丘", "-k", "1", "--model", test::tiny_bundle()}, idx));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace cnclip
