// End-to-end tests of what cnclip writes (stdout failures, exact bytes of odd file names, NUL
// separation, terminal escaping, streaming) and of the search and tokenize inputs.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "cnclip/npy.h"
#include "cnclip/output.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::string kBin = CNCLIP_BINARY;
std::string q(const std::string& s) { return test::shell_quote(s); }
std::string model_arg() { return " --model " + q(test::tiny_bundle()); }

// Runs a bash command line; its stdout and stderr are captured unless the command redirects them.
test::RunResult sh(const std::string& command, const std::string& stdin_text = "") {
  test::TempDir io;
  test::write_text(io / "in", stdin_text);
  test::write_text(io / "cmd", command);
  const std::string full =
      "bash " + q(io / "cmd") + " < " + q(io / "in") + " > " + q(io / "out") + " 2> " + q(io / "err");
  const int status = std::system(full.c_str());
  test::RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = test::read_text(io / "out");
  r.err = test::read_text(io / "err");
  return r;
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> v;
  for (const auto& l : test::lines(out)) v.push_back(json::parse(l));
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

// An index over the fixture images, some under names that are not UTF-8 or hold control characters.
class Indexed : public ::testing::Test {
 protected:
  static inline test::TempDir* dir = nullptr;
  static inline std::string photos, idx;
  static inline const std::string kLatin1 = "\xe9t\xe9 \xff.png";           // not UTF-8
  static inline const std::string kNewline = "two\nlines.jpg";              // a newline in the name
  static inline const std::string kEscape = "\x1b]0;owned\x07\x1b[2J.png";  // terminal escapes
  static constexpr int kFiles = 6;

  static void SetUpTestSuite() {
    dir = new test::TempDir;
    photos = *dir / "photos";
    idx = *dir / "index";
    fs::create_directories(photos);
    test::copy_file(test::fixtures("images/pokemon.jpeg"), photos + "/pokemon.jpeg");
    test::copy_file(test::fixtures("images/chelsea_rgba.png"), photos + "/" + kLatin1);
    test::copy_file(test::fixtures("images/coffee_2048x1366_exif6.jpg"), photos + "/" + kNewline);
    test::copy_file(test::fixtures("images/astronaut_palette.png"), photos + "/" + kEscape);
    test::copy_file(test::fixtures("images/camera_gray_1000x100.png"), photos + "/camera.png");
    test::copy_file(test::fixtures("images/rocket_rgb16_17x9.png"), photos + "/rocket.png");
    auto r =
        test::run_cnclip({"index", "-q", "--format", "json", photos, "--model", test::tiny_bundle(), "--index", idx});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ASSERT_EQ(json::parse(r.out)["added"], kFiles) << r.out;
  }
  static void TearDownTestSuite() {
    delete dir;
    dir = nullptr;
  }
  static std::string idx_arg() { return " --index " + q(idx); }
  static std::string with_index() { return model_arg() + idx_arg(); }
  static std::vector<std::string> idx_args() { return {"--index", idx}; }
  static std::vector<std::string> with_index_args() { return {"--model", test::tiny_bundle(), "--index", idx}; }
};

// --- stdout failures ------------------------------------------------------------------------

TEST_F(Indexed, AFailedWriteToStdoutIsExit1ForEveryCommand) {
  const std::string img = q(test::fixtures("images/pokemon.jpeg"));
  const std::vector<std::string> commands = {
      "search-text 小狗" + with_index(),
      "search-text 小狗 --format json" + with_index(),
      "search-text 小狗 --format paths" + with_index(),
      "search-image " + img + with_index(),
      "embed-text 小狗" + model_arg(),
      "embed-image " + img + model_arg(),
      "tokenize 小狗" + model_arg(),
      "model-info" + model_arg(),
      "info" + idx_arg(),
      "info --format json" + idx_arg(),
      "index -q --format json " + q(photos) + with_index(),
      "preprocess " + img + " --npy -",
      "classify " + img + " --labels 猫,狗" + model_arg(),
      "--help",
      "search-text --help",
      "help",  // answered before parsing, as are the two below
      "help search-text",
      "--version",
  };
  for (const auto& c : commands) {
    auto r = sh(kBin + " " + c + " > /dev/full");
    EXPECT_EQ(r.exit_code, 1) << c << "\n" << r.err;
    EXPECT_NE(r.err.find("standard output"), std::string::npos) << c << "\n" << r.err;
    EXPECT_NE(r.err.find("No space left on device"), std::string::npos) << c << "\n" << r.err;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << c << "\n" << r.err;
  }
  // A closed stdout (not a full one) is a failure too.
  auto r = sh(kBin + " tokenize 小狗" + model_arg() + " >&-");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("standard output"), std::string::npos) << r.err;
}

