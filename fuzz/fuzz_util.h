// Helpers shared by the libFuzzer targets in this folder.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace cnclip_fuzz {

// An invariant the code under test broke: report it and abort, so that libFuzzer saves the input.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cnclip fuzz: invariant broken: %s\n", what);
  std::abort();
}

inline std::string vocab_path() {
  const char* env = std::getenv("CNCLIP_FUZZ_VOCAB");
  return env && *env ? env : CNCLIP_SOURCE_DIR "/models/vocab.txt";
}

// A file that holds exactly `data`, for APIs that take a path: an anonymous memory file (memfd),
// named through /proc/self/fd, so that fuzzing writes nothing to disk. Closed when destroyed.
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = ::memfd_create("cnclip-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) fail("memfd_create failed");
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd_, data + done, size - done);
      if (n <= 0) fail("write to memfd failed");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace cnclip_fuzz
