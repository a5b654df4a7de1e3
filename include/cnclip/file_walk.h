// Finding the photos below a folder.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

// What a folder root holds. Stored with the root in the catalog, so that `index` with no path
// walks each root as it was first given.
struct WalkOptions {
  bool include_hidden = false;                                 // names starting with '.' are skipped unless set
  std::vector<std::string> excludes;                           // glob patterns matched against each name and full path
  std::vector<std::string> extensions = default_extensions();  // lower case, without the dot

  // Every format decode_image reads: the camera RAW ones are image.h's raw_extensions(); then the
  // videos (video.h's video_extensions(), which `index --no-video` leaves out).
  static std::vector<std::string> default_extensions() {
    return {"jpg",  "jpeg", "jpe",  "png", "apng", "webp", "bmp", "tif", "tiff", "gif",  "heic",
            "heif", "hif",  "avif", "dng", "cr2",  "cr3",  "crw", "nef", "nrw",  "arw",  "srf",
            "sr2",  "orf",  "rw2",  "raf", "pef",  "srw",  "rwl", "x3f", "3fr",  "erf",  "kdc",
            "dcr",  "mef",  "mos",  "mrw", "iiq",  "mp4",  "m4v", "mov", "mkv",  "webm", "avi"};
  }
  bool wants(const std::string& path) const;  // extension and exclude check for one file
  // Whether a walk of `root` with these options would take the file `path` (no hidden or excluded
  // folder on the way, and wants(path)). `path` equal to `root` is a file root: true.
  bool holds(const std::string& root, const std::string& path) const;
  // Whether a walk of `root` with these options would enter the folder `dir` below it (no hidden or
  // excluded folder on the way, `dir` included). `dir` equal to `root`: true.
  bool enters(const std::string& root, const std::string& dir) const;

  // JSON form kept in the catalog ("" and "{}" read as the defaults); from_json throws kCorrupt.
  std::string to_json() const;
  static WalkOptions from_json(const std::string& json);
  // As command-line options, e.g. "--hidden --exclude '*.png' --ext jpg" ("default options").
  std::string describe() const;
  bool operator==(const WalkOptions& o) const {
    return include_hidden == o.include_hidden && excludes == o.excludes && extensions == o.extensions;
  }
  bool operator!=(const WalkOptions& o) const { return !(*this == o); }
};

struct FoundFile {
  std::string path;  // absolute, below the canonical root
  int64_t size = 0;
  int64_t mtime_ns = 0;
};

// An entry the walk could not take, with its lstat size and mtime (0 when lstat failed).
struct SkippedFile {
  FoundFile file;
  Error error;  // names the path
};

// Everything a walk saw, so that the caller can tell a file that is gone from one it could not see.
struct WalkResult {
  std::vector<FoundFile> files;  // regular files the options take, in sorted order
  // Entries with a wanted name that cannot be indexed: FIFOs, sockets, devices, dangling symbolic
  // links, paths longer than PATH_MAX, entries lstat(2) failed on. Each error names the path.
  std::vector<SkippedFile> skipped;
  // Folders that could not be listed (permissions, I/O error, path too long): what is below them
  // was not seen.
  std::vector<std::string> unlisted;
  std::vector<Error> unlisted_errors;  // one per unlisted folder, naming it
  // Folders listed completely (the root included when it was).
  std::set<std::string> listed;
  // Symbolic links met in the tree, to folders or to files, never followed: cnclip stores real
  // paths only, so a link would either duplicate its target or reach outside the root.
  std::vector<std::string> links;
  // RAW+JPEG pairs: a camera RAW file (an extension of raw_extensions()) next to a JPEG of the same
  // name but for the extension (IMG_1.CR2 and IMG_1.JPG; jpg, jpeg or jpe in any case) that the walk
  // takes is left out, so a photo shot as RAW+JPEG is indexed once, as its JPEG (the camera's
  // rendering, and the file people share). The RAW files left out are listed here, not in `files`.
  std::vector<std::string> paired;
  // Folders listed completely that hold nothing at all (not even hidden names): an unmounted share's
  // mount point looks like this, so entries below one are kept rather than taken as deleted.
  std::set<std::string> empty;
  // cnclip index folders met below the root (is_index_folder) and not entered.
  std::vector<std::string> index_folders;
};

// Throws Exception(kInvalidArgument) naming the option and the reason when `options` cannot do
// what was meant: an extension that no decoder reads (the message lists the readable ones, from
// default_extensions()); an empty --exclude; a glob with an unclosed '['; a glob with a '/' that
// does not start with '/' or a wildcard (globs with a '/' are matched against absolute paths, so
// 'photos/a' would never match anything).
void check_walk_options(const WalkOptions& options);

// Whether `dir` is a cnclip index folder (it holds a catalog.sqlite3 file). The walk never enters
// one: its thumbnails and files are not photos to index.
bool is_index_folder(const std::string& dir);

// Walks `root` (an absolute canonical directory) recursively in sorted order, with lstat(2):
// symbolic links are reported in `links` and not followed (no loops, every path stays below its
// root and is canonical). Excluded and hidden names are skipped without a report.
WalkResult walk_folder(const std::string& root, const WalkOptions& options);

// realpath(3); errors name the path.
Result<std::string> canonical_path(const std::string& path);
// `path` canonical when it resolves (symbolic links followed), else absolute and lexically normal;
// never ends in '/' (but "/"). How a folder that may not exist (yet, or any more) is named: the
// index folder in every command's output, a path given to `remove`.
std::string canonical_or_absolute(const std::string& path);

// Size and mtime of a file (following symlinks).
Result<FoundFile> stat_file(const std::string& path);

// The extensions of a comma-separated list as `index --ext` takes it ("JPG,.png,,webp" gives jpg,
// png, webp): leading dots dropped, lower-cased (ASCII), empty items skipped. Throws
// Exception(kInvalidArgument, "WHAT: no extension given") when nothing is left.
std::vector<std::string> parse_extension_list(const std::string& list, const std::string& what = "--ext");

}  // namespace cnclip