TEST_F(Indexed, AReaderThatGoesAwayEndsTheCommandQuietly) {
  std::string many;
  for (int i = 0; i < 3000; ++i) many += "第" + std::to_string(i) + "行 some words to make the line longer\n";
  // SIGPIPE ignored (as some parents leave it): the write fails with EPIPE, which ends cnclip quietly.
  for (const std::string& trap : {std::string("trap '' PIPE; "), std::string()}) {
    auto r =
        sh(trap + kBin + " tokenize -" + model_arg() + " | head -c 10 > /dev/null; echo \"status ${PIPESTATUS[0]}\"",
           many);
    EXPECT_EQ(r.out, "status 141\n") << trap << r.err;
    EXPECT_EQ(r.err, "") << trap;
  }
}

// --- exact bytes, NUL separation, several queries -------------------------------------------

TEST_F(Indexed, JsonCarriesTheExactBytesOfNamesThatAreNotUtf8) {
  auto r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "100", "--format", "jsonl"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto hits = json_lines(r.out);
  ASSERT_EQ(hits.size(), static_cast<size_t>(kFiles));
  std::set<std::string> exact;
  for (const auto& h : hits) {
    const std::string path = get_string_field(h, "path");
    EXPECT_TRUE(fs::exists(path)) << h.dump();
    EXPECT_EQ(h.contains("path_bytes"), path == photos + "/" + kLatin1) << h.dump();
    exact.insert(path);
  }
  EXPECT_EQ(exact.count(photos + "/" + kLatin1), 1u);
  EXPECT_EQ(exact.count(photos + "/" + kNewline), 1u);
  EXPECT_EQ(exact.count(photos + "/" + kEscape), 1u);

  // --format json, embed-image, and search-image with such a path as the query.
  r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "100", "--format", "json"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  int with_bytes = 0;
  for (const auto& h : json::parse(r.out)) with_bytes += h.contains("path_bytes");
  EXPECT_EQ(with_bytes, 1);
  const std::string odd = photos + "/" + kLatin1;
  r = test::run_cnclip({"embed-image", odd, "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(get_string_field(json::parse(r.out), "path"), odd);
  r = test::run_cnclip(test::concat({"search-image", odd, "-k", "1", "--format", "jsonl"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto top = json::parse(r.out);
  EXPECT_EQ(get_string_field(top, "query"), odd);
  EXPECT_EQ(get_string_field(top, "path"), odd);
  EXPECT_EQ(top["score"].get<double>(), 1.0);

  // info and the index summary name the folder; an index under a non-UTF-8 folder says so exactly.
  const std::string odd_index = *dir / "index-\xff";
  const std::string odd_folder = *dir / "folder-\xfe";
  fs::create_directories(odd_folder);
  test::copy_file(photos + "/pokemon.jpeg", odd_folder + "/p.jpeg");
  r = test::run_cnclip(
      {"index", "-q", "--format", "json", odd_folder, "--model", test::tiny_bundle(), "--index", odd_index});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(get_string_field(json::parse(r.out), "index"), odd_index);
  r = test::run_cnclip({"info", "--format", "json", "--index", odd_index});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto info = json::parse(r.out);
  EXPECT_EQ(get_string_field(info, "index"), odd_index);
  ASSERT_TRUE(info.contains("folders_bytes")) << r.out;
  ASSERT_EQ(info["folders_bytes"].size(), 1u);
  EXPECT_EQ(info["folders_bytes"][0], hex_encode(odd_folder));
  r = test::run_cnclip(test::concat({"info", "--format", "json"}, idx_args()));  // UTF-8 names: no extra fields
  EXPECT_FALSE(json::parse(r.out).contains("folders_bytes")) << r.out;
  EXPECT_FALSE(json::parse(r.out).contains("index_bytes")) << r.out;
}

TEST_F(Indexed, PathsAreRawBytesAndNulSeparatedWithMinus0) {
  auto r =
      test::run_cnclip(test::concat({"search-text", "猫", "-k", "100", "--format", "paths", "-0"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.back(), '\0');
  auto paths = split(r.out, '\0');
  ASSERT_EQ(paths.size(), static_cast<size_t>(kFiles));
  std::set<std::string> got(paths.begin(), paths.end());
  EXPECT_EQ(got.count(photos + "/" + kNewline), 1u);
  EXPECT_EQ(got.count(photos + "/" + kLatin1), 1u);
  EXPECT_EQ(got.count(photos + "/" + kEscape), 1u);
  // Without -0 the bytes are raw too (piped output is never escaped).
  r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "100", "--format", "paths"}, with_index_args()));
  EXPECT_NE(r.out.find(photos + "/" + kEscape + "\n"), std::string::npos);
  EXPECT_NE(r.out.find(photos + "/" + kLatin1 + "\n"), std::string::npos);
}

TEST_F(Indexed, SeveralQueriesInPathsAreSeparatedByAnEmptyLine) {
  auto r = test::run_cnclip(
      test::concat({"search-text", "猫", "小狗", "海边", "-k", "2", "--format", "paths"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto blocks = split(r.out, '\n');
  // 2 paths, empty, 2 paths, empty, 2 paths (a name holding a newline may add lines: count records).
  int empty = 0;
  for (const auto& b : blocks) empty += b.empty();
  EXPECT_EQ(empty, 2) << r.out;
  r = test::run_cnclip(
      test::concat({"search-text", "猫", "小狗", "海边", "-k", "2", "--format", "paths", "-0"}, with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto records = split(r.out, '\0');
  ASSERT_EQ(records.size(), 8u);
  EXPECT_TRUE(records[2].empty() && records[5].empty());
  for (size_t i : {0, 1, 3, 4, 6, 7}) EXPECT_EQ(records[i].rfind(photos + "/", 0), 0u) << records[i];
  // A query with no result still has its (empty) block; --threshold 2 keeps nothing.
  r = test::run_cnclip(
      test::concat({"search-text", "猫", "小狗", "--threshold", "2", "--format", "paths", "-0"}, with_index_args()));
  EXPECT_EQ(r.out, std::string(1, '\0'));
  // One query: a plain list, as before.
  r = test::run_cnclip(test::concat({"search-text", "猫", "-k", "2", "--format", "paths"}, with_index_args()));
  EXPECT_EQ(test::lines(r.out).size(), 2u);
}

// --- terminals --------------------------------------------------------------------------------

// Runs cnclip on a pseudo-terminal (script(1)); returns what the terminal received.
std::string on_terminal(const std::string& args) {
  test::TempDir io;
  const std::string cmd = kBin + " " + args;
  const std::string full = "script -qefc " + q(cmd) + " /dev/null > " + q(io / "tty") + " 2>&1 < /dev/null";
  std::system(full.c_str());
  return test::read_text(io / "tty");
}

TEST_F(Indexed, ControlCharactersAreEscapedOnATerminalOnly) {
  for (const std::string& format : std::vector<std::string>{"paths", "table"}) {
    const std::string out = on_terminal("search-text 猫 -k 100 --format " + format + with_index());
    EXPECT_EQ(out.find('\x1b'), std::string::npos) << format << ": " << out;
    EXPECT_EQ(out.find('\x07'), std::string::npos) << format;
    EXPECT_NE(out.find("\\x1b]0;owned\\x07\\x1b[2J.png"), std::string::npos) << format << ": " << out;
    EXPECT_NE(out.find("two\\nlines.jpg"), std::string::npos) << format << ": " << out;
    EXPECT_NE(out.find("\\xe9t\\xe9 \\xff.png"), std::string::npos) << format << ": " << out;
  }
  // The default format on a terminal is the table, escaped too.
  EXPECT_NE(on_terminal("search-text 猫 -k 100" + with_index()).find("\\x1b]0;owned"), std::string::npos);
  // jsonl on a terminal stays JSON (escaped by JSON's own rules, exact bytes kept in path_bytes).
  const std::string jsonl = on_terminal("search-text 猫 -k 100 --format jsonl" + with_index());
  EXPECT_EQ(jsonl.find('\x1b'), std::string::npos);
  EXPECT_NE(jsonl.find("\\u001b]0;owned"), std::string::npos) << jsonl;
}

TEST(CliMessages, StderrMessagesEscapeControlCharacters) {
  test::TempDir dir;
  const std::string evil = dir / "gone\x1b[31m\nfake line\x9b.jpg";
  auto r = test::run_cnclip({"embed-image", evil, "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("gone\\x1b[31m\\nfake line\\x9b.jpg"), std::string::npos) << r.err;
}

TEST(CliMessages, IndexReportsOddNamesEscaped) {
  test::TempDir dir;
  fs::create_directories(dir / "photos");
  test::write_text(dir / "photos/broken\x1b[2J\n.jpg", "not an image");
  auto r = test::run_cnclip({"index", dir / "photos", "--model", test::tiny_bundle(), "--index", dir / "i"});
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("broken\\x1b[2J\\n.jpg"), std::string::npos) << r.err;
}

// --- streaming queries ----------------------------------------------------------------------

// A child cnclip with pipes on stdin and stdout.
struct Child {
  pid_t pid = -1;
  int in = -1, out = -1;
  explicit Child(const std::string& command) {
    int to[2], from[2];
    EXPECT_EQ(::pipe(to), 0);
    EXPECT_EQ(::pipe(from), 0);
    pid = ::fork();
    if (pid == 0) {
      ::dup2(to[0], 0);
      ::dup2(from[1], 1);
      ::close(to[1]);
      ::close(from[0]);
      ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(to[0]);
    ::close(from[1]);
    in = to[1];
    out = from[0];
  }
  void write(const std::string& s) { EXPECT_EQ(::write(in, s.data(), s.size()), static_cast<ssize_t>(s.size())); }
  // Reads until `lines` newlines have arrived or the timeout passes.
  std::string read_lines(int lines, int timeout_ms) {
    std::string got;
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::count(got.begin(), got.end(), '\n') < lines) {
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count());
      if (left <= 0) break;
      pollfd p{out, POLLIN, 0};
      if (::poll(&p, 1, left) <= 0) break;
      char buf[4096];
      const ssize_t n = ::read(out, buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }
  int wait() {
    if (in >= 0) ::close(in);
    in = -1;
    int status = 0;
    ::waitpid(pid, &status, 0);
    ::close(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
};

TEST_F(Indexed, SearchTextAnswersEachStdinLineAsItArrives) {
  Child child(kBin + " search-text - -k 2 --format jsonl" + with_index());
  child.write("小狗\n");
  // The first answer comes while stdin is still open (a `tail -f queries |` pipeline).
  const std::string first = child.read_lines(2, 60000);
  ASSERT_EQ(test::lines(first).size(), 2u) << first;
  EXPECT_EQ(json::parse(test::lines(first)[0])["query"], "小狗");
  child.write("猫\r\n\n");  // CRLF and an empty line (skipped)
  const std::string second = child.read_lines(2, 60000);
  ASSERT_EQ(test::lines(second).size(), 2u) << second;
  EXPECT_EQ(json::parse(test::lines(second)[1])["query"], "猫");
  EXPECT_EQ(child.wait(), 0);

  // json format streams one array; table and paths flush per query as well.
  Child paths(kBin + " search-text - -k 1 --format paths" + with_index());
  paths.write("小狗\n");
  EXPECT_EQ(test::lines(paths.read_lines(1, 60000)).size(), 1u);
  EXPECT_EQ(paths.wait(), 0);
}

// A stream answers each line from the newest committed state: photos indexed since it started are
// found, photos removed are gone (as serve does), and an index moved to another model stops it.
TEST(StreamingQueries, AStreamSeesPhotosIndexedAndRemovedSinceItStarted) {
  test::TempDir dir;
  const std::string photos = dir / "photos", idx = dir / "index";
  fs::create_directories(photos);
  test::copy_file(test::fixtures("images/pokemon.jpeg"), photos + "/pokemon.jpeg");
  test::copy_file(test::fixtures("images/camera_gray_1000x100.png"), photos + "/camera.png");
  auto index = [&](const std::string& bundle, bool reindex) {
    auto r =
        test::run_cnclip(test::concat({"index", "-q", photos, "--model", bundle, "--index", idx},
                                      reindex ? std::vector<std::string>{"--reindex"} : std::vector<std::string>{}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  };
  index(test::tiny_bundle(), false);
  const std::string common = " -k 100 --threshold -1 --format paths" + model_arg() + " --index " + q(idx);
  Child text(kBin + " search-text -" + common), image(kBin + " search-image --paths-from -" + common);
  const std::string query_image = dir / "query.jpeg";
  test::copy_file(test::fixtures("images/pokemon.jpeg"), query_image);
  int asked = 0;
  // Each stream's answer to one more line: the paths found.
  auto answer = [&](int expected) {
    std::vector<std::set<std::string>> got(2);
    text.write("小狗\n");
    image.write(query_image + "\n");
    for (int s = 0; s < 2; ++s) {
      Child& c = s == 0 ? text : image;
      // After the first answer, a blank line comes before each one.
      for (const auto& line : test::lines(c.read_lines(expected + (asked > 0 ? 1 : 0), 60000))) {
        if (!line.empty()) got[s].insert(line);
      }
    }
    ++asked;
    return got;
  };
  const std::string pokemon = fs::canonical(photos + "/pokemon.jpeg"), camera = fs::canonical(photos + "/camera.png");
  const std::set<std::string> first{pokemon, camera};
  EXPECT_EQ(answer(2), (std::vector<std::set<std::string>>{first, first}));
  fs::remove(photos + "/camera.png");
  test::copy_file(test::fixtures("images/rocket_rgb16_17x9.png"), photos + "/rocket.png");
  index(test::tiny_bundle(), false);
  const std::string rocket = fs::canonical(photos + "/rocket.png");
  const std::set<std::string> second{pokemon, rocket};
  EXPECT_EQ(answer(2), (std::vector<std::set<std::string>>{second, second}));
  image.wait();
  Child& child = text;
  // Another model's vectors are never compared with this model's queries.
  index(test::random_tiny_bundle(), true);
  child.write("小狗\n");
  EXPECT_EQ(child.read_lines(1, 60000), "");
  EXPECT_EQ(child.wait(), 1);
}

TEST_F(Indexed, StdinQueriesAreCheckedLineByLine) {
  auto r = test::run_cnclip(test::concat({"search-text", "-", "-k", "1"}, with_index_args()), "小狗\n   \n猫\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("stdin line 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("blank"), std::string::npos) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);  // the line before was answered
  r = test::run_cnclip(test::concat({"search-text", "-", "-k", "1", "--format", "json"}, with_index_args()),
                       "小狗\n   \n猫\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(json::parse(r.out).size(), 1u) << r.out;  // still one well-formed array
  r = test::run_cnclip(test::concat({"search-text", "-"}, with_index_args()), "");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  // Queries with -0 may hold newlines.
  static const char kNulSeparated[] = "小狗\n猫\0海边\0";
  r = test::run_cnclip(test::concat({"search-text", "-", "-0", "-k", "1"}, with_index_args()),
                       std::string(kNulSeparated, sizeof kNulSeparated - 1));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["query"], "小狗\n猫");
  EXPECT_EQ(rows[1]["query"], "海边");
}

// --- search inputs ----------------------------------------------------------------------------

TEST_F(Indexed, EmptyAndBlankQueriesAreUsageErrors) {
  for (const std::string& query :
       std::vector<std::string>{"''", "'   '", "$'\\t\\n'", "'　'", "$'\\x01'"}) {  // ideographic space too
    auto r = sh(kBin + " search-text 猫 " + query + with_index());
    EXPECT_EQ(r.exit_code, 2) << query << r.out;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << query << r.err;
    EXPECT_NE(r.err.find("query 2"), std::string::npos) << query << r.err;
    EXPECT_EQ(r.out, "") << query;  // checked before anything is searched
  }
}

TEST_F(Indexed, ALongQueryIsCutWithAWarning) {
  std::string query;
  for (int i = 0; i < 30; ++i) query += "夕阳大海";  // 120 characters, one token each
  auto r = test::run_cnclip(test::concat({"search-text", query, "-k", "1"}, with_index_args()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
  ASSERT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("夕阳大海"), std::string::npos) << r.err;   // names the query
  EXPECT_NE(r.err.find("50 of 120"), std::string::npos) << r.err;  // how many tokens were kept
  // A query that fits says nothing; tokenize and embed-text warn too.
  r = test::run_cnclip(test::concat({"search-text", "夕阳大海", "-k", "1"}, with_index_args()));
  EXPECT_EQ(r.err, "");
  r = test::run_cnclip({"tokenize", query, "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.err.find("50 of 120"), std::string::npos) << r.err;
  r = test::run_cnclip({"tokenize", query, "--context-length", "10", "--model", test::tiny_bundle()});
  EXPECT_NE(r.err.find("8 of 120"), std::string::npos) << r.err;
  r = test::run_cnclip({"embed-text", query, "--model", test::tiny_bundle()});
  EXPECT_NE(r.err.find("50 of 120"), std::string::npos) << r.err;
}

TEST_F(Indexed, TopKBeyondTheIndexReturnsEverything) {
  for (const std::string& k : std::vector<std::string>{"2147483647", "1000", "6"}) {
    auto r = test::run_cnclip(test::concat({"search-text", "猫", "-k", k}, with_index_args()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json_lines(r.out).size(), static_cast<size_t>(kFiles)) << k;
    r = test::run_cnclip(
        test::concat({"search-image", photos + "/pokemon.jpeg", "--exclude-self", "-k", k}, with_index_args()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto rows = json_lines(r.out);
    EXPECT_EQ(rows.size(), static_cast<size_t>(kFiles - 1)) << k;
    for (const auto& row : rows) EXPECT_NE(row["path"], photos + "/pokemon.jpeg");
  }
  for (const std::string& k : std::vector<std::string>{"0", "-1", "2147483648", "x"}) {
    auto r = test::run_cnclip(test::concat({"search-text", "猫", "-k", k}, with_index_args()));
    EXPECT_EQ(r.exit_code, 2) << k << r.err;
  }
}

TEST_F(Indexed, ThresholdMustBeAFiniteNumber) {
  for (const std::string& t : std::vector<std::string>{"nan", "NaN", "inf", "-inf", "infinity", "1e999", "abc"}) {
    auto r = test::run_cnclip(test::concat({"search-text", "猫", "--threshold", t}, with_index_args()));
    EXPECT_EQ(r.exit_code, 2) << t << r.out;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << t << r.err;
    EXPECT_EQ(r.out, "");
  }
  auto r = test::run_cnclip(test::concat({"search-text", "猫", "--threshold", "-1"}, with_index_args()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 10u > kFiles ? static_cast<size_t>(kFiles) : 10u);
}

TEST_F(Indexed, SearchImageReadsImageBytesFromStdin) {
  const std::string img = photos + "/pokemon.jpeg";
  // '-': the bytes of one image on stdin. It is the indexed photo's content, so it ranks first.
  auto r = sh(kBin + " search-image - -k 1 --format jsonl" + with_index() + " < " + q(img));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto row = json::parse(r.out);
  EXPECT_EQ(row["query"], "-");
  EXPECT_EQ(row["path"], img);
  EXPECT_GT(row["score"].get<double>(), 0.9999);
  // /dev/stdin on a pipe, and a process substitution, read the bytes as they come.
  r = sh("cat " + q(img) + " | " + kBin + " search-image /dev/stdin -k 1" + with_index());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["path"], img);
  r = sh(kBin + " search-image <(cat " + q(img) + ") -k 1" + with_index());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["path"], img);
  // Not an image on stdin: one line naming stdin, exit 1.
  r = test::run_cnclip(test::concat({"search-image", "-"}, with_index_args()), "photos/a.jpg\nphotos/b.jpg\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("standard input"), std::string::npos) << r.err;
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  r = test::run_cnclip(test::concat({"search-image", "-", "-"}, with_index_args()), "x");
  EXPECT_EQ(r.exit_code, 2);
  r = test::run_cnclip(test::concat({"search-image", "-", "--paths-from", "-"}, with_index_args()), "x");
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(Indexed, SearchImagePathListsAreLinesOrNulTerminated) {
  const std::string odd = photos + "/" + kNewline;
  auto r =
      test::run_cnclip(test::concat({"search-image", "--paths-from", "-", "-0", "-k", "1", "--format", "paths", "-0"},
                                    with_index_args()),
                       odd + std::string(1, '\0') + photos + "/pokemon.jpeg" + std::string(1, '\0'));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, odd + std::string(1, '\0') + std::string(1, '\0') + photos + "/pokemon.jpeg" + std::string(1, '\0'));
  // Lines, with a missing file in the middle: reported, its block kept empty, exit 1.
  r = test::run_cnclip(
      test::concat({"search-image", "--paths-from", "-", "-k", "1", "--format", "paths"}, with_index_args()),
      photos + "/pokemon.jpeg\n" + photos + "/missing.jpg\r\n" + photos + "/camera.png\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("missing.jpg"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, photos + "/pokemon.jpeg\n\n\n" + photos + "/camera.png\n");
  // From a file, after the arguments.
  test::TempDir list;
  test::write_text(list / "l.txt", photos + "/camera.png\n");
  r = test::run_cnclip(test::concat(
      {"search-image", photos + "/pokemon.jpeg", "--paths-from", list / "l.txt", "-k", "1", "--format", "jsonl"},
      with_index_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1]["query"], photos + "/camera.png");
}

// `find -print0 | cnclip index - -0`: every command whose '-' reads a list takes -0; NUL-separated input
// read as lines is an error that says so (it once indexed only the first name, exit 0).
TEST_F(Indexed, NulSeparatedListsOnStdinForIndexRemoveEmbedAndTokenize) {
  std::string list;
  for (const auto& name : {kNewline, std::string("pokemon.jpeg"), kLatin1}) list += photos + "/" + name + '\0';
  test::TempDir d;
  const std::vector<std::string> other{"--index", d / "i"};
  auto r = test::run_cnclip(
      test::concat({"index", "-", "-q", "--format", "json", "--model", test::tiny_bundle()}, other), list);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("holds a NUL byte; for NUL-separated input (find -print0) add -0"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "i/catalog.sqlite3")) << "nothing is created for a refused list";
  r = test::run_cnclip(
      test::concat({"index", "-", "-0", "-q", "--format", "json", "--model", test::tiny_bundle()}, other), list);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 3) << r.out;
  r = test::run_cnclip({"embed-image", "-", "--null", "--model", test::tiny_bundle()}, list);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 3u);
  r = test::run_cnclip({"tokenize", "-", "-0", "--model", test::tiny_bundle()},
                       std::string("a\nb") + '\0' + "c" + '\0');
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 2u);
  r = test::run_cnclip(test::concat({"remove", "-", "-0"}, other), photos + "/" + kNewline + '\0');
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip(test::concat({"info", "--format", "json"}, other));
  EXPECT_EQ(json::parse(r.out)["files"], 2) << r.out;
}

// --- tokenize and preprocess ------------------------------------------------------------------

TEST(CliTokenize, ContextLengthIsBoundedByTheModel) {
  for (const std::string& n : std::vector<std::string>{"0", "-1", "1", "53", "512", "2147483647", "-2147483648"}) {
    const auto start = std::chrono::steady_clock::now();
    auto r = test::run_cnclip({"tokenize", "小狗", "--context-length", n, "--model", test::tiny_bundle()});
    EXPECT_EQ(r.exit_code, 2) << n << r.out;
    EXPECT_EQ(test::lines(r.err).size(), 1u) << n << r.err;
    EXPECT_EQ(r.out, "") << n;
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20)) << n;
    if (n == "53") {
      EXPECT_NE(r.err.find("52"), std::string::npos) << r.err;
    }
  }
  for (int n : {2, 10, 52}) {
    auto r =
        test::run_cnclip({"tokenize", "小狗", "--context-length", std::to_string(n), "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << n << r.err;
    EXPECT_EQ(json::parse(r.out)["ids"].size(), static_cast<size_t>(n));
  }
  // A vocabulary alone: bounded by the 512 positions of Chinese-CLIP's text towers.
  const std::vector<std::string> vocab{"--vocab", test::fixtures("vocab.txt")};
  auto r = test::run_cnclip(test::concat({"tokenize", "小狗", "--context-length", "512"}, vocab));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["ids"].size(), 512u);
  EXPECT_EQ(test::run_cnclip(test::concat({"tokenize", "小狗", "--context-length", "513"}, vocab)).exit_code, 2);
}

TEST(CliPreprocess, NpyTargetsThatAreNotRegularFiles) {
  test::TempDir dir;
  const std::string image = test::fixtures("images/pokemon.jpeg"), img = q(image);
  auto r = test::run_cnclip({"preprocess", image, "--npy", dir / "ref.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string expected = test::read_text(dir / "ref.npy");
  ASSERT_EQ(read_npy(dir / "ref.npy").value().shape, (std::vector<int64_t>{3, 224, 224}));

  r = test::run_cnclip({"preprocess", image, "--npy", "-"});  // stdout
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out == expected);

  test::write_text(dir / "target.npy", "old");
  fs::create_symlink("target.npy", dir / "link.npy");
  r = test::run_cnclip({"preprocess", image, "--npy", dir / "link.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(dir / "link.npy"));
  EXPECT_TRUE(test::read_text(dir / "target.npy") == expected);

  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  r = sh("cat " + q(dir / "fifo") + " > " + q(dir / "from-fifo") + " & " + kBin + " preprocess " + img + " --npy " +
         q(dir / "fifo") + "; s=$?; wait; exit $s");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(test::read_text(dir / "from-fifo") == expected);
  struct stat st {};
  ASSERT_EQ(::lstat((dir / "fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));

  r = test::run_cnclip({"preprocess", image, "--npy", "/dev/null"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));

  fs::create_directory(dir / "d.npy");
  r = test::run_cnclip({"preprocess", image, "--npy", dir / "d.npy"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("d.npy: is a directory"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::is_directory(dir / "d.npy"));
}

}  // namespace
}  // namespace cnclip
