// The command line's answers to mistakes: unknown commands and options with suggestions, help and
// version, options before the command, '--' for arguments that look like options, and plain-sentence
// checks of every numeric option (exit 2 and one line naming the option and what it accepts).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "test_util.h"

namespace cnclip {
namespace {

// Exit 2 and exactly one stderr line, equal to `line`, nothing on stdout.
// The arguments as one line, for messages.
std::string joined(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) out += (out.empty() ? "" : " ") + a;
  return out;
}

void expect_usage_error(const std::vector<std::string>& args, const std::string& line) {
  SCOPED_TRACE(joined(args));
  auto r = test::run_cnclip(args);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "cnclip: error: " + line + "\n");
  EXPECT_EQ(r.out, "");
}

// Exit 2 and one stderr line containing each of `parts`, with no CLI11 wording.
void expect_usage_error_with(const std::vector<std::string>& args, const std::vector<std::string>& parts) {
  SCOPED_TRACE(joined(args));
  auto r = test::run_cnclip(args);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_EQ(r.err.rfind("cnclip: error: ", 0), 0u) << r.err;
  for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "missing '" << p << "' in " << r.err;
  for (const char* raw : {"not in range", "required INT", "At Most", "Could not convert", "A subcommand",
                          "The following argument", "1.79", "POSITIVE"}) {
    EXPECT_EQ(r.err.find(raw), std::string::npos) << "CLI11 wording '" << raw << "' in " << r.err;
  }
  EXPECT_EQ(r.out, "");
}

TEST(FrontCommands, UnknownCommandsGetTheNearestOne) {
  expect_usage_error({"serach-text", "x"},
                     "unknown command 'serach-text'; did you mean 'search-text'? (see 'cnclip --help')");
  expect_usage_error({"indx", "photos"}, "unknown command 'indx'; did you mean 'index'? (see 'cnclip --help')");
  expect_usage_error({"search", "x"},
                     "unknown command 'search'; did you mean 'search-text' or 'search-image'? (see 'cnclip --help')");
  expect_usage_error({"modelinfo"}, "unknown command 'modelinfo'; did you mean 'model-info'? (see 'cnclip --help')");
  expect_usage_error({"foo"}, "unknown command 'foo' (see 'cnclip --help')");
  expect_usage_error({"help", "nope"}, "unknown command 'nope' (see 'cnclip --help')");
}

