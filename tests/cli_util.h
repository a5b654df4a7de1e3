// Helpers of the command-line tests (cli_*_test.cpp): the tiny bundle's --model, distinct photos,
// JSON lines, `index --format json`, and the Photos fixture (a small library with odd names).
#pragma once

#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
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

// cnclip ARGS... started in the background with its stderr on a pseudo-terminal, so that it draws its
// progress bar: what it prints is read as it comes, and a test waits for a line of it (an event)
// instead of sleeping. stdin and stdout are /dev/null. Killed (SIGKILL) if still running when
// destroyed.
class TerminalChild {
 public:
  explicit TerminalChild(const std::vector<std::string>& args) {
    struct winsize ws {};
    ws.ws_row = 30;
    ws.ws_col = 120;
    int tty = -1;
    if (::openpty(&master_, &tty, nullptr, nullptr, &ws) != 0) {
      ADD_FAILURE() << "openpty: " << std::strerror(errno);
      return;
    }
    std::vector<std::string> all{"cnclip"};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(tty, 2);
      ::execv(CNCLIP_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(tty);
  }
  ~TerminalChild() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) ::close(master_);
  }
  TerminalChild(const TerminalChild&) = delete;
  TerminalChild& operator=(const TerminalChild&) = delete;

  // Reads what the process prints until `text` appears (true), or it closes the terminal or prints
  // nothing for `quiet` (false).
  bool wait_for(const std::string& text, std::chrono::seconds quiet = std::chrono::seconds(120)) {
    while (printed_.find(text) == std::string::npos) {
      if (!read_some(quiet)) return false;
    }
    return true;
  }
  // Sends `sig`, reads what is printed until the process ends, and returns its wait status.
  int stop(int sig) {
    ::kill(pid_, sig);
    while (read_some(std::chrono::seconds(120))) {
    }
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  const std::string& printed() const { return printed_; }

 private:
  bool read_some(std::chrono::seconds quiet) {
    pollfd p{master_, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(quiet.count() * 1000));
    if (ready < 0 && errno == EINTR) return true;
    if (ready <= 0) return false;
    char buf[4096];
    const ssize_t n = ::read(master_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) return false;  // EIO: every copy of the terminal's other side is closed
    printed_.append(buf, static_cast<size_t>(n));
    return true;
  }
  int master_ = -1;
  pid_t pid_ = -1;
  std::string printed_;
};

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
