// Minimal NumPy .npy reading and writing (little-endian, C order), for the fixtures, the
// `preprocess --npy` debugging command and `import --npy`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

struct NpyArray {
  std::string dtype;  // "<f4", "<f8", "<i8", "<i4"
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // raw little-endian values

  int64_t count() const;
  // Values converted to float / int64 (throws Exception(kMismatch) for an unsupported dtype).
  std::vector<float> as_float() const;
  std::vector<int64_t> as_int64() const;
};

// Errors name the file: missing, not an .npy, Fortran order, unsupported dtype, truncated data.
Result<NpyArray> read_npy(const std::string& path);

// The .npy file (version 1.0) of float32 data with the given shape.
std::string npy_bytes(const float* data, const std::vector<int64_t>& shape);
// Its header alone (magic, version, dict, padding to 64 bytes), for data written after it in pieces.
std::string npy_header(const std::vector<int64_t>& shape);
// Writes npy_bytes to `path`: a new or regular file appears whole or not at all (atomic rename); a
// symlink is followed and its target replaced the same way; a FIFO or device is written directly; a
// directory is an error. Throws Exception naming the path.
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);

}  // namespace cnclip
