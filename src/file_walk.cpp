#include "cnclip/file_walk.h"

#include <unistd.h>

#include <dirent.h>
#include <fnmatch.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "cnclip/image.h"

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

std::string canonical_or_absolute(const std::string& path) {
  if (auto canonical = canonical_path(path)) return canonical.value();
  std::string out = std::filesystem::absolute(path).lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

Result<FoundFile> stat_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_error(path, errno);
  return FoundFile{path, static_cast<int64_t>(st.st_size),
                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

namespace {

bool hidden(const std::string& name) { return !name.empty() && name[0] == '.'; }

int64_t mtime_ns(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

// The RAW+JPEG rule (WalkResult::paired) over the files one folder gave, from index `first` on.
void pair_raw_with_jpeg(size_t first, WalkResult& out) {
  const auto& raws = raw_extensions();
  auto stem_of = [](const std::string& path) { return path.substr(0, path.find_last_of('.')); };
  std::unordered_set<std::string> jpeg_stems;
  for (size_t i = first; i < out.files.size(); ++i) {
    const std::string ext = lower_extension(out.files[i].path);
    if (ext == "jpg" || ext == "jpeg" || ext == "jpe") jpeg_stems.insert(stem_of(out.files[i].path));
  }
  if (jpeg_stems.empty()) return;
  size_t kept = first;
  for (size_t i = first; i < out.files.size(); ++i) {
    const std::string ext = lower_extension(out.files[i].path);
    if (std::find(raws.begin(), raws.end(), ext) != raws.end() && jpeg_stems.count(stem_of(out.files[i].path))) {
      out.paired.push_back(out.files[i].path);
    } else {
      if (kept != i) out.files[kept] = std::move(out.files[i]);  // (a self-move would empty the path)
      ++kept;
    }
  }
  out.files.resize(kept);
}

void walk_into(const std::string& dir, const WalkOptions& options, WalkResult& out) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    out.unlisted.push_back(dir);
    out.unlisted_errors.push_back(errno_error(dir, errno, "cannot list folder"));
    return;
  }
  std::vector<std::string> names;
  size_t entries = 0;  // hidden ones included
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    ++entries;
    if (!options.include_hidden && hidden(name)) continue;
    names.push_back(name);
    errno = 0;
  }
  const int read_error = errno;
  ::closedir(d);
  if (read_error != 0) {  // a listing cut short: what it missed must not look deleted
    out.unlisted.push_back(dir);
    out.unlisted_errors.push_back(errno_error(dir, read_error, "cannot list folder"));
  } else {
    out.listed.insert(dir);
    if (entries == 0) out.empty.insert(dir);
  }
  std::sort(names.begin(), names.end());
  const std::string base = dir == "/" ? "" : dir;
  // This folder's files are appended from here, with its sub-folders' (already paired) between them;
  // a pair's stems include the folder, so only files of one folder pair.
  const size_t first = out.files.size();
  for (const auto& name : names) {
    const std::string path = base + "/" + name;
    if (excluded(name, path, options.excludes)) continue;
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) != 0) {
      const int err = errno;
      if (err == ENOENT) continue;  // deleted since the listing
      // Otherwise reported whatever its name: it may be a folder (a path over PATH_MAX, most often).
      out.skipped.push_back(SkippedFile{
          FoundFile{path, 0, 0}, err == ENAMETOOLONG ? Error{ErrorCode::kInvalidArgument,
                                                             path + ": path longer than the system limit (" +
                                                                 std::to_string(PATH_MAX) + " bytes); not indexed"}
                                                     : errno_error(path, err, "cannot look at file")});
      continue;
    }
    if (S_ISDIR(lst.st_mode)) {
      if (is_index_folder(path)) {
        out.index_folders.push_back(path);
        continue;
      }
      walk_into(path, options, out);
      continue;
    }
    if (S_ISLNK(lst.st_mode)) {
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        out.links.push_back(path);
      } else if (options.wants(path)) {
        if (::stat(path.c_str(), &st) != 0) {
          out.skipped.push_back(
              SkippedFile{FoundFile{path, static_cast<int64_t>(lst.st_size), mtime_ns(lst)},
                          Error{ErrorCode::kNotFound, path + ": dangling symbolic link; not indexed"}});
        } else {
          out.links.push_back(path);
        }
      }
      continue;
    }
    if (!options.wants(path)) continue;
    if (!S_ISREG(lst.st_mode)) {
      const char* what = S_ISFIFO(lst.st_mode)                          ? "a FIFO"
                         : S_ISSOCK(lst.st_mode)                        ? "a socket"
                         : S_ISCHR(lst.st_mode) || S_ISBLK(lst.st_mode) ? "a device"
                                                                        : "not a regular file";
      out.skipped.push_back(
          SkippedFile{FoundFile{path, static_cast<int64_t>(lst.st_size), mtime_ns(lst)},
                      Error{ErrorCode::kUnsupportedFormat, path + ": " + what + ", not an image file; not indexed"}});
      continue;
    }
    out.files.push_back(FoundFile{path, static_cast<int64_t>(lst.st_size), mtime_ns(lst)});
  }
  pair_raw_with_jpeg(first, out);
}

