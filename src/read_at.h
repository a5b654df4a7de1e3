// Reading a range of a file by offset (pread: safe on a descriptor shared by threads).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace cnclip {

// Reads [at, at + n) of `fd` into `out`, whole (EINTR and short reads retried). False when the file
// ends first (errno 0) or on an error (errno set).
inline bool read_at(int fd, uint64_t at, void* out, size_t n) {
  errno = 0;
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, static_cast<char*>(out) + got, n - got, static_cast<off_t>(at + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

}  // namespace cnclip
