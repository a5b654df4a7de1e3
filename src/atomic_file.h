// Files that appear whole or not at all: written to a temporary name in the same directory, flushed
// to disk, then renamed over the destination (and the directory entry flushed too).
#pragma once

#include <cstdio>
#include <string>

namespace cnclip {

// Throws Exception naming `path` on any failure; the destination is then untouched.
void write_file_atomically(const std::string& path, const std::string& bytes);

// For large files written piece by piece. commit() makes the file visible; destruction without
// commit() removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t size);
  void commit();
  const std::string& temp_path() const { return temp_path_; }

 private:
  std::string path_, temp_path_;
  FILE* file_ = nullptr;
};

// fsync of the directory holding `path`, so that a rename in it survives a power cut.
void sync_parent_directory(const std::string& path);

}  // namespace cnclip