std::string shell_word(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,/:+=@") ==
                        std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

WalkResult walk_folder(const std::string& root, const WalkOptions& options) {
  WalkResult out;
  if (is_index_folder(root)) {
    out.index_folders.push_back(root);
    return out;
  }
  walk_into(root, options, out);
  return out;
}

bool is_index_folder(const std::string& dir) {
  struct stat st {};
  const std::string catalog = (dir == "/" ? std::string() : dir) + "/catalog.sqlite3";
  return ::lstat(catalog.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool WalkOptions::enters(const std::string& root, const std::string& dir) const {
  if (dir == root) return true;
  const std::string base = root == "/" ? "/" : root + "/";
  if (dir.compare(0, base.size(), base) != 0) return false;
  size_t pos = base.size();
  while (true) {
    const size_t slash = dir.find('/', pos);
    const std::string name = dir.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    if (name.empty() || (!include_hidden && hidden(name))) return false;
    const std::string so_far = slash == std::string::npos ? dir : dir.substr(0, slash);
    if (excluded(name, so_far, excludes)) return false;
    if (slash == std::string::npos) return true;
    pos = slash + 1;
  }
}

namespace {

// Whether every '[' of a glob opens a bracket expression that closes (fnmatch(3) takes an unclosed
// one as a literal '[', which is never what was meant).
bool brackets_closed(const std::string& glob) {
  for (size_t i = 0; i < glob.size(); ++i) {
    if (glob[i] == '\\') {
      ++i;
      continue;
    }
    if (glob[i] != '[') continue;
    size_t j = i + 1;
    if (j < glob.size() && (glob[j] == '!' || glob[j] == '^')) ++j;
    if (j < glob.size() && glob[j] == ']') ++j;  // a ']' first is a member
    while (j < glob.size() && glob[j] != ']') ++j;
    if (j >= glob.size()) return false;
    i = j;
  }
  return true;
}

}  // namespace

void check_walk_options(const WalkOptions& options) {
  const std::vector<std::string> readable = WalkOptions::default_extensions();
  std::vector<std::string> unknown;
  for (const auto& e : options.extensions) {
    if (std::find(readable.begin(), readable.end(), e) == readable.end()) unknown.push_back(e);
  }
  if (!unknown.empty()) {
    std::string list, known;
    for (const auto& e : unknown) list += (list.empty() ? "" : ", ") + shell_word(e);
    for (const auto& e : readable) known += (known.empty() ? "" : ",") + e;
    throw Exception(ErrorCode::kInvalidArgument, "--ext: cnclip reads no files with the extension" +
                                                     std::string(unknown.size() > 1 ? "s " : " ") + list +
                                                     "; the extensions it reads: " + known);
  }
  for (const auto& g : options.excludes) {
    if (g.empty()) {
      throw Exception(ErrorCode::kInvalidArgument,
                      "--exclude '': an empty pattern excludes nothing; give a glob such as '*.png'");
    }
    if (!brackets_closed(g)) {
      throw Exception(
          ErrorCode::kInvalidArgument,
          "--exclude " + shell_word(g) + ": '[' without a closing ']' (to match a '[' itself, write '[[]')");
    }
    if (g.find('/') != std::string::npos && g[0] != '/' && g[0] != '*' && g[0] != '?' && g[0] != '[') {
      char cwd[PATH_MAX];
      const std::string absolute =
          (::getcwd(cwd, sizeof(cwd)) ? std::string(cwd) : std::string("/full/path")) + "/" + g;
      throw Exception(ErrorCode::kInvalidArgument,
                      "--exclude " + shell_word(g) +
                          ": a pattern with a '/' is matched against absolute paths, so this one "
                          "never matches; write " +
                          shell_word(absolute) + " or " + shell_word("*/" + g));
    }
  }
}

bool WalkOptions::holds(const std::string& root, const std::string& path) const {
  if (path == root) return true;
  const std::string base = root == "/" ? "/" : root + "/";
  if (path.compare(0, base.size(), base) != 0) return false;
  size_t pos = base.size();
  while (true) {
    const size_t slash = path.find('/', pos);
    const std::string name = path.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    if (name.empty() || (!include_hidden && hidden(name))) return false;
    if (slash == std::string::npos) return wants(path);
    if (excluded(name, path.substr(0, slash), excludes)) return false;
    pos = slash + 1;
  }
}

std::string WalkOptions::to_json() const {
  if (*this == WalkOptions{}) return "";
  nlohmann::ordered_json j{{"hidden", include_hidden}, {"exclude", excludes}, {"ext", extensions}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

WalkOptions WalkOptions::from_json(const std::string& text) {
  WalkOptions o;
  if (text.empty()) return o;
  try {
    const auto j = nlohmann::json::parse(text);
    o.include_hidden = j.value("hidden", false);
    o.excludes = j.value("exclude", std::vector<std::string>{});
    o.extensions = j.value("ext", default_extensions());
  } catch (const nlohmann::json::exception& e) {
    throw Exception(ErrorCode::kCorrupt, "stored walk options are damaged (" + std::string(e.what()) + "): " + text);
  }
  return o;
}

std::string WalkOptions::describe() const {
  std::string d;
  if (include_hidden) d += " --hidden";
  for (const auto& e : excludes) d += " --exclude " + shell_word(e);
  if (extensions != default_extensions()) {
    std::string list;
    for (const auto& e : extensions) list += (list.empty() ? "" : ",") + e;
    d += " --ext " + shell_word(list);
  }
  return d.empty() ? "default options" : d.substr(1);
}

std::vector<std::string> parse_extension_list(const std::string& list, const std::string& what) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(',', start);
    if (end == std::string::npos) end = list.size();
    std::string ext = list.substr(start, end - start);
    start = end + 1;
    while (!ext.empty() && ext[0] == '.') ext.erase(0, 1);
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (!ext.empty()) out.push_back(ext);
  }
  if (out.empty()) throw Exception(ErrorCode::kInvalidArgument, what + ": no extension given");
  return out;
}

}  // namespace cnclip
