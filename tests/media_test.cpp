// Still-image formats of issue 14 (HEIF/AVIF, camera RAW, GIF, animated WebP): the formats are found
// by content, every decoder checks the pixel limit before decoding, hostile files (truncated, garbage,
// bombs) give typed errors, the default extensions take the new formats, and the RAW+JPEG rule of the
// walk and the index. Pixel parity with Pillow and the PNG sources is in media_parity_test.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string q(const std::string& s) { return test::shell_quote(s); }

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void sh(const std::string& cmd) { ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd; }

// The first 'ispe' property of a HEIF/AVIF file says the image is w x h (big-endian, after the box
// type, version and flags). False when the file has none.
bool set_ispe(std::vector<uint8_t>& b, uint32_t w, uint32_t h) {
  const std::string ispe = "ispe";
  const auto at = std::search(b.begin(), b.end(), ispe.begin(), ispe.end());
  if (b.end() - at < 16) return false;  // none, or cut inside it
  const size_t i = static_cast<size_t>(at - b.begin()) + 8;
  for (int k = 0; k < 4; ++k) {
    b[i + k] = static_cast<uint8_t>(w >> (24 - 8 * k));
    b[i + 4 + k] = static_cast<uint8_t>(h >> (24 - 8 * k));
  }
  return true;
}

// A noisy photo as PNG (OpenCV), w x h.
void make_png(const std::string& path, int w, int h, unsigned seed) {
  cv::Mat img(h, w, CV_8UC3);
  cv::theRNG().state = seed * 7919u + 1;
  cv::randu(img, cv::Scalar::all(0), cv::Scalar::all(255));
  cv::GaussianBlur(img, img, cv::Size(5, 5), 0);
  ASSERT_TRUE(cv::imwrite(path, img));
}

// One file of every new format, made by Debian's tools and tests/media_files.py.
class MediaFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const std::string d = dir_->path();
    make_png(d + "/src.png", 120, 90, 1);
    sh("heif-enc -q 80 -o " + q(d + "/a.heic") + " " + q(d + "/src.png"));
    sh("avifenc " + q(d + "/src.png") + " " + q(d + "/a.avif"));
    const std::string py =
        std::string(CNCLIP_PYTHON) + " " + q(std::string(CNCLIP_SOURCE_DIR) + "/tests/media_files.py");
    sh(py + " gif " + q(d + "/a.gif"));
    sh(py + " dng " + q(d + "/a.dng"));
    sh(std::string(CNCLIP_PYTHON) + " -c " +
       q("from PIL import Image; im = Image.open('" + d +
         "/src.png'); "
         "im.save('" +
         d + "/anim.webp', save_all=True, append_images=[im.rotate(90)], quality=80)"));
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string file(const std::string& name) { return dir_->path() + "/" + name; }
  static const std::vector<std::string>& names() {
    static const std::vector<std::string> n{"a.heic", "a.avif", "a.gif", "a.dng", "anim.webp"};
    return n;
  }
  static test::TempDir* dir_;
};
test::TempDir* MediaFiles::dir_ = nullptr;

TEST_F(MediaFiles, EachDecodesToItsFormat) {
  const std::map<std::string, std::string> format{
      {"a.heic", "heif"}, {"a.avif", "avif"}, {"a.gif", "gif"}, {"a.dng", "raw"}, {"anim.webp", "webp"}};
  for (const auto& n : names()) {
    auto r = decode_image_file(file(n), DecodeOptions{});
    ASSERT_TRUE(r) << n << ": " << r.error().message;
    EXPECT_EQ(r.value().format, format.at(n)) << n;
    EXPECT_GT(r.value().pixels.cols, 0);
    // The content decides, not the name.
    test::copy_file(file(n), file("renamed-" + n + ".bin"));
    auto renamed = decode_image_file(file("renamed-" + n + ".bin"), DecodeOptions{});
    ASSERT_TRUE(renamed) << n << ": " << renamed.error().message;
    EXPECT_EQ(renamed.value().format, format.at(n));
  }
  // Sizes: HEIF/AVIF/GIF/WebP as coded; the DNG (320x240 mosaic) demosaiced at half size.
  EXPECT_EQ(decode_image_file(file("a.heic"), {}).value().pixels.size(), cv::Size(120, 90));
  EXPECT_EQ(decode_image_file(file("a.avif"), {}).value().pixels.size(), cv::Size(120, 90));
  EXPECT_EQ(decode_image_file(file("a.gif"), {}).value().pixels.size(), cv::Size(80, 60));
  EXPECT_EQ(decode_image_file(file("a.dng"), {}).value().pixels.size(), cv::Size(160, 120));
}

