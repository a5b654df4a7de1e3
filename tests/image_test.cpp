#include "cnclip/image.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <opencv2/imgcodecs.hpp>
#include <thread>

#include "cnclip/npy.h"
#include "cnclip/runtime.h"
#include "test_util.h"

namespace cnclip {
namespace {

const char* kFixtureImages[] = {"astronaut_palette.png", "camera_gray_1000x100.png",
                                "chelsea_rgba.png",      "coffee_2048x1366_exif6.jpg",
                                "pokemon.jpeg",          "rocket_rgb16_17x9.png"};

std::string stem(const std::string& name) { return name.substr(0, name.find('.')); }

TEST(Image, FixtureTensorsAreBitExact) {
  DecodeOptions parity;
  parity.apply_exif_orientation = false;  // as Chinese-CLIP (PIL.Image.open) does
  const Normalization norm;
  for (const char* name : kFixtureImages) {
    std::vector<float> ours(3 * 224 * 224);
    auto bytes = read_file_bytes(test::fixtures(std::string("images/") + name));
    ASSERT_TRUE(bytes.ok()) << name;
    auto ok = preprocess_image(bytes.value(), name, norm, parity, ours.data());
    ASSERT_TRUE(ok.ok()) << ok.error().message;
    auto ref = read_npy(test::fixtures("preprocess/" + stem(name) + ".npy")).value().as_float();
    ASSERT_EQ(ref.size(), ours.size());
    float max_diff = 0;
    size_t differing = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(ref[i] - ours[i]));
      differing += ref[i] != ours[i];
    }
    EXPECT_LE(max_diff, 0.02f) << name;
    EXPECT_EQ(differing, 0u) << name << ": max difference " << max_diff;
  }
}

TEST(Image, ModesFollowPillow) {
  DecodeOptions o;
  EXPECT_EQ(decode_image_file(test::fixtures("images/astronaut_palette.png"), o).value().mode, PixelMode::kPalette);
  EXPECT_EQ(decode_image_file(test::fixtures("images/camera_gray_1000x100.png"), o).value().mode, PixelMode::kGray);
  EXPECT_EQ(decode_image_file(test::fixtures("images/chelsea_rgba.png"), o).value().mode, PixelMode::kRGBA);
  EXPECT_EQ(decode_image_file(test::fixtures("images/rocket_rgb16_17x9.png"), o).value().mode, PixelMode::kRGB);
}

TEST(Image, ExifOrientationAppliedByDefaultAndIgnoredOnRequest) {
  DecodeOptions upright, parity;
  parity.apply_exif_orientation = false;
  auto a = decode_image_file(test::fixtures("images/coffee_2048x1366_exif6.jpg"), upright).value();
  auto b = decode_image_file(test::fixtures("images/coffee_2048x1366_exif6.jpg"), parity).value();
  EXPECT_EQ(a.pixels.cols, 1366);  // Orientation 6: rotated a quarter turn
  EXPECT_EQ(a.pixels.rows, 2048);
  EXPECT_EQ(b.pixels.cols, 2048);
  EXPECT_EQ(b.pixels.rows, 1366);
}

TEST(Image, ReducedJpegDecodeKeepsAtLeastTheRequestedSide) {
  DecodeOptions o;
  o.apply_exif_orientation = false;
  o.reduced_decode_min_side = 448;
  auto img = decode_image_file(test::fixtures("images/coffee_2048x1366_exif6.jpg"), o).value();
  EXPECT_EQ(img.pixels.cols, 1024);  // 1366/2 >= 448 but 1366/4 < 448
  EXPECT_EQ(img.original_width, 2048);
}

// Hostile inputs: each must give its typed, one-line error naming the file, never a crash.
class HostileFiles : public ::testing::Test {
 protected:
  test::TempDir dir;
  Error decode_error(const std::string& path, int64_t max_pixels = 100'000'000) {
    DecodeOptions o;
    o.max_pixels = max_pixels;
    auto r = decode_image_file(path, o);
    EXPECT_FALSE(r.ok()) << path << " decoded";
    if (r.ok()) return Error{};
    EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
    return r.error();
  }
};

TEST_F(HostileFiles, EmptyFile) {
  test::write_text(dir / "empty.jpg", "");
  EXPECT_EQ(decode_error(dir / "empty.jpg").code, ErrorCode::kCorrupt);
}

TEST_F(HostileFiles, TruncatedJpegIsRefusedNotHalfGrey) {
  const std::string jpeg = test::read_text(test::fixtures("images/coffee_2048x1366_exif6.jpg"));
  for (double frac : {0.3, 0.5, 0.9, 0.999}) {
    const std::string path = dir / ("cut" + std::to_string(frac) + ".jpg");
    test::write_text(path, jpeg.substr(0, static_cast<size_t>(static_cast<double>(jpeg.size()) * frac)));
    EXPECT_EQ(decode_error(path).code, ErrorCode::kTruncated) << frac;
  }
}

