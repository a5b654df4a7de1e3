#include "cnclip/file_walk.h"

#include <dirent.h>
#include <fnmatch.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>

namespace cnclip {
namespace {

bool excluded(const std::string& name, const std::string& path, const std::vector<std::string>& globs) {
  for (const auto& g : globs) {
    if (fnmatch(g.c_str(), name.c_str(), 0) == 0 || fnmatch(g.c_str(), path.c_str(), 0) == 0) return true;
  }
  return false;
}

std::string lower_extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot + 1);
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

}  // namespace

bool WalkOptions::wants(const std::string& path) const {
  const std::string ext = lower_extension(path);
  if (std::find(extensions.begin(), extensions.end(), ext) == extensions.end()) return false;
  const auto slash = path.find_last_of('/');
  return !excluded(slash == std::string::npos ? path : path.substr(slash + 1), path, excludes);
}

Result<std::string> canonical_path(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return errno_error(path, errno);
  return std::string(buf);
}

Result<FoundFile> stat_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_error(path, errno);
  return FoundFile{path, static_cast<int64_t>(st.st_size),
                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

void walk_folder(const std::string& root, const WalkOptions& options, std::vector<FoundFile>& out,
                 const std::function<void(const Error&)>& on_error) {
  DIR* d = ::opendir(root.c_str());
  if (!d) {
    on_error(errno_error(root, errno, "cannot list folder"));
    return;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    if (!options.include_hidden && name[0] == '.') continue;
    names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  const std::string base = root == "/" ? "" : root;
  for (const auto& name : names) {
    const std::string path = base + "/" + name;
    if (excluded(name, path, options.excludes)) continue;
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) != 0) continue;  // vanished meanwhile
    if (S_ISDIR(lst.st_mode)) {
      walk_folder(path, options, out, on_error);
      continue;
    }
    if (!options.wants(path)) continue;
    struct stat st = lst;
    if (S_ISLNK(lst.st_mode) && ::stat(path.c_str(), &st) != 0) continue;  // dangling link
    if (!S_ISREG(st.st_mode)) continue;  // never follow directory symlinks; skip fifos, devices
    out.push_back(FoundFile{path, static_cast<int64_t>(st.st_size),
                            static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec});
  }
}

}  // namespace cnclip
