// cnclip model-info, tokenize, embed-text, embed-image and preprocess end to end.
#include "cli_util.h"

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST(Cli, EmbedTextPrintsNormalizedJsonLines) {
  auto r = test::run_cnclip({"embed-text", "小狗", "夕阳、大海、沙滩", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["text"], "小狗");
  auto e = rows[1]["embedding"].get<std::vector<float>>();
  ASSERT_EQ(e.size(), 32u);
  double n = 0;
  for (float x : e) n += double(x) * x;
  EXPECT_NEAR(n, 1.0, 1e-5);
}

TEST(Cli, EmbedTextWorksWithoutTheImageTower) {
  test::TempDir dir;
  fs::copy(test::tiny_bundle(), dir / "b", fs::copy_options::recursive);
  fs::remove(dir / "b/image_encoder.pt");
  auto r = test::run_cnclip({"embed-text", "小狗", "--model", dir / "b"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json_lines(r.out).size(), 1u);
}

TEST(Cli, EmbedImageReportsBadFilesAndKeepsGoing) {
  test::TempDir dir;
  test::write_text(dir / "bad.jpg", "nope");
  auto r = test::run_cnclip(
      {"embed-image", test::fixtures("images/pokemon.jpeg"), dir / "bad.jpg", "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(json_lines(r.out).size(), 1u);
  EXPECT_NE(r.err.find(dir / "bad.jpg"), std::string::npos);
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
}

TEST(Cli, MissingBundleIsOneLineNamingIt) {
  auto r = test::run_cnclip({"model-info", "--model", "/nonexistent/bundle"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(test::lines(r.err).size(), 1u);
  EXPECT_NE(r.err.find("/nonexistent/bundle"), std::string::npos);
  r = test::run_cnclip({"model-info", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(json::parse(r.out)["embedding_dim"], 32);
}

TEST(Cli, TokenizeJsonInputReproducesFixture) {
  std::ifstream in(test::fixtures("tokenizer_cases.jsonl"));
  std::string line, input;
  std::vector<std::vector<int64_t>> expected;
  while (std::getline(in, line)) {
    auto j = json::parse(line);
    input += json(j["text"]).dump() + "\n";
    expected.push_back(j["ids"].get<std::vector<int64_t>>());
  }
  auto r = test::run_cnclip({"tokenize", "--json-input", "--model", test::tiny_bundle()}, input);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = json_lines(r.out);
  ASSERT_EQ(rows.size(), expected.size());
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i]["ids"].get<std::vector<int64_t>>(), expected[i]) << i;
}

TEST(Cli, PreprocessWritesTheReferenceTensor) {
  test::TempDir dir;
  auto r = test::run_cnclip({"preprocess", "--ignore-exif", "--full-decode", test::fixtures("images/chelsea_rgba.png"),
                             "--npy", dir / "t.npy"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto ours = read_npy(dir / "t.npy").value();
  EXPECT_EQ(ours.shape, (std::vector<int64_t>{3, 224, 224}));
  EXPECT_EQ(ours.as_float(), read_npy(test::fixtures("preprocess/chelsea_rgba.npy")).value().as_float());
}

// libjpeg/libpng print warnings on their own; none may reach the terminal unexplained.
TEST(CliDecoderNoise, LibraryMessagesNameTheFile) {
  test::TempDir dir;
  std::string jpeg = test::read_text(test::fixtures("images/pokemon.jpeg"));
  for (size_t i = jpeg.size() / 2; i < jpeg.size() / 2 + 200; ++i) {
    if (static_cast<unsigned char>(jpeg[i]) != 0xFF && static_cast<unsigned char>(jpeg[i - 1]) != 0xFF) {
      jpeg[i] = static_cast<char>((jpeg[i] * 7 + 3) & 0xFF);
    }
  }
  test::write_text(dir / "corrupt.jpg", jpeg);
  std::string png = test::read_text(test::fixtures("images/chelsea_rgba.png"));
  for (size_t i = 5000; i < 5100; ++i) png[i] = static_cast<char>(png[i] ^ 0x55);
  test::write_text(dir / "corrupt.png", png);
  // One file per run: embed-image decodes files concurrently, and two libraries writing to fd 2 at
  // the same moment can share a line (attribution among concurrent files: DecoderMessages test).
  auto jpeg_run = test::run_cnclip({"embed-image", dir / "corrupt.jpg", "--model", test::tiny_bundle()});
  EXPECT_EQ(jpeg_run.exit_code, 0);  // libjpeg warns and decodes the rest
  auto png_run = test::run_cnclip({"embed-image", dir / "corrupt.png", "--model", test::tiny_bundle()});
  EXPECT_EQ(png_run.exit_code, 1);  // the PNG cannot be decoded
  const auto err = test::lines(jpeg_run.err + png_run.err);
  ASSERT_FALSE(err.empty());
  bool named_jpeg = false, named_png = false;
  for (const auto& line : err) {
    EXPECT_EQ(line.rfind("cnclip: ", 0), 0u) << "unexplained stderr line: " << line;
    named_jpeg |= line.find("corrupt.jpg: decoder: Corrupt JPEG data") != std::string::npos;
    named_png |= line.find("corrupt.png: decoder: libpng error") != std::string::npos;
  }
  EXPECT_TRUE(named_jpeg) << jpeg_run.err;
  EXPECT_TRUE(named_png) << png_run.err;
}

}  // namespace
}  // namespace cnclip