TEST_F(HostileFiles, TruncatedPng) {
  const std::string png = test::read_text(test::fixtures("images/chelsea_rgba.png"));
  test::write_text(dir / "cut.png", png.substr(0, png.size() / 2));
  EXPECT_EQ(decode_error(dir / "cut.png").code, ErrorCode::kTruncated);
}

TEST_F(HostileFiles, EveryPrefixOfAJpegFailsCleanly) {
  const std::string jpeg = test::read_text(test::fixtures("images/pokemon.jpeg"));
  for (size_t n = 1; n < jpeg.size(); n += 97) {
    test::write_text(dir / "p.jpg", jpeg.substr(0, n));
    DecodeOptions o;
    EXPECT_FALSE(decode_image_file(dir / "p.jpg", o).ok()) << n;
  }
}

TEST_F(HostileFiles, TextFileNamedJpg) {
  test::write_text(dir / "notes.jpg", "these are not pixels\n");
  EXPECT_EQ(decode_error(dir / "notes.jpg").code, ErrorCode::kUnsupportedFormat);
}

TEST_F(HostileFiles, WrongExtensionStillDecodes) {
  test::copy_file(test::fixtures("images/chelsea_rgba.png"), dir / "really_a_png.jpg");
  DecodeOptions o;
  auto r = decode_image_file(dir / "really_a_png.jpg", o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r.value().format, "png");
}

TEST_F(HostileFiles, DirectoryNamedJpg) {
  std::filesystem::create_directory(dir / "x.jpg");
  EXPECT_EQ(decode_error(dir / "x.jpg").code, ErrorCode::kUnsupportedFormat);
}

TEST_F(HostileFiles, MissingFile) { EXPECT_EQ(decode_error(dir / "nope.jpg").code, ErrorCode::kNotFound); }

TEST_F(HostileFiles, NoReadPermission) {
  test::copy_file(test::fixtures("images/pokemon.jpeg"), dir / "secret.jpg");
  ::chmod((dir / "secret.jpg").c_str(), 0);
  if (::geteuid() == 0) {
    // root reads anything; the check that matters then is that a FIFO cannot hang us.
    ASSERT_EQ(::mkfifo((dir / "fifo.jpg").c_str(), 0644), 0);
    EXPECT_EQ(decode_error(dir / "fifo.jpg").code, ErrorCode::kUnsupportedFormat);
  } else {
    EXPECT_EQ(decode_error(dir / "secret.jpg").code, ErrorCode::kPermissionDenied);
  }
}

TEST_F(HostileFiles, DecompressionBombRefusedBeforeDecoding) {
  // A valid 20000x20000 PNG header: refused from the header alone, nothing is allocated.
  cv::Mat small(8, 8, CV_8UC3, cv::Scalar(1, 2, 3));
  std::vector<uint8_t> png;
  cv::imencode(".png", small, png);
  auto put32 = [&](size_t at, uint32_t v) {
    png[at] = static_cast<uint8_t>(v >> 24);
    png[at + 1] = (v >> 16) & 0xFF;
    png[at + 2] = (v >> 8) & 0xFF;
    png[at + 3] = v & 0xFF;
  };
  put32(16, 20000);
  put32(20, 20000);
  test::write_text(dir / "bomb.png", std::string(png.begin(), png.end()));
  Error e = decode_error(dir / "bomb.png");
  EXPECT_EQ(e.code, ErrorCode::kTooLarge);
  EXPECT_NE(e.message.find("--max-pixels"), std::string::npos);
  // The limit is configurable.
  EXPECT_EQ(decode_error(test::fixtures("images/coffee_2048x1366_exif6.jpg"), 1'000'000).code, ErrorCode::kTooLarge);
}

TEST_F(HostileFiles, HeaderSizesWhoseProductOverflowsAreRefusedAsTooLarge) {
  // Found by fuzz_image: a TIFF claiming 4278190081 x 2560071317 pixels, whose product does not fit
  // in int64 (it wrapped and passed the limit, or was undefined behaviour under UBSan).
  Error e = decode_error(std::string(CNCLIP_SOURCE_DIR) + "/fuzz/corpus/image/tiff-size-product-overflows-int64.tif");
  EXPECT_EQ(e.code, ErrorCode::kTooLarge) << e.message;
  EXPECT_NE(e.message.find("4278190081x2560071317"), std::string::npos) << e.message;
}

