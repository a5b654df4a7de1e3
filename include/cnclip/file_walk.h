// Finding the photos below a folder.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

struct WalkOptions {
  bool include_hidden = false;        // names starting with '.' are skipped unless set
  std::vector<std::string> excludes;  // glob patterns matched against each name and full path
  std::vector<std::string> extensions = default_extensions();  // lower case, without the dot

  static std::vector<std::string> default_extensions() {
    return {"jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff"};
  }
  bool wants(const std::string& path) const;  // extension and exclude check for one file
};

struct FoundFile {
  std::string path;  // absolute, below the canonical root
  int64_t size = 0;
  int64_t mtime_ns = 0;
};

// Walks `root` (an absolute canonical directory) recursively in sorted order. Directory symlinks are
// not followed (so no loops, and every path stays below its root); symlinks to files count as files.
// Unreadable directories are reported through on_error and skipped.
void walk_folder(const std::string& root, const WalkOptions& options, std::vector<FoundFile>& out,
                 const std::function<void(const Error&)>& on_error);

// realpath(3); errors name the path.
Result<std::string> canonical_path(const std::string& path);

// Size and mtime of a file (following symlinks).
Result<FoundFile> stat_file(const std::string& path);

}  // namespace cnclip
