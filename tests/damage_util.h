// Helpers of the damage, read-only and fault-injection tests: photo folders, byte damage, mounts.
#pragma once

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "cnclip/catalog.h"
#include "test_util.h"

namespace cnclip::test {

// A small distinct PNG (random blocks), fast to write and to decode.
inline void make_small_photo(const std::string& path, unsigned seed) {
  std::mt19937 rng(seed);
  cv::Mat img(48, 64, CV_8UC3);
  for (int y = 0; y < img.rows; y += 8) {
    for (int x = 0; x < img.cols; x += 8) {
      img(cv::Rect(x, y, 8, 8))
          .setTo(cv::Scalar(static_cast<double>(rng() % 256), static_cast<double>(rng() % 256),
                            static_cast<double>(rng() % 256)));
    }
  }
  cv::imwrite(path, img);
}

// Overwrites `n` bytes at `offset` with random bytes (the file keeps its size when it was long enough).
inline void damage_bytes(const std::string& path, uint64_t offset, size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string junk(n, '\0');
  for (auto& c : junk) c = static_cast<char>(rng());
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(junk.data(), static_cast<std::streamsize>(n));
}

inline uint64_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

// path -> embedding of every file in a catalog (opened read-only).
inline std::map<std::string, std::vector<float>> catalog_entries(const std::string& catalog_path) {
  std::map<std::string, std::vector<float>> out;
  auto c = Catalog::open_read_only(catalog_path);
  for (const auto& r : c->files_under("")) out[r.path] = c->embedding(r.id);
  return out;
}

// A mount on `dir` for the lifetime of the object (unmounted when destroyed); ok() is false, with
// why(), when this process may not mount (not root, no CAP_SYS_ADMIN).
class ScopedMount {
 public:
  // A read-only bind mount of `dir` over itself.
  static ScopedMount read_only(const std::string& dir) { return read_only_view(dir, dir); }
  // A read-only bind mount of `dir` on `view` (an existing folder): `dir` stays writable.
  static ScopedMount read_only_view(const std::string& dir, const std::string& view) {
    ScopedMount m(view);
    if (::mount(dir.c_str(), view.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      m.fail("cannot bind-mount");
    } else if (::mount(nullptr, view.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
      m.fail("cannot remount read-only");
      ::umount2(view.c_str(), MNT_DETACH);
    } else {
      m.ok_ = true;
    }
    return m;
  }
  // A tmpfs of `bytes` on `dir`, with at most `inodes` files (0: tmpfs's default).
  static ScopedMount tmpfs(const std::string& dir, uint64_t bytes, uint64_t inodes = 0) {
    ScopedMount m(dir);
    const std::string opts =
        "size=" + std::to_string(bytes) + ",mode=0755" + (inodes ? ",nr_inodes=" + std::to_string(inodes) : "");
    if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) != 0) m.fail("cannot mount a tmpfs");
    else m.ok_ = true;
    return m;
  }
  ScopedMount(ScopedMount&& o) noexcept : dir_(std::move(o.dir_)), why_(std::move(o.why_)), ok_(o.ok_) {
    o.ok_ = false;
  }
  ScopedMount(const ScopedMount&) = delete;
  ScopedMount& operator=(const ScopedMount&) = delete;
  ScopedMount& operator=(ScopedMount&&) = delete;
  ~ScopedMount() {
    if (ok_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }
  const std::string& why() const { return why_; }

 private:
  explicit ScopedMount(std::string dir) : dir_(std::move(dir)) {}
  void fail(const char* what) { why_ = std::string(what) + ": " + std::strerror(errno); }
  std::string dir_, why_;
  bool ok_ = false;
};

}  // namespace cnclip::test