TEST_F(HostileFiles, GifWithoutAnImage) {  // (GIF is read since issue 14: tests/media_test.cpp)
  test::write_text(dir / "a.gif", std::string("GIF89a\x01\x00\x01\x00\x00\x00\x00;", 13));  // ends early
  Error e = decode_error(dir / "a.gif");
  EXPECT_EQ(e.code, ErrorCode::kTruncated);
  EXPECT_NE(e.message.find("truncated gif (file ends early)"), std::string::npos) << e.message;
  test::write_text(dir / "b.gif", std::string("GIF89a\x01\x00\x01\x00\x00\x00\x00;", 14));  // no frame
  e = decode_error(dir / "b.gif");
  EXPECT_EQ(e.code, ErrorCode::kCorrupt);
  EXPECT_NE(e.message.find("gif (no image in the file)"), std::string::npos) << e.message;
}

TEST_F(HostileFiles, GarbageAfterJpegMagic) {
  std::string junk = "\xFF\xD8\xFF\xE0";
  for (int i = 0; i < 5000; ++i) junk.push_back(static_cast<char>((i * 7919) & 0xFF));
  test::write_text(dir / "junk.jpg", junk);
  DecodeOptions o;
  EXPECT_FALSE(decode_image_file(dir / "junk.jpg", o).ok());
}

TEST(Image, OtherFormatsDecode) {
  test::TempDir dir;
  cv::Mat bgr(37, 53, CV_8UC3);
  cv::randu(bgr, 0, 255);
  for (const char* ext : {".webp", ".bmp", ".tiff", ".png", ".jpg"}) {
    const std::string path = dir / (std::string("x") + ext);
    ASSERT_TRUE(cv::imwrite(path, bgr)) << ext;
    DecodeOptions o;
    auto r = decode_image_file(path, o);
    ASSERT_TRUE(r.ok()) << ext << ": " << r.error().message;
    EXPECT_EQ(r.value().pixels.cols, 53) << ext;
    EXPECT_EQ(r.value().pixels.rows, 37) << ext;
    cv::Mat out = resize_like_pillow(r.value(), 224, 224);
    EXPECT_EQ(out.type(), CV_8UC3);
  }
}

// libjpeg and libpng write to fd 2 without naming the file; with several decoders at work, a line
// that names its format goes to the files of that format only (and an anonymous one to all).
TEST(DecoderMessages, AttributedToTheFilesOfTheirFormat) {
  test::TempDir dir;
  const std::string log = dir / "stderr.txt";
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ::dup2(fd, STDERR_FILENO);
  ::close(fd);
  capture_library_stderr();
  {
    DecodingFile jpeg("/p/a.jpg", "jpeg"), png("/p/b.png", "png");
    for (const char* line : {"libpng error: IDAT: invalid distance too far back\n",
                             "Corrupt JPEG data: 10 extraneous bytes before marker 0xd9\n", "Bogus marker length\n"}) {
      ASSERT_GT(::write(STDERR_FILENO, line, std::strlen(line)), 0);
    }
  }
  release_library_stderr();
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  EXPECT_EQ(test::lines(test::read_text(log)),
            (std::vector<std::string>{
                "cnclip: warning: /p/b.png: decoder: libpng error: IDAT: invalid distance too far back",
                "cnclip: warning: /p/a.jpg: decoder: Corrupt JPEG data: 10 extraneous bytes before marker 0xd9",
                "cnclip: warning: /p/a.jpg, /p/b.png: decoder: Bogus marker length"}));
}

// CMYK JPEGs stay CMYK until after the resize (Pillow's order; the exact comparison with Pillow is in
// pillow_parity_test.py). Made with Pillow: 300x200 with real black ink, EXIF orientation 6.
class CmykJpeg : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "cmyk.jpg";
    const std::string script =
        "import numpy as np, sys\n"
        "from PIL import Image\n"
        "rng = np.random.default_rng(1)\n"
        "a = np.clip(np.linspace(0, 255, 300 * 200 * 4).reshape(200, 300, 4) + rng.normal(0, 40, (200, 300, 4)), 0, "
        "255)\n"
        "e = Image.Exif(); e[0x0112] = 6\n"
        "Image.fromarray(a.astype(np.uint8), 'CMYK').save(sys.argv[1], quality=90, exif=e.tobytes())\n";
    test::write_text(dir_ / "make.py", script);
    const std::string cmd =
        std::string(CNCLIP_PYTHON) + " " + test::shell_quote(dir_ / "make.py") + " " + test::shell_quote(path_);
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  test::TempDir dir_;
  std::string path_;
};

