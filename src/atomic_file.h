// Files that appear whole or not at all: written to a temporary name in the same directory, flushed
// to disk, then renamed over the destination (and the directory entry flushed too).
#pragma once

#include <cstdio>
#include <string>

namespace cnclip {

// Throws Exception naming `path` on any failure; the destination is then untouched.
void write_file_atomically(const std::string& path, const std::string& bytes);

// For a file the user named as an output (preprocess --npy): a new or regular file is replaced
// atomically as above; a symbolic link is followed (its final target is created or replaced
// atomically, the link itself stays); a FIFO or a device (/dev/null, /dev/stdout) is opened and
// written directly, since renaming over it would replace it with a regular file. A directory, a
// socket, a link loop or a missing parent directory throws Exception naming `path`.
void write_output_file(const std::string& path, const std::string& bytes);

// For large files written piece by piece. commit() makes the file visible; destruction without
// commit() removes the temporary file, which is always a new file (one left at its name by a killed
// process is replaced; a symbolic link there is not followed). With `access_of` (an existing file),
// the temporary file is created 0600 and then takes that file's permission bits (those of 0666) and,
// where this process may give it away, its owner, before a byte is written: a file derived from a
// private one (a snapshot from its catalog) is never more readable than it, not even until the
// rename. Without it, or when `access_of` cannot be read, the file has the process's umask's mode;
// a failed chown leaves this process the owner.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path, const std::string& access_of = "");
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
