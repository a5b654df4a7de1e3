// `cnclip import` and `remove` with bad input: one line naming the file (and line) and the reason,
// the right exit status, and the index left as it was.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cnclip/import.h"
#include "cnclip/index_store.h"
#include "cnclip/npy.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr int kDim = 32;  // the tiny bundle's embedding size

std::string line_for(const std::string& path, float first = 0.5f) {
  std::vector<float> e(kDim, 0.1f);
  e[0] = first;
  return json{{"path", path}, {"embedding", e}}.dump() + "\n";
}

class FrontImport : public ::testing::Test {
 protected:
  void SetUp() override {
    // An index holding one file, which no failed import may lose or change.
    test::write_text(dir_ / "good.jsonl", line_for("/remote/kept.jpg"));
    auto r = run({"import", dir_ / "good.jsonl"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  test::RunResult run(const std::vector<std::string>& args) {
    return test::run_cnclip(test::concat(args, {"--model", test::tiny_bundle(), "--index", index()}));
  }
  std::string index() const { return dir_ / "index"; }
  std::vector<std::string> indexed_paths() {
    auto store = IndexStore::open(index(), IndexAccess::kRead);
    std::vector<std::string> out;
    for (const auto& r : store->catalog().files_under("")) out.push_back(r.path);
    std::sort(out.begin(), out.end());
    return out;
  }
  // One stderr line, exactly `message`, the exit status, and the index unchanged.
  void expect_refused(const std::vector<std::string>& args, int status, const std::string& message) {
    SCOPED_TRACE(args.back());
    auto r = run(args);
    EXPECT_EQ(r.exit_code, status);
    EXPECT_EQ(r.err, "cnclip: error: " + message + "\n");
    EXPECT_EQ(indexed_paths(), std::vector<std::string>{"/remote/kept.jpg"});
  }
  test::TempDir dir_;
};

TEST_F(FrontImport, MalformedJsonlLinesNameFileAndLine) {
  const std::string good = line_for("/remote/new.jpg");
  std::vector<float> zeros(kDim, 0.0f);
  std::string huge(kMaxImportLineBytes + 1, 'x');
  struct Case {
    std::string name, text, reason;
    int status = 1;
  };
  const std::vector<Case> cases = {
      {"empty-path",
       good + R"({"path": "", "embedding": [1]})"
              "\n",
       "2: \"path\" is empty"},
      {"no-path",
       good + R"({"embedding": [1]})"
              "\n",
       "2: no \"path\" field"},
      {"path-number",
       R"({"path": 7, "embedding": []})"
       "\n",
       "1: \"path\" is not a string"},
      {"path-nul",
       R"({"path": "a\u0000b", "embedding": []})"
       "\n",
       "1: the path contains a NUL character"},
      {"no-embedding",
       R"({"path": "/a.jpg"})"
       "\n",
       "1: no \"embedding\" field"},
      {"embedding-string",
       R"({"path": "/a.jpg", "embedding": "0.1,0.2"})"
       "\n",
       "1: \"embedding\" is not an array"},
      {"embedding-short",
       "\n\n"
       R"({"path": "/a.jpg", "embedding": [0.1, 0.2]})"
       "\n",
       "3: embedding has dimension 2, the model has 32"},
      {"embedding-null", json{{"path", "/a.jpg"}, {"embedding", std::vector<json>(kDim, nullptr)}}.dump() + "\n",
       "1: \"embedding\" value 0 is not a number"},
      {"embedding-zero", json{{"path", "/a.jpg"}, {"embedding", zeros}}.dump() + "\n", "1: the embedding is all zeros"},
      {"embedding-nan",
       R"({"path": "/a.jpg", "embedding": [NaN]})"
       "\n",
       "1: not valid JSON (at byte 34)"},
      {"embedding-overflow", json{{"path", "/a.jpg"}, {"embedding", std::vector<double>(kDim, 1e39)}}.dump() + "\n",
       "1: value 0 is not a finite number"},
      {"number-out-of-range",
       R"({"path": "/a.jpg", "embedding": [1e999]})"
       "\n",
       "1: a number is out of range"},
      {"not-json", good + good + "path,embedding\n", "3: not valid JSON (at byte 1)"},
      {"not-object", "[\"/a.jpg\", [0.1]]\n", "1: not a JSON object like {\"path\": ..., \"embedding\": [...]}"},
      {"path-bytes-odd",
       R"({"path_bytes": "2f6", "embedding": []})"
       "\n",
       "1: \"path_bytes\" is not hex (odd length)"},
      {"path-bytes-nonhex",
       R"({"path_bytes": "2fzz", "embedding": []})"
       "\n",
       "1: \"path_bytes\" is not hex ('zz')"},
      {"huge-line", good + huge, "2: line longer than 16 MiB; not an embed-image line"},
  };
  for (const auto& c : cases) {
    const std::string file = dir_ / (c.name + ".jsonl");
    test::write_text(file, c.text);
    expect_refused({"import", file}, c.status, file + ":" + c.reason);
  }
}

TEST_F(FrontImport, DirectoriesAreRefusedNotImportedAsNothing) {
  fs::create_directories(dir_ / "folder");
  expect_refused({"import", dir_ / "folder"}, 2, dir_ / "folder" + ": is a directory, not a JSONL file");
  std::vector<float> m(kDim, 0.5f);
  write_npy(dir_ / "m.npy", m.data(), {1, kDim});
  test::write_text(dir_ / "p.txt", "/remote/x.jpg\n");
  expect_refused({"import", "--npy", dir_ / "folder", "--paths", dir_ / "p.txt"}, 2,
                 dir_ / "folder" + ": is a directory, not an .npy file");
  expect_refused({"import", "--npy", dir_ / "m.npy", "--paths", dir_ / "folder"}, 2,
                 dir_ / "folder" + ": is a directory, not a file of paths");
  expect_refused({"import", "--paths", dir_ / "p.txt", dir_ / "good.jsonl"}, 2, "import: --paths goes with --npy");
}

TEST_F(FrontImport, PathsFilesWithCrlfLoseTheCr) {
  std::vector<float> m(3 * kDim, 0.0f);
  for (int i = 0; i < 3; ++i) m[i * kDim + i] = 1.0f;
  write_npy(dir_ / "m.npy", m.data(), {3, kDim});
  test::write_text(dir_ / "p.txt", "/remote/a.jpg\r\n/remote/b c.jpg\r\n\r\n/remote/c.jpg\r\n");
  auto r = run({"import", "--npy", dir_ / "m.npy", "--paths", dir_ / "p.txt"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed_paths(),
            (std::vector<std::string>{"/remote/a.jpg", "/remote/b c.jpg", "/remote/c.jpg", "/remote/kept.jpg"}));
  // A CRLF JSONL file too.
  std::string crlf = line_for("/remote/d.jpg");
  crlf.insert(crlf.size() - 1, "\r");
  test::write_text(dir_ / "crlf.jsonl", crlf);
  r = run({"import", dir_ / "crlf.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed_paths().size(), 5u);
  EXPECT_EQ(indexed_paths()[3], "/remote/d.jpg");
}

TEST_F(FrontImport, NpyRowsAndCountsAreCheckedBeforeWriting) {
  std::vector<float> m(2 * kDim, 0.25f);
  m[kDim + 3] = std::numeric_limits<float>::infinity();
  write_npy(dir_ / "inf.npy", m.data(), {2, kDim});
  test::write_text(dir_ / "p2.txt", "/remote/a.jpg\n/remote/b.jpg\n");
  expect_refused({"import", "--npy", dir_ / "inf.npy", "--paths", dir_ / "p2.txt"}, 1,
                 dir_ / "inf.npy" + ": row 2 (/remote/b.jpg): value 3 is not a finite number");
  std::vector<float> z(2 * kDim, 0.0f);
  z[0] = 1;
  write_npy(dir_ / "zero.npy", z.data(), {2, kDim});
  expect_refused({"import", "--npy", dir_ / "zero.npy", "--paths", dir_ / "p2.txt"}, 1,
                 dir_ / "zero.npy" + ": row 2 (/remote/b.jpg): the embedding is all zeros");
  test::write_text(dir_ / "p3.txt", "/remote/a.jpg\n/remote/b.jpg\n/remote/c.jpg\n");
  write_npy(dir_ / "ok.npy", m.data(), {1, kDim});
  expect_refused({"import", "--npy", dir_ / "ok.npy", "--paths", dir_ / "p3.txt"}, 1,
                 dir_ / "p3.txt" + ": 3 paths for 1 embeddings in " + dir_ / "ok.npy");
  write_npy(dir_ / "wide.npy", m.data(), {1, 2 * kDim});
  expect_refused({"import", "--npy", dir_ / "wide.npy", "--paths", dir_ / "p3.txt"}, 1,
                 dir_ / "wide.npy" + ": expected a [N,32] matrix, not [1,64]");
}

// embed-image's JSON gives "path_bytes" (lower-case hex of the raw bytes) for a path that is not
// valid UTF-8, with a lossy "path": import files the embedding under the exact bytes.
TEST_F(FrontImport, PathBytesGiveTheExactPath) {
  const std::string raw = "/remote/caf\xe9-\xff.jpg";  // Latin-1 é and a stray byte: not UTF-8
  std::vector<float> e(kDim, 0.1f);
  std::string hex;
  for (unsigned char c : raw) {
    char b[3];
    std::snprintf(b, sizeof(b), "%02x", c);
    hex += b;
  }
  const std::string line = R"({"path": "/remote/caf\ufffd-\ufffd.jpg", "path_bytes": ")" + hex + R"(", "embedding": )" +
                           json(e).dump() + "}\n";
  test::write_text(dir_ / "bytes.jsonl", line);
  auto r = run({"import", dir_ / "bytes.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(indexed_paths(), (std::vector<std::string>{raw, "/remote/kept.jpg"}));
}

TEST_F(FrontImport, RemoveRefusesAnEmptyPathAndAMissingIndex) {
  auto refused = test::run_cnclip({"remove", "/remote/kept.jpg", "", "--index", index()});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.err, "cnclip: error: remove: an empty path names nothing\n");
  EXPECT_EQ(indexed_paths(), std::vector<std::string>{"/remote/kept.jpg"});
  auto r = test::run_cnclip({"remove", "/remote/kept.jpg", "--index", dir_ / "nowhere"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no index here yet"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "nowhere"));
  r = test::run_cnclip({"remove", "/remote/kept.jpg", "--index", index()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(indexed_paths().empty());
}

}  // namespace
}  // namespace cnclip
