#include "stdin_items.h"

#include <cerrno>
#include <iostream>
#include <iterator>

#include "cnclip/error.h"

namespace cnclip::cli {

std::unique_ptr<ItemReader> ItemReader::open(const std::string& source, bool null_separated) {
  if (source == "-") return std::make_unique<ItemReader>(std::cin, null_separated);
  auto file = std::make_unique<std::ifstream>(source, std::ios::binary);
  if (!*file) throw Exception(errno_error(source, errno, "cannot read"));
  auto reader = std::make_unique<ItemReader>(*file, null_separated, source);
  reader->file_ = std::move(file);
  return reader;
}

bool ItemReader::next(std::string& item) {
  while (std::getline(in_, item, null_separated_ ? '\0' : '\n')) {
    ++position_;
    if (!null_separated_ && !item.empty() && item.back() == '\r') item.pop_back();
    if (!null_separated_ && item.find('\0') != std::string::npos) {
      throw Exception(ErrorCode::kInvalidArgument,
                      name_ + ": line " + std::to_string(position_) +
                          " holds a NUL byte; for NUL-separated input (find -print0) add -0");
    }
    if (!item.empty()) return true;
  }
  if (in_.bad()) throw Exception(ErrorCode::kIoError, name_ + ": read failed");
  return false;
}

std::vector<std::string> read_stdin_items(bool null_separated) {
  ItemReader reader(std::cin, null_separated);
  std::vector<std::string> out;
  std::string item;
  while (reader.next(item)) out.push_back(item);
  return out;
}

std::vector<uint8_t> read_all_bytes(std::istream& in, const std::string& name, size_t max_bytes) {
  std::vector<uint8_t> bytes;
  char chunk[1 << 16];
  while (in.read(chunk, sizeof(chunk)) || in.gcount() > 0) {
    bytes.insert(bytes.end(), chunk, chunk + in.gcount());
    if (bytes.size() > max_bytes) {
      throw Exception(ErrorCode::kTooLarge,
                      name + ": more than " + std::to_string(max_bytes >> 20) + " MiB, too large for an image");
    }
  }
  if (in.bad()) throw Exception(ErrorCode::kIoError, name + ": read failed");
  return bytes;
}

}  // namespace cnclip::cli
