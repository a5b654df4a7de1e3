// Lists read from stdin (or a file): paths or texts, one per line or NUL-terminated, for the
// commands that take '-' or --paths-from. Items are handed out as they arrive, so a command can
// answer each one before the next is written (`tail -f list | cnclip search-text -`).
#pragma once

#include <cstdint>
#include <fstream>
#include <istream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace cnclip::cli {

// One item at a time from a stream. Line mode: a trailing CR (from CRLF files) is dropped and empty
// lines are skipped; a line holding a NUL byte (no path or text can) is an error that points at -0,
// since it means NUL-separated input (`find -print0`) read as lines. NUL mode (`-0`, as `find -print0` writes): items
// end with NUL, newlines are part of the item, empty items are skipped; a last item without its NUL still counts.
class ItemReader {
 public:
  ItemReader(std::istream& in, bool null_separated, std::string name = "standard input")
      : in_(in), null_separated_(null_separated), name_(std::move(name)) {}
  // Opens `source` ("-" = stdin); throws Exception naming the file when it cannot be read.
  static std::unique_ptr<ItemReader> open(const std::string& source, bool null_separated);
  // The next item, or false at the end of the input. Blocks until a whole item has arrived.
  bool next(std::string& item);
  // 1-based number of the line (record) the last item came from, for messages.
  int64_t position() const { return position_; }

 private:
  std::unique_ptr<std::ifstream> file_;  // when reading a named file
  std::istream& in_;
  bool null_separated_;
  std::string name_;  // for messages
  int64_t position_ = 0;
};

// Every item on stdin.
std::vector<std::string> read_stdin_items(bool null_separated);

// The whole of `in` as bytes (an image given on stdin). Throws Exception(kTooLarge) past `max_bytes`
// and Exception(kIoError) on a read error, naming `name`.
std::vector<uint8_t> read_all_bytes(std::istream& in, const std::string& name, size_t max_bytes);

}  // namespace cnclip::cli
