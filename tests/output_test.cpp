// Output formats, terminal escaping, exact bytes of non-UTF-8 names, and output files that are not
// regular files (preprocess --npy).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "atomic_file.h"
#include "cnclip/npy.h"
#include "cnclip/output.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

QueryResult result(const std::string& query, std::vector<std::pair<std::string, float>> hits) {
  QueryResult r;
  r.query = query;
  for (auto& [path, score] : hits) r.hits.push_back(RankedHit{static_cast<int>(r.hits.size()) + 1, path, score});
  return r;
}

std::string printed(const std::vector<QueryResult>& results, OutputFormat format, PrintOptions options = {}) {
  std::ostringstream out;
  print_results(out, results, format, options);
  return out.str();
}

TEST(TerminalSafe, EscapesControlsAndKeepsText) {
  EXPECT_EQ(terminal_safe("夕阳 sunset 1.jpg 🐶"), "夕阳 sunset 1.jpg 🐶");
  EXPECT_EQ(terminal_safe("a\x1b[31mred"), "a\\x1b[31mred");
  EXPECT_EQ(terminal_safe("line\nbreak\ttab\rcr"), "line\\nbreak\\ttab\\rcr");
  EXPECT_EQ(terminal_safe(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(terminal_safe("del\x7f"), "del\\x7f");
  EXPECT_EQ(terminal_safe("back\\slash"), "back\\\\slash");
  // C1 controls encoded in UTF-8 (U+009B is CSI on many terminals), separators, bidi overrides.
  EXPECT_EQ(terminal_safe("c1\xc2\x9b"
                          "2J"),
            "c1\\u009b2J");
  EXPECT_EQ(terminal_safe("\xc2\x85"), "\\u0085");
  EXPECT_EQ(terminal_safe("gpj.\xe2\x80\xae"
                          "exe"),
            "gpj.\\u202eexe");
  EXPECT_EQ(terminal_safe("\xe2\x80\xa8"), "\\u2028");
  // Bytes that are not UTF-8 (a raw 0x9b byte too), overlong forms and surrogates.
  EXPECT_EQ(terminal_safe("bad\xff\xfe"), "bad\\xff\\xfe");
  EXPECT_EQ(terminal_safe("\x9b"
                          "2J"),
            "\\x9b2J");
  EXPECT_EQ(terminal_safe("\xc0\xaf"), "\\xc0\\xaf");
  EXPECT_EQ(terminal_safe("\xed\xa0\x80"), "\\xed\\xa0\\x80");
  EXPECT_EQ(terminal_safe("cut\xe5\xa4"), "cut\\xe5\\xa4");
}

TEST(StringField, NonUtf8GetsExactBytesThatReadBack) {
  nlohmann::ordered_json j;
  set_string_field(j, "path", "/photos/夕阳.jpg");
  EXPECT_FALSE(j.contains("path_bytes"));
  EXPECT_EQ(get_string_field(json::parse(dump_json(j)), "path"), "/photos/夕阳.jpg");

  for (const std::string& name : {std::string("/p/\xff\xfe.jpg"), std::string("/p/latin1-\xe9t\xe9.jpg"),
                                  std::string("/p/\xed\xa0\x80surrogate"), std::string("/p/cut\xe5\xa4")}) {
    nlohmann::ordered_json k;
    set_string_field(k, "path", name);
    ASSERT_TRUE(k.contains("path_bytes")) << name;
    const std::string text = dump_json(k);
    const json back = json::parse(text);                                                 // valid JSON
    EXPECT_NE(back["path"].get<std::string>().find("\xef\xbf\xbd"), std::string::npos);  // U+FFFD
    EXPECT_EQ(back["path_bytes"], hex_encode(name));
    EXPECT_EQ(get_string_field(back, "path"), name);
  }
  EXPECT_EQ(hex_encode("/\xff\x01"), "2fff01");
  EXPECT_EQ(get_string_field(json{{"path", "x"}, {"path_bytes", "2FFF"}}, "path"), "/\xff");
  EXPECT_THROW(get_string_field(json{{"path", "x"}, {"path_bytes", "2ff"}}, "path"), Exception);
  EXPECT_THROW(get_string_field(json{{"path", "x"}, {"path_bytes", "zz"}}, "path"), Exception);
  EXPECT_THROW(get_string_field(json{{"path", 3}}, "path"), Exception);
  EXPECT_THROW(get_string_field(json{{"other", "x"}}, "path"), Exception);
}

TEST(ResultPrinter, ScoresHaveSixDecimalsInEveryFormat) {
  const std::vector<QueryResult> r{result("小狗", {{"/a.jpg", 1.0f}, {"/b.jpg", 0.5f}, {"/c.jpg", -0.0412349f}})};
  const std::string jsonl = printed(r, OutputFormat::kJsonl);
  EXPECT_EQ(jsonl,
            "{\"query\":\"小狗\",\"rank\":1,\"path\":\"/a.jpg\",\"score\":1.000000}\n"
            "{\"query\":\"小狗\",\"rank\":2,\"path\":\"/b.jpg\",\"score\":0.500000}\n"
            "{\"query\":\"小狗\",\"rank\":3,\"path\":\"/c.jpg\",\"score\":-0.041235}\n");
  const std::string arr = printed(r, OutputFormat::kJson);
  EXPECT_NE(arr.find("\"score\":1.000000}"), std::string::npos) << arr;
  EXPECT_EQ(json::parse(arr).size(), 3u);
  EXPECT_EQ(json::parse(arr)[2]["score"].get<double>(), -0.041235);
  const std::string table = printed(r, OutputFormat::kTable);
  EXPECT_NE(table.find(" 1.000000  /a.jpg"), std::string::npos) << table;
  EXPECT_NE(table.find("-0.041235  /c.jpg"), std::string::npos) << table;
}

TEST(ResultPrinter, TableAlignsNegativeScores) {
  const auto table =
      printed({result("q", {{"/pos.jpg", 0.25f}, {"/neg.jpg", -0.25f}, {"/one.jpg", -1.0f}})}, OutputFormat::kTable);
  std::vector<size_t> columns;
  for (const auto& line : test::lines(table)) {
    if (line.find(".jpg") != std::string::npos) columns.push_back(line.find('/'));
  }
  ASSERT_EQ(columns.size(), 3u) << table;
  EXPECT_EQ(columns[0], columns[1]) << table;
  EXPECT_EQ(columns[0], columns[2]) << table;
}

TEST(ResultPrinter, JsonIsOneArrayAndEmptyIsAnEmptyArray) {
  EXPECT_EQ(printed({}, OutputFormat::kJson), "[]\n");
  EXPECT_EQ(printed({result("a", {})}, OutputFormat::kJson), "[]\n");
  const auto two = json::parse(
      printed({result("a", {{"/1", 0.1f}}), result("b", {}), result("c", {{"/2", 0.2f}})}, OutputFormat::kJson));
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[0]["query"], "a");
  EXPECT_EQ(two[1]["query"], "c");
  EXPECT_EQ(printed({result("a", {})}, OutputFormat::kJsonl), "");
}

TEST(ResultPrinter, SeveralQueriesInPathsAreSeparatedByAnEmptyRecord) {
  const std::vector<QueryResult> r{result("a", {{"/a1", 0.9f}, {"/a2", 0.8f}}), result("b", {}),
                                   result("c", {{"/c\n1", 0.7f}})};
  EXPECT_EQ(printed({r[0]}, OutputFormat::kPaths), "/a1\n/a2\n");  // one query: plain list
  EXPECT_EQ(printed(r, OutputFormat::kPaths), "/a1\n/a2\n\n\n/c\n1\n");
  PrintOptions nul;
  nul.null_separated = true;
  EXPECT_EQ(printed(r, OutputFormat::kPaths, nul), std::string("/a1\0/a2\0\0\0/c\n1\0", 15));
  // A query that failed keeps its place.
  std::ostringstream out;
  ResultPrinter printer(out, OutputFormat::kPaths);
  printer.print(r[0]);
  printer.skip("bad.jpg");
  printer.print(r[2]);
  printer.finish();
  EXPECT_EQ(out.str(), "/a1\n/a2\n\n\n/c\n1\n");
}

TEST(ResultPrinter, EscapesForTerminalsOnlyAndKeepsBytesInMachineOutput) {
  const std::string evil = "/p/\x1b]0;owned\x07\xff.jpg";
  const std::vector<QueryResult> r{result("q\x1b[2J", {{evil, 0.5f}})};
  EXPECT_EQ(printed(r, OutputFormat::kPaths), evil + "\n");  // piped: raw bytes
  PrintOptions tty;
  tty.terminal = true;
  EXPECT_EQ(printed(r, OutputFormat::kPaths, tty), "/p/\\x1b]0;owned\\x07\\xff.jpg\n");
  const std::string table = printed(r, OutputFormat::kTable);
  EXPECT_EQ(table.find('\x1b'), std::string::npos) << table;
  EXPECT_NE(table.find("query: q\\x1b[2J"), std::string::npos) << table;
  const auto line = json::parse(printed(r, OutputFormat::kJsonl));
  EXPECT_EQ(line["path_bytes"], hex_encode(evil));
  EXPECT_EQ(get_string_field(line, "path"), evil);
  EXPECT_FALSE(line.contains("query_bytes"));  // the query is valid UTF-8 (ESC is JSON-escaped)
  EXPECT_EQ(line["query"], "q\x1b[2J");
  const auto field_order = printed(r, OutputFormat::kJsonl);
  EXPECT_LT(field_order.find("\"path\""), field_order.find("\"path_bytes\""));
  EXPECT_LT(field_order.find("\"path_bytes\""), field_order.find("\"score\""));
}

TEST(ResultPrinter, AFailedWriteIsAnError) {
  std::ostringstream out;
  out.setstate(std::ios::badbit);
  ResultPrinter printer(out, OutputFormat::kJsonl);
  EXPECT_THROW(printer.print(result("a", {{"/1", 0.1f}})), Exception);
}

class OutputFile : public ::testing::Test {
 protected:
  test::TempDir dir;
  const std::string bytes = std::string("new contents\0with a NUL", 23);
};

TEST_F(OutputFile, NewAndRegularFilesAreReplacedAtomically) {
  write_output_file(dir / "new.npy", bytes);
  EXPECT_EQ(test::read_text(dir / "new.npy"), bytes);
  test::write_text(dir / "old.npy", "old");
  write_output_file(dir / "old.npy", bytes);
  EXPECT_EQ(test::read_text(dir / "old.npy"), bytes);
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
}

TEST_F(OutputFile, ASymlinkIsFollowedAndStaysALink) {
  fs::create_directory(dir / "real");
  test::write_text(dir / "real/target.npy", "old");
  fs::create_symlink("real/target.npy", dir / "link.npy");  // relative, as users make them
  write_output_file(dir / "link.npy", bytes);
  EXPECT_TRUE(fs::is_symlink(dir / "link.npy"));
  EXPECT_EQ(test::read_text(dir / "real/target.npy"), bytes);
  // A chain of links, and a dangling link whose target is then created.
  fs::create_symlink("link.npy", dir / "link2.npy");
  write_output_file(dir / "link2.npy", "chain");
  EXPECT_TRUE(fs::is_symlink(dir / "link2.npy") && fs::is_symlink(dir / "link.npy"));
  EXPECT_EQ(test::read_text(dir / "real/target.npy"), "chain");
  fs::create_symlink(dir / "real/later.npy", dir / "dangling.npy");
  write_output_file(dir / "dangling.npy", bytes);
  EXPECT_TRUE(fs::is_symlink(dir / "dangling.npy"));
  EXPECT_EQ(test::read_text(dir / "real/later.npy"), bytes);
  // A loop is an error naming the link.
  fs::create_symlink("loop-b", dir / "loop-a");
  fs::create_symlink("loop-a", dir / "loop-b");
  try {
    write_output_file(dir / "loop-a", bytes);
    FAIL() << "a symlink loop was written";
  } catch (const Exception& e) {
    EXPECT_NE(std::string(e.what()).find("loop-"), std::string::npos) << e.what();
  }
}

TEST_F(OutputFile, FifoAndDevicesAreWrittenInPlace) {
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = test::read_text(dir / "fifo"); });
  write_output_file(dir / "fifo", bytes);
  reader.join();
  EXPECT_EQ(got, bytes);
  struct stat st {};
  ASSERT_EQ(::lstat((dir / "fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));  // still a FIFO, not replaced by a regular file

  write_output_file("/dev/null", bytes);
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  try {
    write_output_file("/dev/full", bytes);
    FAIL() << "/dev/full accepted the data";
  } catch (const Exception& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/full"), std::string::npos) << e.what();
  }
}

TEST_F(OutputFile, ADirectoryIsAnErrorAndIsLeftAlone) {
  fs::create_directory(dir / "d.npy");
  test::write_text(dir / "d.npy/inside", "keep");
  try {
    write_output_file(dir / "d.npy", bytes);
    FAIL() << "a directory was written";
  } catch (const Exception& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "d.npy"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_directory(dir / "d.npy"));
  EXPECT_EQ(test::read_text(dir / "d.npy/inside"), "keep");
}

TEST(Npy, BytesAreWhatWriteNpyWrites) {
  test::TempDir dir;
  const std::vector<float> v{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  write_npy(dir / "a.npy", v.data(), {2, 3});
  EXPECT_EQ(test::read_text(dir / "a.npy"), npy_bytes(v.data(), {2, 3}));
  auto back = read_npy(dir / "a.npy").value();
  EXPECT_EQ(back.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(back.as_float(), v);
}

}  // namespace
}  // namespace cnclip
