#include "atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "cnclip/error.h"

namespace cnclip {

void sync_parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

AtomicFileWriter::AtomicFileWriter(std::string path, const std::string& access_of)
    : path_(std::move(path)), temp_path_(path_ + ".tmp-" + std::to_string(::getpid())) {
  struct stat like {};
  const bool take_access = !access_of.empty() && ::stat(access_of.c_str(), &like) == 0;
  // A new file, never one found at the name: a temporary file left by a killed process of the same
  // pid is removed first, and a symbolic link planted there (root writing a user's index) is not
  // followed, so that the chown below cannot give its target away. Created 0600 when it takes
  // another file's access, so that nobody else can open it before it has that file's mode.
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  const mode_t mode = take_access ? 0600 : 0666;
  int fd = ::open(temp_path_.c_str(), flags, mode);
  if (fd < 0 && errno == EEXIST && ::unlink(temp_path_.c_str()) == 0) fd = ::open(temp_path_.c_str(), flags, mode);
  if (fd < 0) throw Exception(errno_error(temp_path_, errno, "cannot create"));
  if (take_access) {
    (void)!::fchown(fd, like.st_uid, like.st_gid);  // EPERM unless root: the writer keeps it
    (void)::fchmod(fd, like.st_mode & 0666);
  }
  file_ = ::fdopen(fd, "wb");
  if (!file_) {
    const int err = errno;
    ::close(fd);
    ::unlink(temp_path_.c_str());
    throw Exception(errno_error(temp_path_, err, "cannot create"));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_) {
    std::fclose(file_);
    std::remove(temp_path_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  if (size && std::fwrite(data, 1, size, file_) != size) {
    throw Exception(errno_error(temp_path_, errno, "write failed"));
  }
}

void AtomicFileWriter::commit() {
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) {
    throw Exception(errno_error(temp_path_, errno, "write failed"));
  }
  std::fclose(file_);
  file_ = nullptr;
  if (std::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    std::remove(temp_path_.c_str());
    struct stat st {};
    if ((err == EISDIR || err == ENOTEMPTY || err == EEXIST) && ::lstat(path_.c_str(), &st) == 0 &&
        S_ISDIR(st.st_mode)) {
      // Not ours to delete, and every later run would stop here too: say what to do.
      throw Exception(Error{ErrorCode::kIoError, path_ + ": a folder of that name is where cnclip writes this file (" +
                                                     std::strerror(err) +
                                                     "); move the folder elsewhere and run the command again"});
    }
    throw Exception(errno_error(path_, err, "cannot rename into place"));
  }
  sync_parent_directory(path_);
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

namespace {

// Follows `path` through symbolic links (up to 40, as the kernel does) to the name of the file it
// finally designates, which may not exist yet.
std::string follow_symlinks(std::string path) {
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
    std::string target(static_cast<size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
    const ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
    if (n < 0) throw Exception(errno_error(path, errno, "cannot read the link"));
    target.resize(static_cast<size_t>(n));
    if (!target.empty() && target[0] != '/') {
      const auto slash = path.find_last_of('/');
      if (slash != std::string::npos) target = path.substr(0, slash + 1) + target;
    }
    path = target;
  }
  throw Exception(errno_error(path, ELOOP));
}

}  // namespace

void write_output_file(const std::string& path, const std::string& bytes) {
  const std::string target = follow_symlinks(path);
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0 || S_ISREG(st.st_mode)) {
    try {
      write_file_atomically(target, bytes);
    } catch (const Exception& e) {
      // Name what the user gave, and the link's target when it is another file.
      if (target == path) throw;
      throw Exception(e.code(), path + " (-> " + target + "): " + e.what());
    }
    return;
  }
  if (S_ISDIR(st.st_mode)) throw Exception(ErrorCode::kIoError, path + ": is a directory");
  if (S_ISSOCK(st.st_mode)) throw Exception(ErrorCode::kIoError, path + ": is a socket");
  // A FIFO or a device: written in place (a FIFO waits here for its reader, as `cat > fifo` does).
  const int fd = ::open(target.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw Exception(errno_error(path, errno, "cannot open"));
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      ::close(fd);
      throw Exception(errno_error(path, err, "write failed"));
    }
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::close(fd) != 0 && errno != EINTR) throw Exception(errno_error(path, errno, "write failed"));
}

}  // namespace cnclip