TEST_F(CmykJpeg, DecodesAsCmykWithOrientationAndScaling) {
  DecodeOptions raw;
  raw.apply_exif_orientation = false;
  auto stored = decode_image_file(path_, raw);
  ASSERT_TRUE(stored.ok()) << stored.error().message;
  EXPECT_EQ(stored.value().mode, PixelMode::kCMYK);
  EXPECT_EQ(stored.value().pixels.type(), CV_8UC4);
  EXPECT_EQ(stored.value().pixels.cols, 300);
  EXPECT_EQ(stored.value().pixels.rows, 200);

  // Orientation 6 (rotate 90 clockwise), as OpenCV applies it to the other JPEGs.
  auto upright = decode_image_file(path_, DecodeOptions{});
  ASSERT_TRUE(upright.ok());
  cv::Mat want;
  cv::transpose(stored.value().pixels, want);
  cv::flip(want, want, 1);
  ASSERT_EQ(upright.value().pixels.size(), want.size());
  EXPECT_EQ(cv::norm(upright.value().pixels, want, cv::NORM_INF), 0.0);
  EXPECT_EQ(upright.value().original_width, 300);

  // DCT scaling: 1/2 keeps both sides >= 100.
  DecodeOptions reduced = raw;
  reduced.reduced_decode_min_side = 100;
  auto half = decode_image_file(path_, reduced);
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(half.value().mode, PixelMode::kCMYK);
  EXPECT_EQ(half.value().pixels.cols, 150);
  EXPECT_EQ(half.value().pixels.rows, 100);

  // Pillow's CMYK -> RGB after the resize: no ink is white, full black ink is black.
  DecodedImage flat{cv::Mat(10, 10, CV_8UC4, cv::Scalar(0, 0, 0, 0)), PixelMode::kCMYK, "jpeg"};
  EXPECT_EQ(resize_like_pillow(flat, 4, 4).at<cv::Vec3b>(0, 0), cv::Vec3b(255, 255, 255));
  flat.pixels.setTo(cv::Scalar(0, 0, 0, 255));
  EXPECT_EQ(resize_like_pillow(flat, 4, 4).at<cv::Vec3b>(0, 0), cv::Vec3b(0, 0, 0));
  flat.pixels.setTo(cv::Scalar(255, 0, 128, 0));
  EXPECT_EQ(resize_like_pillow(flat, 4, 4).at<cv::Vec3b>(0, 0), cv::Vec3b(0, 255, 127));
}

// A CMYK JPEG libjpeg refuses (12-bit samples in the frame header) is a clean error naming the file.
TEST_F(CmykJpeg, UndecodableIsAnErrorNamingTheFile) {
  auto bytes = read_file_bytes(path_).value();
  size_t sof = 0;
  for (size_t i = 2; i + 9 < bytes.size(); ++i) {
    if (bytes[i] == 0xFF && bytes[i + 1] == 0xC0) {
      sof = i;
      break;
    }
  }
  ASSERT_GT(sof, 0u);
  ASSERT_EQ(bytes[sof + 9], 4);  // components
  bytes[sof + 4] = 12;           // precision
  auto r = decode_image(bytes, "bad-cmyk.jpg", DecodeOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  EXPECT_EQ(r.error().message.rfind("bad-cmyk.jpg: cannot decode jpeg (", 0), 0u) << r.error().message;
}

// Decoding and resizing on several threads at once (the server's request threads, embed-image's
// decoders): every image's tensor is the one it gets alone, bit for bit.
TEST(Image, PreprocessingOnSeveralThreadsAtOnceIsExact) {
  const Normalization norm;
  const DecodeOptions options;
  std::vector<std::vector<uint8_t>> files;
  std::vector<std::vector<float>> alone;
  for (const char* name : kFixtureImages) {
    files.push_back(read_file_bytes(test::fixtures(std::string("images/") + name)).value());
    alone.emplace_back(3 * 224 * 224);
    ASSERT_TRUE(preprocess_image(files.back(), name, norm, options, alone.back().data()).ok()) << name;
  }
  std::vector<std::string> wrong[4];
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w) {
    threads.emplace_back([&, w] {
      std::vector<float> got(3 * 224 * 224);
      for (int round = 0; round < 5; ++round) {
        for (size_t n = 0; n < files.size(); ++n) {
          const auto ok = preprocess_image(files[n], kFixtureImages[n], norm, options, got.data());
          if (!ok.ok() || got != alone[n])
            wrong[w].push_back(std::string(kFixtureImages[n]) + " on thread " + std::to_string(w));
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& list : wrong) EXPECT_TRUE(list.empty()) << list.size() << " wrong, first: " << list.front();
}

}  // namespace
}  // namespace cnclip
