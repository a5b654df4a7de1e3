#include "cnclip/npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include "atomic_file.h"

namespace cnclip {

int64_t NpyArray::count() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

std::vector<float> NpyArray::as_float() const {
  std::vector<float> out(static_cast<size_t>(count()));
  if (dtype == "<f4") {
    if (!out.empty()) std::memcpy(out.data(), data.data(), out.size() * 4);
  } else if (dtype == "<f8") {
    const double* d = reinterpret_cast<const double*>(data.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(d[i]);
  } else {
    throw Exception(ErrorCode::kMismatch, "npy dtype " + dtype + " is not a float type");
  }
  return out;
}

std::vector<int64_t> NpyArray::as_int64() const {
  std::vector<int64_t> out(static_cast<size_t>(count()));
  if (dtype == "<i8") {
    if (!out.empty()) std::memcpy(out.data(), data.data(), out.size() * 8);
  } else if (dtype == "<i4") {
    const int32_t* d = reinterpret_cast<const int32_t*>(data.data());
    for (size_t i = 0; i < out.size(); ++i) out[i] = d[i];
  } else {
    throw Exception(ErrorCode::kMismatch, "npy dtype " + dtype + " is not an integer type");
  }
  return out;
}

Result<NpyArray> read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return errno_error(path, errno, "cannot open");
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    return Error{ErrorCode::kCorrupt, path + ": not a .npy file"};
  }
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
  }
  // The header must fit in the file: a lying length must not allocate gigabytes.
  const std::streamoff header_at = in.tellg();
  in.seekg(0, std::ios::end);
  const std::streamoff file_end = in.tellg();
  in.seekg(header_at);
  if (!in || header_at < 0 || static_cast<uint64_t>(file_end - header_at) < header_len) {
    return Error{ErrorCode::kTruncated, path + ": truncated .npy header"};
  }
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) return Error{ErrorCode::kTruncated, path + ": truncated .npy header"};
  NpyArray arr;
  // The header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 224), }
  auto value_after = [&](const std::string& key) -> std::string {
    const auto k = header.find("'" + key + "'");
    if (k == std::string::npos) return "";
    const auto colon = header.find(':', k);
    return colon == std::string::npos ? "" : header.substr(colon + 1);
  };
  const std::string descr = value_after("descr");
  const auto q1 = descr.find('\''), q2 = q1 == std::string::npos ? q1 : descr.find('\'', q1 + 1);
  if (q2 == std::string::npos) return Error{ErrorCode::kCorrupt, path + ": .npy header has no dtype"};
  arr.dtype = descr.substr(q1 + 1, q2 - q1 - 1);
  if (arr.dtype != "<f4" && arr.dtype != "<f8" && arr.dtype != "<i8" && arr.dtype != "<i4") {
    return Error{ErrorCode::kMismatch, path + ": unsupported .npy dtype " + arr.dtype};
  }
  if (value_after("fortran_order").find("True") == value_after("fortran_order").find_first_not_of(" ")) {
    return Error{ErrorCode::kMismatch, path + ": Fortran-order .npy is not supported"};
  }
  const std::string shape = value_after("shape");
  const auto open = shape.find('('), close = shape.find(')');
  if (open == std::string::npos || close == std::string::npos) {
    return Error{ErrorCode::kCorrupt, path + ": .npy header has no shape"};
  }
  std::stringstream dims(shape.substr(open + 1, close - open - 1));
  std::string item;
  const size_t item_size = arr.dtype[2] == '8' ? 8 : 4;
  // The data must fit in what is left of the file: this bounds every dimension and their product
  // (no overflow in count(), no allocation the file cannot fill). Zero dimensions aside, the
  // product must fit too, so that count() cannot overflow on the way to 0.
  const std::streamoff here = in.tellg();
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  in.seekg(here);
  const uint64_t max_items = here >= 0 && end >= here ? static_cast<uint64_t>(end - here) / item_size : 0;
  constexpr uint64_t kSaturated = uint64_t{1} << 62;
  uint64_t nonzero_items = 1;
  bool empty = false;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    size_t used = 0;
    long long d = -1;
    try {
      d = std::stoll(item, &used);
    } catch (const std::exception&) {
      d = -1;
    }
    if (d < 0 || item.find_first_not_of(" ", used) != std::string::npos) {
      return Error{ErrorCode::kCorrupt, path + ": .npy header has an invalid shape"};
    }
    arr.shape.push_back(d);
    if (d == 0) {
      empty = true;
    } else if (nonzero_items > kSaturated / static_cast<uint64_t>(d)) {
      nonzero_items = kSaturated;
    } else {
      nonzero_items *= static_cast<uint64_t>(d);
    }
  }
  if (nonzero_items > (empty ? kSaturated - 1 : max_items)) {
    return Error{empty ? ErrorCode::kCorrupt : ErrorCode::kTruncated,
                 path + (empty ? ": .npy header has an invalid shape" : ": .npy data ends early")};
  }
  arr.data.resize(static_cast<size_t>(arr.count()) * item_size);
  if (!in.read(reinterpret_cast<char*>(arr.data.data()), static_cast<std::streamsize>(arr.data.size()))) {
    return Error{ErrorCode::kTruncated, path + ": .npy data ends early"};
  }
  return arr;
}

std::string npy_header(const std::vector<int64_t>& shape) {
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";  // a 1-tuple, as Python writes it
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string bytes = "\x93NUMPY\x01";
  bytes.push_back('\0');
  bytes.push_back(static_cast<char>(header.size() & 0xFF));
  bytes.push_back(static_cast<char>(header.size() >> 8));
  bytes += header;
  return bytes;
}

std::string npy_bytes(const float* data, const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (auto s : shape) count *= s;
  std::string bytes = npy_header(shape);
  bytes.append(reinterpret_cast<const char*>(data), static_cast<size_t>(count) * sizeof(float));
  return bytes;
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  write_output_file(path, npy_bytes(data, shape));
}

}  // namespace cnclip