TEST_F(MediaFiles, PixelLimitRefusedBeforeDecoding) {
  DecodeOptions small;
  small.max_pixels = 4000;  // every test file is larger (the GIF, 80x60, is the smallest)
  for (const auto& n : names()) {
    auto r = decode_image_file(file(n), small);
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().code, ErrorCode::kTooLarge) << n << ": " << r.error().message;
    EXPECT_NE(r.error().message.find("--max-pixels"), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.rfind(file(n), 0), 0u) << "names the file: " << r.error().message;
  }
}

TEST_F(MediaFiles, BombsAreRefusedFromTheHeader) {
  // GIF: a 65535 x 65535 logical screen (4.3 GP) with a 1-pixel frame.
  std::vector<uint8_t> gif = read_bytes(file("a.gif"));
  gif[6] = gif[7] = gif[8] = gif[9] = 0xFF;
  auto r = decode_image(gif, "bomb.gif", DecodeOptions{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTooLarge) << r.error().message;
  // HEIF/AVIF: the 'ispe' property claims 40000 x 40000.
  for (const char* n : {"a.heic", "a.avif"}) {
    std::vector<uint8_t> b = read_bytes(file(n));
    ASSERT_TRUE(set_ispe(b, 40000, 40000)) << n;
    auto h = decode_image(b, n, DecodeOptions{});
    ASSERT_FALSE(h) << n;
    EXPECT_EQ(h.error().code, ErrorCode::kTooLarge) << n << ": " << h.error().message;
  }
  // DNG: ImageWidth/ImageLength of the raw IFD claim 60000 x 60000 (data for 320 x 240).
  std::vector<uint8_t> dng = read_bytes(file("a.dng"));
  const uint32_t ifd = dng[4] | dng[5] << 8 | dng[6] << 16 | static_cast<uint32_t>(dng[7]) << 24;
  const int count = dng[ifd] | dng[ifd + 1] << 8;
  for (int e = 0; e < count; ++e) {
    uint8_t* t = &dng[ifd + 2 + e * 12];
    const int tag = t[0] | t[1] << 8;
    if (tag == 256 || tag == 257) t[8] = 0x60, t[9] = 0xEA, t[10] = 0, t[11] = 0;
  }
  auto d = decode_image(dng, "bomb.dng", DecodeOptions{});
  ASSERT_FALSE(d);
  EXPECT_EQ(d.error().code, ErrorCode::kTooLarge) << d.error().message;
}

// A HEIF image is as large as its coded data says, not as its boxes declare: the boxes are checked
// before decoding, and the decode must not go past them (found by fuzzing: 798 bytes that declare
// 48x32 in ispe and carry a 20039x19744 grid, 395 MP: over 2 GB and minutes of work before the fix).
TEST_F(MediaFiles, HeifCodedLargerThanDeclaredIsBounded) {
  const std::vector<uint8_t> bomb =
      read_bytes(std::string(CNCLIP_SOURCE_DIR) + "/fuzz/corpus/image/heif-grid-far-beyond-its-declared-size-oom.heic");
  ASSERT_EQ(bomb.size(), 798u);
  const auto start = std::chrono::steady_clock::now();
  auto r = decode_image(bomb, "bomb.heic", DecodeOptions{});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << r.error().message;
  EXPECT_EQ(r.error().message, "bomb.heic: cannot decode heif (its coded image is larger than the 48x32 it declares)");
  EXPECT_LT(seconds, 2.0) << "refused before decoding";

  // The grid's output size: the 4 bytes after rows/columns in its 8 bytes of idat.
  const std::string idat = "idat";
  const size_t at = static_cast<size_t>(std::search(bomb.begin(), bomb.end(), idat.begin(), idat.end()) - bomb.begin());
  ASSERT_LT(at, bomb.size());
  auto grid = [&](int w, int h) {
    std::vector<uint8_t> b = bomb;
    const size_t o = at + 4 + 4;
    b[o] = static_cast<uint8_t>(w >> 8), b[o + 1] = static_cast<uint8_t>(w & 255);
    b[o + 2] = static_cast<uint8_t>(h >> 8), b[o + 3] = static_cast<uint8_t>(h & 255);
    return b;
  };
  // One side past the declared largest side: refused. The declared size itself decodes.
  for (auto [w, h] : {std::pair{49, 32}, std::pair{32, 49}, std::pair{60000, 1}}) {
    auto g = decode_image(grid(w, h), "g.heic", DecodeOptions{});
    ASSERT_FALSE(g) << w << "x" << h;
    EXPECT_NE(g.error().message.find("larger than the 48x32 it declares"), std::string::npos) << g.error().message;
  }
  auto exact = decode_image(grid(48, 32), "g.heic", DecodeOptions{});
  ASSERT_TRUE(exact) << exact.error().message;
  EXPECT_EQ(exact.value().pixels.cols, 48);
  EXPECT_EQ(exact.value().pixels.rows, 32);
  // No side past 48 but more pixels than declared (48x48 = 2304 against 1536): --max-pixels is held
  // to the decoded size too.
  DecodeOptions limit;
  limit.max_pixels = 2000;
  ASSERT_TRUE(decode_image(grid(48, 32), "g.heic", limit));
  auto square = decode_image(grid(48, 48), "g.heic", limit);
  ASSERT_FALSE(square);
  EXPECT_EQ(square.error().code, ErrorCode::kTooLarge) << square.error().message;

  // A single coded image larger than its ispe (120x90 coded, 60x45 declared): the decoded size is
  // what --max-pixels holds.
  std::vector<uint8_t> b = read_bytes(file("a.heic"));
  ASSERT_TRUE(set_ispe(b, 60, 45));
  DecodeOptions coded;
  coded.max_pixels = 6000;  // over the declared 2700, under the coded 10800
  auto lie = decode_image(b, "lie.heic", coded);
  ASSERT_FALSE(lie);
  EXPECT_EQ(lie.error().code, ErrorCode::kTooLarge) << lie.error().message;
  EXPECT_NE(lie.error().message.find("120x90"), std::string::npos) << lie.error().message;
}

TEST_F(MediaFiles, TruncatedAndGarbageGiveTypedErrors) {
  for (const auto& n : names()) {
    const std::vector<uint8_t> whole = read_bytes(file(n));
    for (double part : {0.1, 0.5, 0.9}) {
      std::vector<uint8_t> cut(whole.begin(),
                               whole.begin() + static_cast<long>(static_cast<double>(whole.size()) * part));
      auto r = decode_image(cut, n, DecodeOptions{});
      ASSERT_FALSE(r) << n << " cut at " << part;
      EXPECT_TRUE(r.error().code == ErrorCode::kTruncated || r.error().code == ErrorCode::kCorrupt)
          << n << ": " << r.error().message;
      EXPECT_EQ(r.error().message.rfind(n + ": ", 0), 0u) << r.error().message;
    }
    // The signature, then garbage.
    std::vector<uint8_t> garbage(whole.begin(), whole.begin() + 32);
    for (size_t i = 0; i < 4000; ++i) garbage.push_back(static_cast<uint8_t>(i * 2654435761u >> 13));
    auto g = decode_image(garbage, n, DecodeOptions{});
    if (!g) {
      EXPECT_NE(g.error().code, ErrorCode::kInternal) << n << ": " << g.error().message;
    }
  }
}

TEST(MediaWalk, DefaultExtensionsTakeEveryFormat) {
  const auto ext = WalkOptions::default_extensions();
  for (const char* e : {"jpg", "png", "apng", "webp", "gif", "heic", "heif", "hif", "avif"}) {
    EXPECT_NE(std::find(ext.begin(), ext.end(), e), ext.end()) << e;
  }
  for (const auto& e : raw_extensions()) EXPECT_NE(std::find(ext.begin(), ext.end(), e), ext.end()) << e;
  WalkOptions o;
  EXPECT_TRUE(o.wants("/p/IMG_0001.HEIC"));
  EXPECT_TRUE(o.wants("/p/DSC_0001.NEF"));
  EXPECT_TRUE(o.wants("/p/cat.gif"));
  EXPECT_TRUE(o.wants("/p/clip.mp4"));  // videos too (video_test.cpp)
  EXPECT_FALSE(o.wants("/p/notes.txt"));
}

TEST(MediaWalk, RawNextToItsJpegIsPaired) {
  test::TempDir d;
  // (A_first.png comes before every pair: files kept in place must keep their paths.)
  for (const char* n : {"A_first.png", "IMG_1.CR2", "IMG_1.JPG", "IMG_2.NEF", "IMG_3.dng", "IMG_3.jpeg", "IMG_4.arw",
                        "IMG_4.png", "IMG_5.orf", "img_5.jpg", "sub/IMG_1.CR2", "IMG_6.raf", "IMG_6.jpe"}) {
    fs::create_directories(fs::path(d / n).parent_path());
    test::write_text(d / n, n);
  }
  const WalkResult w = walk_folder(d.path(), WalkOptions{});
  std::vector<std::string> files, paired = w.paired;
  for (const auto& f : w.files) files.push_back(f.path.substr(d.path().size() + 1));
  for (auto& p : paired) p = p.substr(d.path().size() + 1);
  std::sort(paired.begin(), paired.end());
  // Paired: same folder, same stem (case matters in the stem: img_5 is not IMG_5), a JPEG extension.
  EXPECT_EQ(paired, (std::vector<std::string>{"IMG_1.CR2", "IMG_3.dng", "IMG_6.raf"}));
  EXPECT_EQ(files, (std::vector<std::string>{"A_first.png", "IMG_1.JPG", "IMG_2.NEF", "IMG_3.jpeg", "IMG_4.arw",
                                             "IMG_4.png", "IMG_5.orf", "IMG_6.jpe", "img_5.jpg", "sub/IMG_1.CR2"}));
  // A JPEG the walk does not take (excluded, or not in --ext) pairs nothing.
  WalkOptions no_jpeg;
  no_jpeg.excludes = {"*.JPG", "*.jpeg", "*.jpe"};
  EXPECT_TRUE(walk_folder(d.path(), no_jpeg).paired.empty());
  WalkOptions raw_only;
  raw_only.extensions = {"cr2", "dng"};
  EXPECT_TRUE(walk_folder(d.path(), raw_only).paired.empty());
  EXPECT_EQ(walk_folder(d.path(), raw_only).files.size(), 3u);
}

// The index: a RAW+JPEG pair is indexed once (the JPEG), counted as "paired"; a RAW indexed before
// its JPEG arrived is removed then; a RAW given by name is indexed all the same.
TEST(MediaIndex, RawJpegPairIndexedOnce) {
  test::TempDir d;
  const std::string photos = d / "photos";
  fs::create_directories(photos);
  const std::string py = std::string(CNCLIP_PYTHON) + " " + q(std::string(CNCLIP_SOURCE_DIR) + "/tests/media_files.py");
  sh(py + " dng " + q(photos + "/IMG_7.DNG"));
  sh(py + " dng " + q(photos + "/IMG_8.dng"));
  const std::vector<std::string> common{"--model", test::tiny_bundle(), "--index", d / "idx", "--format", "json"};
  auto r = test::run_cnclip(test::concat({"index", "-q", photos}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json s = json::parse(r.out);
  EXPECT_EQ(s["added"], 2);
  EXPECT_EQ(s["paired"], 0);
  make_png(photos + "/tmp.png", 100, 80, 3);
  cv::imwrite(photos + "/IMG_7.jpg", cv::imread(photos + "/tmp.png"));
  fs::remove(photos + "/tmp.png");
  r = test::run_cnclip(test::concat({"index", photos}, common));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  s = json::parse(r.out);
  EXPECT_EQ(s["added"], 1);     // the JPEG
  EXPECT_EQ(s["paired"], 1);    // its RAW
  EXPECT_EQ(s["excluded"], 1);  // the RAW's entry, indexed before, is removed
  EXPECT_NE(r.err.find("RAW+JPEG"), std::string::npos) << r.err;
  auto search = test::run_cnclip(
      {"search-text", "照片", "-k", "10", "--format", "paths", "--model", test::tiny_bundle(), "--index", d / "idx"});
  ASSERT_EQ(search.exit_code, 0) << search.err;
  std::vector<std::string> paths = test::lines(search.out);
  std::sort(paths.begin(), paths.end());
  EXPECT_EQ(paths, (std::vector<std::string>{photos + "/IMG_7.jpg", photos + "/IMG_8.dng"}));
  // Unchanged next time: nothing added or removed, still paired.
  r = test::run_cnclip(test::concat({"index", "-q"}, common));
  s = json::parse(r.out);
  EXPECT_EQ(s["unchanged"], 2);
  EXPECT_EQ(s["paired"], 1);
  EXPECT_EQ(s["excluded"], 0);
}

TEST(MediaCli, UnsupportedAndBrokenFilesOneLine) {
  test::TempDir d;
  std::vector<uint8_t> heic_like{0, 0, 0, 24, 'f', 't', 'y', 'p', 'h', 'e', 'i', 'c',
                                 0, 0, 0, 0,  'm', 'i', 'f', '1', 'h', 'e', 'i', 'c'};
  write_bytes(d / "broken.heic", heic_like);
  auto r = test::run_cnclip({"preprocess", d / "broken.heic", "--npy", d / "o.npy"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find(d / "broken.heic"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("heif"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace cnclip