TEST(FrontCommands, HelpVersionAndNoArguments) {
  auto r = test::run_cnclip({"help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("search-text"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "");
  r = test::run_cnclip({"help", "search-text"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Usage: cnclip search-text"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--top-k"), std::string::npos) << r.out;
  for (const char* v : {"-V", "--version"}) {
    r = test::run_cnclip({v});
    EXPECT_EQ(r.exit_code, 0) << v;
    EXPECT_EQ(r.out.rfind("cnclip ", 0), 0u) << r.out;
  }
  // No arguments: a short usage and the command list on stderr (not machine output), exit 2.
  r = test::run_cnclip({});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("usage: cnclip COMMAND", 0), 0u) << r.err;
  for (const char* sub : {"index", "search-text", "search-image", "import", "remove", "info", "tokenize"}) {
    EXPECT_NE(r.err.find("\n  " + std::string(sub) + " "), std::string::npos) << sub;
  }
}

TEST(FrontOptions, AFolderWhereAnImageIsExpectedIsAUsageError) {
  test::TempDir dir;
  const std::string folder = dir / "照片";
  std::filesystem::create_directories(folder);
  for (const std::vector<std::string>& command : std::vector<std::vector<std::string>>{
           {"embed-image"}, {"search-image"}, {"classify", "--labels", "a,b"}, {"preprocess", "--npy", "x.npy"}}) {
    const std::string& head = command[0];
    expect_usage_error(test::concat(command, {folder}),
                       "image: '" + folder +
                           "' is a folder; give image files ('cnclip index' takes folders) (see 'cnclip " + head +
                           " --help')");
  }
}

TEST(FrontCommands, OptionsBeforeTheCommandAreExplained) {
  expect_usage_error({"--index", "i", "search-text", "x"},
                     "options go after the command: cnclip search-text --index i x");
  expect_usage_error({"--model", "my models", "-k", "3", "search-image", "a.jpg"},
                     "options go after the command: cnclip search-image --model 'my models' -k 3 a.jpg");
  expect_usage_error_with({"--frobnicate"}, {"unknown option '--frobnicate'", "options go after the command"});
}

TEST(FrontOptions, UnknownOptionsSuggestTheNearestOfThatCommand) {
  expect_usage_error({"search-text", "--treshold", "0.3", "x"},
                     "unknown option '--treshold' for search-text; did you mean '--threshold'? "
                     "(see 'cnclip search-text --help')");
  expect_usage_error(
      {"search-text", "--topk=3", "x"},
      "unknown option '--topk' for search-text; did you mean '--top-k'? (see 'cnclip search-text --help')");
  expect_usage_error(
      {"index", "--batchsize", "8", "photos"},
      "unknown option '--batchsize' for index; did you mean '--batch-size'? (see 'cnclip index --help')");
  // --top-k belongs to the search commands only: index has nothing close.
  expect_usage_error_with({"info", "--top-k", "3"},
                          {"unknown option '--top-k' for info", "(see 'cnclip info --help')"});
}

TEST(FrontOptions, ArgumentsThatLookLikeOptionsExplainDoubleDash) {
  expect_usage_error({"search-text", "-x"},
                     "unknown option '-x' for search-text; to search for '-x', put '--' before it: "
                     "cnclip search-text -- -x (see 'cnclip search-text --help')");
  expect_usage_error({"index", "-photos"},
                     "unknown option '-photos' for index; if '-photos' is a path, put '--' before it: "
                     "cnclip index -- -photos (see 'cnclip index --help')");
  expect_usage_error({"search-image", "-a b.jpg"},
                     "unknown option '-a b.jpg' for search-image; if '-a b.jpg' is an image, put '--' before it: "
                     "cnclip search-image -- '-a b.jpg' (see 'cnclip search-image --help')");
}

TEST(FrontOptions, MissingRepeatedAndExtraArgumentsInPlainWords) {
  expect_usage_error({"search-text", "--top-k"},
                     "--top-k needs a value (a whole number from 1 to 2147483647) (see 'cnclip search-text --help')");
  expect_usage_error({"search-text", "-k", "1", "-k", "2", "x"},
                     "--top-k is given 2 times; give it once (see 'cnclip search-text --help')");
  expect_usage_error({"search-text", "--under", "a", "--under", "b", "x"},
                     "--under is given 2 times; give it once (see 'cnclip search-text --help')");
  expect_usage_error({"search-text"}, "search-text needs at least one query (see 'cnclip search-text --help')");
  expect_usage_error({"preprocess", "a.jpg"}, "preprocess needs the option --npy (see 'cnclip preprocess --help')");
  expect_usage_error(
      {"index", "--hidden=maybe", "photos"},
      "--hidden is a switch and takes no value, not 'maybe' (write --hidden alone) (see 'cnclip index --help')");
  expect_usage_error({"info", "extra"}, "info takes no arguments, but was given 'extra' (see 'cnclip info --help')");
  expect_usage_error(
      {"search-text", "x", "--format", "xml"},
      "--format: expects table, json, jsonl, paths or auto, not 'xml' (see 'cnclip search-text --help')");
  expect_usage_error({"info", "--format", "yaml"},
                     "--format: expects text or json, not 'yaml' (see 'cnclip info --help')");
}

// Every numeric option of every command, with the values people mistype: each refused before any
// model or index is opened (exit 2, one line naming the option and what it accepts).
TEST(FrontOptions, EveryNumericOptionRefusesNonsense) {
  struct Case {
    std::vector<std::string> command;
    std::string option, accepts;
    std::vector<std::string> bad;
  };
  // Each value is refused by the same check everywhere; every option gets 0, -1, 2^31-1 (or its
  // overflow), nan and inf, and the checks' other refusals are spread over them.
  const std::vector<Case> cases = {
      {{"search-text", "x"},
       "--top-k",
       "a whole number from 1 to 2147483647",
       {"0", "-1", "2147483648", "nan", "1.5", ""}},
      {{"search-image", "x.jpg"}, "-k", "a whole number from 1 to 2147483647", {"0", "inf"}},
      {{"search-text", "x"}, "--threshold", "a number (not nan or inf)", {"nan", "inf", "-inf", "1e999", "0.5x", ""}},
      {{"index", "p"}, "--batch-size", "a whole number from 1 to 1024", {"0", "-1", "2147483647", "nan", "abc"}},
      {{"index", "p"}, "-j", "a whole number from 0 to 1024", {"-1", "2147483647", "inf"}},
      {{"index", "p"},
       "--max-pixels",
       "a number from 0.000001 to 1000000",
       {"0", "-1", "2147483647", "nan", "inf", "1e-300", "0.0000009", "1e-320", "1e300", "1000000.5"}},
      {{"embed-image", "x.jpg"}, "--max-pixels", "a number from 0.000001 to 1000000", {"-inf", "1e-7"}},
      {{"search-image", "x.jpg"}, "--max-pixels", "a number from 0.000001 to 1000000", {"0.0", "4.9e-324"}},
      {{"serve"}, "--max-pixels", "a number from 0.000001 to 1000000", {"1e-300"}},
      {{"search-text", "x"}, "--threads", "a whole number from 0 to 1024", {"-1", "2147483647", "nan", "inf"}},
      {{"import", "f.jsonl"}, "--threads", "a whole number from 0 to 1024", {"-1"}},
      {{"tokenize", "x"}, "--context-length", "", {"-1", "nan", "inf", "2147483648"}},
  };
  for (const auto& c : cases) {
    for (const auto& v : c.bad) {
      std::vector<std::string> parts = {"--" + std::string(c.option == "-k"   ? "top-k"
                                                           : c.option == "-j" ? "jobs"
                                                                              : c.option.substr(2)),
                                        "not '" + v + "'"};
      if (!c.accepts.empty()) parts.push_back(c.accepts);
      expect_usage_error_with(test::concat(c.command, {c.option, v}), parts);
    }
  }
}

}  // namespace
}  // namespace cnclip
