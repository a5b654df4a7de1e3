// cnclip import end to end: JSONL and .npy + paths round trips.
#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST(CliImport, JsonlAndNpyRoundTrip) {
  test::TempDir dir;
  const std::string img = test::fixtures("images/pokemon.jpeg");
  auto e =
      test::run_cnclip({"embed-image", img, test::fixtures("images/chelsea_rgba.png"), "--model", test::tiny_bundle()});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  test::write_text(dir / "e.jsonl", e.out);
  auto r = test::run_cnclip({"import", dir / "e.jsonl", "--model", test::tiny_bundle(), "--index", dir / "i1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = test::run_cnclip(
      {"search-image", img, "-k", "1", "--format", "jsonl", "--model", test::tiny_bundle(), "--index", dir / "i1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto hit = json::parse(r.out);
  EXPECT_EQ(hit["path"], fs::canonical(img).string());
  EXPECT_GE(hit["score"].get<double>(), 0.999);

  // npy + paths; a wrong dimension is refused with the file named, and nothing is written.
  std::vector<float> m(3 * 32, 0.0f);
  for (int i = 0; i < 3; ++i) m[i * 32 + i] = 1.0f;
  write_npy(dir / "m.npy", m.data(), {3, 32});
  test::write_text(dir / "p.txt", "/remote/a.jpg\n/remote/b.jpg\n/remote/c.jpg\n");
  r = test::run_cnclip({"import", "--npy", dir / "m.npy", "--paths", dir / "p.txt", "--model", test::tiny_bundle(),
                        "--index", dir / "i2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto info = json::parse(test::run_cnclip({"info", "--format", "json", "--index", dir / "i2"}).out);
  EXPECT_EQ(info["files"], 3);
  write_npy(dir / "bad.npy", m.data(), {6, 16});
  test::write_text(dir / "p6.txt", "a\nb\nc\nd\ne\nf\n");
  r = test::run_cnclip({"import", "--npy", dir / "bad.npy", "--paths", dir / "p6.txt", "--model", test::tiny_bundle(),
                        "--index", dir / "i2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.npy"), std::string::npos) << r.err;
  info = json::parse(test::run_cnclip({"info", "--format", "json", "--index", dir / "i2"}).out);
  EXPECT_EQ(info["files"], 3);
}

}  // namespace
}  // namespace cnclip
