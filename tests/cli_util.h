// Helpers of the command-line tests (cli_*_test.cpp): the tiny bundle's --model, distinct photos,
// JSON lines, `index --format json`, and the Photos fixture (a small library with odd names).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <thread>

#include "cnclip/catalog.h"
#include "cnclip/npy.h"
#include "test_util.h"

namespace cnclip::cli_test {

using nlohmann::json;
namespace fs = std::filesystem;

inline std::string model_arg() { return " --model " + test::shell_quote(test::tiny_bundle()); }

// A distinct photo: a fixture image with seeded noise and a colour shift.
inline void make_photo(const std::string& path, unsigned seed) {
  static const char* sources[] = {"pokemon.jpeg", "chelsea_rgba.png", "astronaut_palette.png"};
  cv::Mat img = cv::imread(test::fixtures(std::string("images/") + sources[seed % 3]), cv::IMREAD_COLOR);
  cv::resize(img, img, cv::Size(160 + seed % 50, 120 + seed % 40));
  cv::Mat noise(img.size(), img.type());
  cv::randn(noise, cv::Scalar::all(0), cv::Scalar::all(20 + seed % 30));
  cv::theRNG().state = seed;
  img += noise + cv::Scalar(seed * 37 % 90, seed * 11 % 90, seed * 5 % 90);
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_TRUE(cv::imwrite(path, img)) << path;
}

inline std::vector<json> json_lines(const std::string& out) {
  std::vector<json> v;
  for (const auto& l : test::lines(out)) v.push_back(json::parse(l));
  return v;
}

// `cnclip index --format json -q --model TINY ARGS...`: its summary (the test fails unless it exits 0).
inline json index_json(const std::vector<std::string>& args) {
  auto r = test::run_cnclip(test::concat({"index", "--format", "json", "-q", "--model", test::tiny_bundle()}, args));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out.empty() ? json{} : json::parse(r.out);
}

class Photos : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::string photos = dir / "照片 library";
  std::string idx = dir / "index";
  std::vector<std::string> idx_args() const { return {"--index", idx}; }
  // Indexes the library into `idx` and returns the summary.
  json index_photos(const std::vector<std::string>& more = {}) {
    return index_json(test::concat({photos, "--index", idx}, more));
  }
  void SetUp() override {
    make_photo(photos + "/2024 旅行/海边/sunset 1.jpg", 1);
    make_photo(photos + "/2024 旅行/海边/夕阳.png", 2);
    make_photo(photos + "/2024 旅行/山/cat.jpg", 3);
    make_photo(photos + "/家/小狗.jpeg", 4);
    make_photo(photos + "/家/deep/er/x.webp", 5);
    make_photo(photos + "/.hidden/secret.jpg", 6);
    test::write_text(photos + "/家/broken.jpg", "not an image");
    test::write_text(photos + "/notes.txt", "ignored: not an image extension");
  }
  // cnclip ARGS... --model TINY --index IDX
  test::RunResult run(const std::vector<std::string>& args, const std::string& stdin_text = "") {
    return test::run_cnclip(test::concat(args, {"--model", test::tiny_bundle(), "--index", idx}), stdin_text);
  }
};

}  // namespace cnclip::cli_test
