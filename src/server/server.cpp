// cnclip serve: request handling over the library (see include/cnclip/server.h).
#include "cnclip/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <regex>
#include <set>
#include <thread>

#include "atomic_file.h"
#include "cnclip/bundle.h"
#include "cnclip/file_walk.h"
#include "cnclip/image_query.h"
#include "cnclip/index_store.h"
#include "cnclip/info.h"
#include "cnclip/output.h"
#include "cnclip/photo_meta.h"
#include "cnclip/query.h"
#include "cnclip/route.h"
#include "cnclip/search.h"
#include "cnclip/video.h"
#include "server/route_protocol.h"
#include "server/web_assets.h"

namespace cnclip {
namespace {

using ojson = nlohmann::ordered_json;

constexpr int kMaxResultsPerPage = 1000;
constexpr int kMaxOffset = 100000;
constexpr size_t kMaxHeaders = 64;

// An error response: {"error": {"code", "message"}}.
void send_error(httplib::Response& res, int status, const std::string& code, const std::string& message) {
  ojson j;
  j["error"]["code"] = code;
  j["error"]["message"] = message;
  res.status = status;
  res.set_content(dump_json(j), "application/json; charset=utf-8");
}

// Library errors as HTTP statuses.
void send_exception(httplib::Response& res, const Exception& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: send_error(res, 400, "bad_request", e.what()); return;
    case ErrorCode::kNotFound: send_error(res, 404, "not_found", e.what()); return;
    case ErrorCode::kTooLarge: send_error(res, 413, "too_large", e.what()); return;
    default: send_error(res, 500, error_code_name(e.code()), e.what());
  }
}

void send_json(httplib::Response& res, const ojson& j) {
  res.set_content(dump_json(j), "application/json; charset=utf-8");
}

// The score as the CLI prints it (six decimals), as a JSON number; null when not finite.
ojson score_value(float s) {
  if (!std::isfinite(s)) return nullptr;
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6f", static_cast<double>(s));
  return std::strtod(buf, nullptr);
}

std::string host_name_of(const std::string& host_header) {
  // "name:port", "[v6]:port", "name"
  if (!host_header.empty() && host_header[0] == '[') {
    auto end = host_header.find(']');
    return end == std::string::npos ? host_header : host_header.substr(1, end - 1);
  }
  auto colon = host_header.find(':');
  std::string name = colon == std::string::npos ? host_header : host_header.substr(0, colon);
  for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return name;
}

bool is_ip_literal(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// Content type of an image file from its first bytes (the formats cnclip indexes).
// The media type of an original, from its first bytes (and, for camera RAW files, which are TIFF
// inside or formats of their own, from the name).
std::string sniff_media_type(const std::vector<uint8_t>& b, const std::string& path) {
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
  };
  std::string ext;
  if (const auto dot = path.find_last_of("./"); dot != std::string::npos && path[dot] == '.') {
    ext = path.substr(dot + 1);
    for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  const auto& raw = raw_extensions();
  if (std::find(raw.begin(), raw.end(), ext) != raw.end()) return ext == "dng" ? "image/x-adobe-dng" : "image/x-" + ext;
  if (starts("\xFF\xD8\xFF", 3)) return "image/jpeg";
  if (starts("\x89PNG\r\n\x1a\n", 8)) return ext == "apng" ? "image/apng" : "image/png";
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return "image/webp";
  if (starts("RIFF", 4) && starts("AVI ", 4, 8)) return "video/x-msvideo";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "image/gif";
  if (starts("BM", 2)) return "image/bmp";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "image/tiff";
  if (starts("\x1A\x45\xDF\xA3", 4)) {  // EBML: WebM is Matroska with the DocType "webm"
    const std::string head(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(b.size(), 64)));
    return head.find("webm") != std::string::npos ? "video/webm" : "video/x-matroska";
  }
  if (starts("ftyp", 4, 4) && b.size() >= 12) {  // ISO base media: the major brand says what it holds
    const std::string brand(b.begin() + 8, b.begin() + 12);
    if (brand == "avif" || brand == "avis") return "image/avif";
    if (brand == "heic" || brand == "heix" || brand == "heim" || brand == "heis" || brand == "hevc" ||
        brand == "hevx") {
      return "image/heic";
    }
    if (brand == "mif1" || brand == "msf1") return ext == "avif" ? "image/avif" : "image/heif";
    if (brand == "qt  ") return "video/quicktime";
    return "video/mp4";  // isom, iso2, mp41, mp42, avc1, M4V , dash, ...
  }
  return "application/octet-stream";
}

// Whether browsers show the original of this path themselves (else the page shows a large thumbnail).
bool browser_shows(const std::string& path) {
  std::string ext;
  if (const auto dot = path.find_last_of("./"); dot != std::string::npos && path[dot] == '.') {
    ext = path.substr(dot + 1);
    for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  static const std::set<std::string> shown{"jpg", "jpeg", "jpe", "png", "apng", "webp", "gif",
                                           "bmp", "avif", "mp4", "m4v", "mov",  "webm", "mkv"};
  return shown.count(ext) > 0;
}

// Parses a whole decimal integer parameter in [lo, hi]; throws kInvalidArgument naming it.
int64_t int_param(const httplib::Request& req, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  if (!req.has_param(name)) return fallback;
  const std::string v = req.get_param_value(name);
  char* end = nullptr;
  errno = 0;
  long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    throw Exception(ErrorCode::kInvalidArgument, std::string("parameter '") + name + "' must be an integer from " +
                                                     std::to_string(lo) + " to " + std::to_string(hi));
  }
  return n;
}

}  // namespace

bool is_loopback_host(const std::string& host) {
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h == "localhost" || h == "::1") return true;
  unsigned char v4[4];
  if (inet_pton(AF_INET, h.c_str(), v4) == 1) return v4[0] == 127;
  return false;
}

std::string generate_token() {
  unsigned char buf[16];
  int fd = ::open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::read(fd, buf, sizeof(buf)) != static_cast<ssize_t>(sizeof(buf))) {
    if (fd >= 0) ::close(fd);
    throw Exception(ErrorCode::kIoError, "/dev/urandom: cannot read random bytes for a token");
  }
  ::close(fd);
  return hex_encode(std::string_view(reinterpret_cast<const char*>(buf), sizeof(buf)));
}

struct Server::Impl {
  ServerOptions options;
  std::unique_ptr<Model> model;
  httplib::Server http;
  int port = 0;
  std::set<std::string> allowed_hosts;  // Host header names accepted
  // The API's routes (setup_routes), kept to tell a wrong method on a known route (405) from an
  // unknown route (404): httplib answers both 404 (or 400 for a POST without a body).
  struct ApiRoute {
    std::regex path;
    std::string method;  // "GET" (HEAD too) or "POST"
  };
  std::vector<ApiRoute> api_routes;
  bool wildcard = false;  // bound to every address: any IP literal is accepted too
  std::atomic<bool> stopping{false};

  // The index: opened when first needed, its vectors following the catalog's commits
  // (FollowingSearcher). Catalog and Searcher are single-threaded, so requests take turns here (a
  // search is milliseconds; the model calls and file work happen outside the lock).
  std::mutex index_mu;
  std::unique_ptr<IndexStore> store;
  std::unique_ptr<FollowingSearcher> following;

  std::mutex image_tower_mu;

  // Runs fn(store, searcher) under the index lock with the vectors current; both are null when there
  // is no index yet (answered as an empty index). `fresh`: reload whenever the catalog changed, even
  // during an index run (a routed CLI query must see what a local one would).
  template <class Fn>
  auto with_index(Fn&& fn, bool fresh = false) {
    std::lock_guard<std::mutex> lock(index_mu);
    if (!store) {
      following.reset();
      try {
        store = IndexStore::open(options.index_dir, IndexAccess::kRead);
      } catch (const Exception& e) {
        if (e.code() != ErrorCode::kNotFound) throw;
      }
    }
    Searcher* searcher = nullptr;
    if (store) {
      if (!following) {
        FollowOptions follow;
        follow.model = &model->manifest();
        follow.mixed_precision = options.mixed_precision;
        following = std::make_unique<FollowingSearcher>(*store, follow);
      }
      searcher = &following->current(fresh);
    }
    return fn(store.get(), searcher);
  }

  ojson results_json(const std::string& query, const std::vector<RankedHit>& hits, size_t from) {
    ojson j;
    set_string_field(j, "query", query);
    j["results"] = ojson::array();
    for (size_t i = from; i < hits.size(); ++i) {
      const RankedHit& h = hits[i];
      ojson r;
      r["id"] = h.id;
      r["rank"] = h.rank;
      set_string_field(r, "path", h.path);
      r["score"] = score_value(h.score);
      r["thumbnail"] = "/api/v1/thumb/" + std::to_string(h.id);
      r["image"] = "/api/v1/image/" + std::to_string(h.id);
      r["viewable"] = browser_shows(h.path);  // false: the page shows the thumbnail, and links the original
      // As in the CLI's JSON: capture time, and size when known. A video: the matching moment (its
      // poster is the frame there), the merged range, and its capture time as "taken".
      if (h.time) {
        char t[32];
        std::snprintf(t, sizeof t, "%.3f", *h.time);
        r["video"] = "/api/v1/image/" + std::to_string(h.id);
        r["thumbnail"] = "/api/v1/thumb/" + std::to_string(h.id) + "?t=" + t;
        r["time"] = std::round(*h.time * 1000) / 1000;
        r["start"] = std::round(h.start.value_or(*h.time) * 1000) / 1000;
        r["end"] = std::round(h.end.value_or(*h.time) * 1000) / 1000;
      }
      if (h.taken_at) {
        r[h.time ? "taken" : "time"] =
            format_time(*h.taken_at, h.meta.source == TimeSource::kExif ? h.meta.offset_minutes : std::nullopt);
      }
      if (h.meta.width > 0 && h.meta.height > 0) {
        r["width"] = h.meta.width;
        r["height"] = h.meta.height;
      }
      j["results"].push_back(std::move(r));
    }
    return j;
  }

  // Search options from the query string; `offset` is returned separately (the search asks for
  // offset + k hits and the first offset are dropped, so ranks and scores are the CLI's).
  SearchOptions search_options(const httplib::Request& req, int& offset) {
    SearchOptions s;
    const int k = static_cast<int>(int_param(req, "k", 10, 1, kMaxResultsPerPage));
    offset = static_cast<int>(int_param(req, "offset", 0, 0, kMaxOffset));
    s.top_k = k + offset;
    if (req.has_param("threshold")) {
      const std::string v = req.get_param_value("threshold");
      char* end = nullptr;
      double t = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !std::isfinite(t)) {
        throw Exception(ErrorCode::kInvalidArgument, "parameter 'threshold' must be a finite number");
      }
      s.threshold = static_cast<float>(t);
    }
    if (req.has_param("under")) {
      // A filter on catalog paths, never opened: made absolute-normal lexically, not resolved on disk.
      const std::string v = req.get_param_value("under");
      if (v.empty() || v[0] != '/' || v.find('\0') != std::string::npos) {
        throw Exception(ErrorCode::kInvalidArgument,
                        "parameter 'under' must be an absolute path (a folder, or a file)");
      }
      std::string u = std::filesystem::path(v).lexically_normal().string();
      while (u.size() > 1 && u.back() == '/') u.pop_back();
      s.under = u;
    }
    // Capture-time filters and the order, as the CLI's --after, --before and --sort.
    if (req.has_param("after")) s.after = parse_time_bound(req.get_param_value("after"), "parameter 'after'").value();
    if (req.has_param("before"))
      s.before = parse_time_bound(req.get_param_value("before"), "parameter 'before'").value();
    if (req.has_param("sort")) s.sort = parse_sort_order(req.get_param_value("sort"), "parameter 'sort'");
    return s;
  }

  ojson search(const std::string& label, const std::vector<float>& embedding, const SearchOptions& s, int offset,
               const std::string& exclude = "") {
    return with_index([&](IndexStore*, Searcher* loaded) {
      std::vector<RankedHit> hits;
      if (loaded) hits = loaded->search({label}, embedding, s, {exclude}).at(0).hits;
      return results_json(label, hits, std::min<size_t>(hits.size(), static_cast<size_t>(offset)));
    });
  }

  std::optional<FileRecord> record(int64_t id) {
    return with_index([&](IndexStore* st, Searcher*) -> std::optional<FileRecord> {
      if (!st) return std::nullopt;
      auto found = st->catalog().find_by_ids({id});
      if (found.empty()) return std::nullopt;
      return found.front();
    });
  }

  // A file is served only while it is still the file that was indexed: its path resolves to itself
  // (no symbolic link swapped in anywhere since), it is a regular file, and its size is the one
  // recorded. Otherwise 404: whatever now sits at that path was never indexed.
  static bool still_indexed(const FileRecord& rec) {
    auto real = canonical_path(rec.path);
    struct stat st {};
    return real && real.value() == rec.path && ::lstat(rec.path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
           static_cast<int64_t>(st.st_size) == rec.size;
  }

  void handle_search_text(const httplib::Request& req, httplib::Response& res) {
    if (!req.has_param("q")) throw Exception(ErrorCode::kInvalidArgument, "parameter 'q' (the query text) is missing");
    const std::string q = req.get_param_value("q");
    int offset = 0;
    SearchOptions s = search_options(req, offset);
    if (model->tokenizer().count_pieces(q) == 0) {
      throw Exception(ErrorCode::kInvalidArgument, "the query is empty or has no words");
    }
    // not=TEXT (repeatable) and not_threshold=S: the CLI's --not and --not-threshold.
    for (size_t i = 0; i < req.get_param_value_count("not"); ++i) {
      const std::string t = req.get_param_value("not", i);
      if (find_invalid_utf8(t) || model->tokenizer().count_pieces(t) == 0) {
        throw Exception(ErrorCode::kInvalidArgument, "parameter 'not' must be a text with some words");
      }
      s.not_like.push_back(model->encode_texts({t}));
    }
    if (req.has_param("not_threshold")) {
      const std::string v = req.get_param_value("not_threshold");
      char* end = nullptr;
      const double t = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(t >= -1 && t <= 1)) {
        throw Exception(ErrorCode::kInvalidArgument, "parameter 'not_threshold' must be a number from -1 to 1");
      }
      s.not_threshold = static_cast<float>(t);
    }
    // q may be a combined query (query.h), unless plain=1. Its image terms must be indexed photos,
    // named by their path in the index: their stored embeddings are used, no file is ever read.
    const bool plain = req.has_param("plain") && req.get_param_value("plain") == "1";
    const auto embedding = plain ? model->encode_texts({q}) : encode_query(*model, q, [&](const std::string& path) {
      return with_index([&](IndexStore* st, Searcher*) {
        std::vector<float> e;
        if (st) {
          if (auto rec = st->catalog().find(std::filesystem::path(path).lexically_normal().string())) {
            e = st->catalog().embedding(rec->id);
          }
        }
        if (e.empty()) {
          throw Exception(ErrorCode::kInvalidArgument,
                          "'" + path + "' is not an indexed photo (image terms are the paths of indexed photos)");
        }
        return e;
      });
    });
    send_json(res, search(q, embedding, s, offset));
  }

  void handle_search_image(const httplib::Request& req, httplib::Response& res) {
    std::string bytes, label = "upload";
    const std::string type = req.get_header_value("Content-Type");
    if (req.is_multipart_form_data()) {
      if (!req.has_file("image")) {
        throw Exception(ErrorCode::kInvalidArgument, "the multipart request has no field 'image'");
      }
      auto f = req.get_file_value("image");
      bytes = std::move(f.content);
      if (!f.filename.empty()) label = f.filename;
    } else {
      if (!type.empty() && type.rfind("image/", 0) != 0 && type.rfind("application/octet-stream", 0) != 0) {
        send_error(
            res, 415, "unsupported_media_type",
            "send the image as the request body (image/* or application/octet-stream) or as a multipart field 'image'");
        return;
      }
      bytes = req.body;
    }
    if (bytes.size() > options.max_upload_bytes) {
      send_error(
          res, 413, "too_large",
          "the image is larger than the upload limit (" + std::to_string(options.max_upload_bytes >> 20) + " MB)");
      return;
    }
    if (bytes.empty()) throw Exception(ErrorCode::kInvalidArgument, "no image in the request (empty body)");
    int offset = 0;
    const SearchOptions s = search_options(req, offset);
    const Normalization& norm = model->manifest().image;
    std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
    const std::vector<uint8_t> data(bytes.begin(), bytes.end());
    auto ok = preprocess_image(data, label, norm, options.decode, pixels.data());
    if (!ok) {
      if (ok.error().code == ErrorCode::kTooLarge) {
        send_error(res, 413, "too_large", ok.error().message);
      } else {
        send_error(res, 400, "bad_image", ok.error().message);
      }
      return;
    }
    {
      std::lock_guard<std::mutex> lock(image_tower_mu);  // loaded once, by the first image query
      model->load_image_tower();
    }
    const auto embedding = model->encode_images(pixels.data(), 1);
    send_json(res, search(label, embedding, s, offset));
  }

  void handle_similar(const httplib::Request& req, httplib::Response& res) {
    const int64_t id = std::stoll(req.matches[1]);
    int offset = 0;
    const SearchOptions s = search_options(req, offset);
    std::string path;
    const auto embedding = with_index([&](IndexStore* st, Searcher*) {
      std::vector<float> e;
      if (!st) return e;
      auto found = st->catalog().find_by_ids({id});
      if (found.empty()) return e;
      path = found.front().path;
      return st->catalog().embedding(id);
    });
    if (embedding.empty()) {
      send_error(res, 404, "not_found", "no file with id " + std::to_string(id) + " in the index");
      return;
    }
    send_json(res, search(path, embedding, s, offset, path));
  }

  void handle_info(const httplib::Request&, httplib::Response& res) {
    // The fields of `cnclip info --format json`, from the same library call.
    send_json(res, with_index([&](IndexStore* st, Searcher* loaded) {
                if (!st) return index_info_json(empty_index_info(options.index_dir));
                return index_info_json(index_info(*st, loaded));
              }));
  }

  // The original, with its media type, streamed from the file: Range requests (a video player seeking,
  // a resumed download) get 206 with only the bytes asked for (cpp-httplib applies the ranges to the
  // content provider). The file is opened once, so a file replaced during the transfer is not mixed in.
  void handle_image(const httplib::Request& req, httplib::Response& res) {
    const int64_t id = std::stoll(req.matches[1]);
    auto rec = record(id);
    if (!rec) return send_error(res, 404, "not_found", "no file with id " + std::to_string(id) + " in the index");
    const int fd = still_indexed(*rec) ? ::open(rec->path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<int64_t>(st.st_size) != rec->size) {
      if (fd >= 0) ::close(fd);
      return send_error(res, 404, "not_found",
                        "file " + std::to_string(id) + " is gone or changed since it was indexed (run cnclip index)");
    }
    // A range that starts past the end cannot be served: 416 with the size, as RFC 9110 says (left to
    // cpp-httplib, it would drop the connection).
    const auto size = static_cast<ssize_t>(st.st_size);
    for (const auto& [first, last] : req.ranges) {
      if ((first >= 0 && first >= size) || (first < 0 && last == 0) || (first >= 0 && last >= 0 && last < first)) {
        ::close(fd);
        res.status = 416;
        res.set_header("Content-Range", "bytes */" + std::to_string(size));
        return;
      }
    }
    auto file = std::shared_ptr<int>(new int(fd), [](int* f) {
      ::close(*f);
      delete f;
    });
    std::vector<uint8_t> head(64);
    const ssize_t got = ::pread(fd, head.data(), head.size(), 0);
    head.resize(got > 0 ? static_cast<size_t>(got) : 0);
    res.set_header("Cache-Control", "private, max-age=60");
    res.set_header("Accept-Ranges", "bytes");
    res.set_content_provider(static_cast<size_t>(st.st_size), sniff_media_type(head, rec->path),
                             [file](size_t offset, size_t length, httplib::DataSink& sink) {
                               std::vector<char> buf(std::min<size_t>(length, 1 << 16));
                               const ssize_t n = ::pread(*file, buf.data(), buf.size(), static_cast<off_t>(offset));
                               if (n <= 0) return false;  // the file shrank: the connection is closed
                               sink.write(buf.data(), static_cast<size_t>(n));
                               return true;
                             });
  }

  static bool looks_like_whole_jpeg(const std::vector<uint8_t>& b) {
    return b.size() >= 4 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF && b[b.size() - 2] == 0xFF &&
           b[b.size() - 1] == 0xD9;
  }

  // Thumbnails are cached by content hash (INDEX/thumbs/HASH-SIZE.jpg), so a changed photo gets a new
  // one and copies of a photo share one. A read-only index serves them without caching.
  void handle_thumb(const httplib::Request& req, httplib::Response& res) {
    const int64_t id = std::stoll(req.matches[1]);
    auto rec = record(id);
    if (!rec) return send_error(res, 404, "not_found", "no file with id " + std::to_string(id) + " in the index");
    std::string key = rec->content_hash;
    const bool hex_key =
        !key.empty() && key.size() <= 64 && key.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!hex_key)
      key = "id" + std::to_string(id) + "-" + std::to_string(rec->size) + "-" + std::to_string(rec->mtime_ns);
    // A video's poster: the frame at ?t=SECONDS (to the millisecond; default the first frame).
    const bool video = is_video_path(rec->path);
    int64_t at_ms = 0;
    if (video && req.has_param("t")) {
      const std::string v = req.get_param_value("t");
      char* end = nullptr;
      const double t = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !std::isfinite(t) || t < 0 || t > 1e7) {
        throw Exception(ErrorCode::kInvalidArgument, "parameter 't' must be a number of seconds from 0");
      }
      at_ms = std::llround(t * 1000);
    }
    if (video) key += "-t" + std::to_string(at_ms);
    const std::string dir = options.index_dir + "/thumbs";
    const std::string cached = dir + "/" + key + "-" + std::to_string(options.thumb_size) + ".jpg";
    res.set_header("Cache-Control", "private, max-age=60");
    // A cached file is served only when framed as the JPEG this function writes (SOI ... EOI): a
    // truncated or overwritten one (a full disk, a stray write) is made again and replaced.
    if (auto bytes = read_file_bytes(cached); bytes && looks_like_whole_jpeg(bytes.value())) {
      res.set_content(std::string(bytes.value().begin(), bytes.value().end()), "image/jpeg");
      return;
    }
    if (!still_indexed(*rec)) {
      return send_error(res, 404, "not_found",
                        "file " + std::to_string(id) + " is gone or changed since it was indexed (run cnclip index)");
    }
    DecodeOptions d;
    d.apply_exif_orientation = true;
    d.max_pixels = options.decode.max_pixels;
    d.reduced_decode_min_side = options.thumb_size;
    Result<DecodedImage> decoded = Error{};
    if (video) {
      VideoOptions vo;
      vo.reduced_min_side = options.thumb_size;
      vo.max_pixels = options.decode.max_pixels;
      auto frame = video_frame_at(rec->path, static_cast<double>(at_ms) / 1000.0, vo);
      if (frame) {
        DecodedImage image;
        image.pixels = std::move(frame.value().rgb);
        decoded = std::move(image);
      } else {
        decoded = frame.error();
      }
    } else {
      decoded = decode_image_file(rec->path, d);
    }
    if (!decoded) {
      const ErrorCode c = decoded.error().code;
      if (c == ErrorCode::kNotFound || c == ErrorCode::kPermissionDenied) {
        return send_error(res, 404, "not_found", "file " + std::to_string(id) + " cannot be read any more");
      }
      return send_error(res, 500, error_code_name(c), decoded.error().message);
    }
    cv::Mat bgr;
    const cv::Mat& px = decoded.value().pixels;
    if (px.channels() == 1) {
      bgr = px;
    } else if (px.channels() == 4) {
      cv::cvtColor(px, bgr, cv::COLOR_RGBA2BGR);
    } else {
      cv::cvtColor(px, bgr, cv::COLOR_RGB2BGR);
    }
    const int longest = std::max(bgr.cols, bgr.rows);
    if (longest > options.thumb_size) {
      const double f = static_cast<double>(options.thumb_size) / longest;
      cv::Mat small;
      cv::resize(bgr, small,
                 cv::Size(std::max(1, static_cast<int>(std::lround(bgr.cols * f))),
                          std::max(1, static_cast<int>(std::lround(bgr.rows * f)))),
                 0, 0, cv::INTER_AREA);
      bgr = small;
    }
    std::vector<uchar> jpeg;
    if (!cv::imencode(".jpg", bgr, jpeg, {cv::IMWRITE_JPEG_QUALITY, 85})) {
      return send_error(res, 500, "internal", "file " + std::to_string(id) + ": the thumbnail could not be encoded");
    }
    std::string out(jpeg.begin(), jpeg.end());
    try {
      ::mkdir(dir.c_str(), 0755);
      write_file_atomically(cached, out);
    } catch (const Exception&) {
      // A read-only index: served, not cached.
    }
    res.set_content(std::move(out), "image/jpeg");
  }

  void handle_asset(const httplib::Request& req, httplib::Response& res) {
    const std::string path = req.path == "/" ? "/index.html" : req.path;
    for (size_t i = 0; i < web::kAssetCount; ++i) {
      const auto& a = web::kAssets[i];
      if (path == a.path) {
        res.set_header("Content-Security-Policy",
                       "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
        res.set_header("Cache-Control", "no-cache");
        res.set_content(reinterpret_cast<const char*>(a.data), a.size, a.type);
        return;
      }
    }
    send_error(res, 404, "not_found", "no such page");
  }

  // --- Routed CLI queries (include/cnclip/route.h) over INDEX/serve.sock ---------------------------
  httplib::Server route_http;
  std::thread route_thread;
  std::string canonical_index;  // the index folder's realpath when advertised
  std::string advert_path;      // INDEX/serve.sock while this server owns it
  dev_t advert_dev = 0;
  ino_t advert_ino = 0;
  int advert_dir_fd = -1;
  std::string advert_note;  // why there is no advert (for the CLI to say), "" when there is one
  std::chrono::steady_clock::time_point advert_tried;
  bool advert_retry = false;
  std::atomic<bool> route_done{false};

  // The index as a search needs it (open_for_search's checks), with the vectors current.
  template <class Fn>
  auto with_search_index(bool mixed, Fn&& fn) {
    return with_index(
        [&](IndexStore* st, Searcher* loaded) {
          if (!st || !loaded) throw Exception(ErrorCode::kNotFound, "no index yet");
          if (st->catalog().count() == 0) throw Exception(ErrorCode::kNotFound, "the index is empty");
          st->require_model(model->manifest(), mixed);
          return fn(st, loaded);
        },
        /*fresh=*/true);
  }

  static void route_error(httplib::Response& res, int status, const Error& e) {
    ojson j;
    j["error"] = route::error_json(e);
    res.status = status;
    res.set_content(dump_json(j), "application/json");
  }

  template <class Method>
  httplib::Server::Handler route_guarded(Method m) {
    return [this, m](const httplib::Request& req, httplib::Response& res) {
      try {
        (this->*m)(req, res);
      } catch (const Exception& e) {
        route_error(res, e.code() == ErrorCode::kInvalidArgument ? 400 : 500, e.error());
      } catch (const nlohmann::json::exception& e) {  // fields missing or of the wrong type or range
        route_error(res, 400, Error{ErrorCode::kInvalidArgument, std::string("malformed route request: ") + e.what()});
      } catch (const std::exception& e) {
        route_error(res, 500, Error{ErrorCode::kInternal, std::string("unexpected failure: ") + e.what()});
      }
    };
  }

  void route_hello(const httplib::Request&, httplib::Response& res) {
    ojson j;
    j["protocol"] = route::kProtocol;
    j["index"] = route::bytes_field(canonical_index);
    j["model_fingerprint"] = model->manifest().fingerprint;
    j["model_precision"] = model->manifest().precision;
    j["device"] = options.model.device;
    j["pid"] = static_cast<int64_t>(::getpid());
    res.set_content(dump_json(j), "application/json");
  }

  void route_check(const httplib::Request& req, httplib::Response& res) {
    const auto body = nlohmann::json::parse(req.body);
    const bool mixed = body.at("mixed_precision").get<bool>();
    route::options_from_json(body.at("options"));
    with_search_index(mixed, [](IndexStore*, Searcher*) { return 0; });
    res.set_content("{}", "application/json");
  }

  void route_search_text(const httplib::Request& req, httplib::Response& res) {
    const auto body = nlohmann::json::parse(req.body);
    const SearchOptions s = route::options_from_json(body.at("options"));
    const bool mixed = body.at("mixed_precision").get<bool>();
    std::vector<std::string> queries;
    for (const auto& q : body.at("queries")) queries.push_back(route::from_bytes_field(q));
    if (queries.empty()) throw Exception(ErrorCode::kInvalidArgument, "no queries");
    with_search_index(mixed, [](IndexStore*, Searcher*) { return 0; });
    // The batch as the CLI would encode it (one call: the same padding, so the same floats).
    const auto embeddings = model->encode_texts(queries);
    ojson j;
    j["results"] = route::results_json(with_search_index(
        mixed, [&](IndexStore*, Searcher* loaded) { return loaded->search(queries, embeddings, s); }));
    res.set_content(dump_json(j), "application/json");
  }

  void route_search_image(const httplib::Request& req, httplib::Response& res) {
    const auto eol = req.body.find('\n');
    if (eol == std::string::npos) throw Exception(ErrorCode::kInvalidArgument, "no request line");
    const auto head = nlohmann::json::parse(req.body.substr(0, eol));
    const SearchOptions s = route::options_from_json(head.at("options"));
    const bool mixed = head.at("mixed_precision").get<bool>();
    const std::string label = route::from_bytes_field(head.at("label"));
    const std::string exclude = route::from_bytes_field(head.at("exclude"));
    const int dim = model->dim();
    std::vector<float> embedding;
    if (!head.at("has_bytes").get<bool>()) {
      // An indexed, unchanged file: its stored embedding, as search-image uses it locally. The path
      // is only a catalog key here, never opened.
      FoundFile now;
      now.path = route::from_bytes_field(head.at("path"));
      now.size = detail::json_integer<int64_t>(head.at("size"), "size");
      now.mtime_ns = detail::json_integer<int64_t>(head.at("mtime_ns"), "mtime_ns");
      embedding = with_search_index(mixed, [&](IndexStore* st, Searcher*) {
        return stored_embedding_if_unchanged(st->catalog(), now.path, now, dim);
      });
      if (embedding.empty()) {
        res.set_content(R"({"need_bytes":true})", "application/json");
        return;
      }
    } else {
      with_search_index(mixed, [](IndexStore*, Searcher*) { return 0; });
      const Normalization& norm = model->manifest().image;
      std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
      const std::vector<uint8_t> bytes(req.body.begin() + static_cast<std::ptrdiff_t>(eol) + 1, req.body.end());
      const std::string name = route::from_bytes_field(head.at("name"));
      auto ok = preprocess_image(bytes, name, norm, route::decode_from_json(head.at("decode")), pixels.data());
      if (!ok) {
        ojson j;
        j["image_error"] = route::error_json(ok.error());
        res.set_content(dump_json(j), "application/json");
        return;
      }
      {
        std::lock_guard<std::mutex> lock(image_tower_mu);
        model->load_image_tower();
      }
      embedding = model->encode_images(pixels.data(), 1);
    }
    ojson j;
    j["results"] = route::results_json(with_search_index(
        mixed, [&](IndexStore*, Searcher* loaded) { return loaded->search({label}, embedding, s, {exclude}); }));
    res.set_content(dump_json(j), "application/json");
  }

  // Whether a live server answers on the socket at `address`.
  static bool socket_answers(const std::string& address) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, address.c_str(), std::min(address.size() + 1, sizeof(addr.sun_path)));
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  std::string unix_address(const std::string& dir, const std::string& name) const {
    const std::string full = dir + "/" + name;
    if (full.size() < sizeof(sockaddr_un{}.sun_path)) return full;
    return "/proc/self/fd/" + std::to_string(advert_dir_fd) + "/" + name;
  }

  // Makes INDEX/serve.sock: binds a temporary name, gives it the folder's permissions, and links it
  // into place (replacing a stale advert, never a live one). Best effort: returns false with
  // advert_note saying why (no index folder yet, a read-only index, another live server).
  bool advertise() {
    advert_tried = std::chrono::steady_clock::now();
    auto canonical = canonical_path(options.index_dir);
    if (!canonical) {
      advert_note = "no index folder yet";
      advert_retry = true;  // tried again while serving, once the folder appears
      return false;
    }
    advert_retry = false;
    const std::string dir = canonical.value();
    struct stat dir_st {};
    if (::stat(dir.c_str(), &dir_st) != 0 || !S_ISDIR(dir_st.st_mode)) {
      advert_note = dir + " is not a folder";
      return false;
    }
    if (advert_dir_fd < 0) advert_dir_fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    const std::string tmp_name = ".serve-" + std::to_string(::getpid()) + ".sock";
    const std::string tmp = dir + "/" + tmp_name, final_path = dir + "/" + kServeSocketName;
    ::unlink(tmp.c_str());
    route_http.set_address_family(AF_UNIX);
    if (!route_http.bind_to_port(unix_address(dir, tmp_name), 80)) {
      advert_note = dir + ": cannot create " + kServeSocketName + " (" + std::strerror(errno) + ")";
      return false;
    }
    // Read-write for each class that may read and enter the folder: who can read the index can
    // query it, nobody else.
    mode_t mode = S_IRUSR | S_IWUSR;
    if ((dir_st.st_mode & (S_IRGRP | S_IXGRP)) == (S_IRGRP | S_IXGRP)) mode |= S_IRGRP | S_IWGRP;
    if ((dir_st.st_mode & (S_IROTH | S_IXOTH)) == (S_IROTH | S_IXOTH)) mode |= S_IROTH | S_IWOTH;
    ::chmod(tmp.c_str(), mode);
    bool linked = false;
    for (int attempt = 0; attempt < 2 && !linked; ++attempt) {
      if (::link(tmp.c_str(), final_path.c_str()) == 0) {
        linked = true;
        break;
      }
      if (errno != EEXIST) {
        advert_note = final_path + ": " + std::strerror(errno);
        break;
      }
      struct stat old {};
      if (::lstat(final_path.c_str(), &old) != 0 || !S_ISSOCK(old.st_mode)) {
        advert_note = final_path + " exists and is not a socket: left alone";
        break;
      }
      if (socket_answers(unix_address(dir, kServeSocketName))) {
        advert_note = "another cnclip serve answers the CLI's queries on this index";
        break;
      }
      ::unlink(final_path.c_str());  // stale: its server was killed
    }
    struct stat st {};
    if (linked && ::lstat(final_path.c_str(), &st) == 0) {
      advert_path = final_path;
      advert_dev = st.st_dev;
      advert_ino = st.st_ino;
      canonical_index = dir;
      advert_note.clear();
    }
    ::unlink(tmp.c_str());
    if (!linked) {
      route_http.stop();
      return false;
    }
    return true;
  }

  // Removes the advert if it is still this server's.
  void withdraw_advert() {
    if (advert_path.empty()) return;
    struct stat st {};
    if (::lstat(advert_path.c_str(), &st) == 0 && st.st_dev == advert_dev && st.st_ino == advert_ino) {
      ::unlink(advert_path.c_str());
    }
    advert_path.clear();
  }

  void setup_route_server() {
    route_http.Get("/route/v1/hello", route_guarded(&Impl::route_hello));
    route_http.Post("/route/v1/check", route_guarded(&Impl::route_check));
    route_http.Post("/route/v1/search-text", route_guarded(&Impl::route_search_text));
    route_http.Post("/route/v1/search-image", route_guarded(&Impl::route_search_image));
    const int workers = std::max(2, std::min(options.workers, 8));
    route_http.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<size_t>(workers)); };
    // An image from stdin may be up to 1 GB, as search-image reads it locally.
    route_http.set_payload_max_length((size_t{1} << 30) + (size_t{1} << 20));
    route_http.set_read_timeout(60, 0);
    route_http.set_write_timeout(60, 0);
    route_http.set_keep_alive_timeout(5);
  }

  // Host, token and Origin, before a request's body is read.
  httplib::Server::HandlerResponse check_request(const httplib::Request& req, httplib::Response& res) {
    if (req.headers.size() > kMaxHeaders) {
      send_error(res, 431, "too_many_headers", "the request has more than " + std::to_string(kMaxHeaders) + " headers");
      return httplib::Server::HandlerResponse::Handled;
    }
    auto host_ok = [&](const std::string& name) {
      return allowed_hosts.count(name) > 0 || (wildcard && is_ip_literal(name));
    };
    const std::string host = host_name_of(req.get_header_value("Host"));
    if (!host_ok(host)) {
      send_error(res, 403, "bad_host", "the Host header must name this server (" + options.host + " or localhost)");
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.method != "GET" && req.method != "HEAD" && req.has_header("Origin")) {
      const std::string origin = req.get_header_value("Origin");
      const std::string prefix = "http://";
      bool ok = origin.rfind(prefix, 0) == 0;
      if (ok) {
        const std::string rest = origin.substr(prefix.size());
        const auto colon = rest.rfind(':');
        const bool has_port = colon != std::string::npos && rest.find(']', colon) == std::string::npos;
        const std::string port_text = has_port ? rest.substr(colon + 1) : "80";
        ok = host_ok(host_name_of(rest)) && port_text == std::to_string(port);
      }
      if (!ok) {
        send_error(res, 403, "bad_origin", "requests from another site are refused");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (!options.token.empty()) {
      bool ok = false;
      const std::string auth = req.get_header_value("Authorization");
      if (auth.rfind("Bearer ", 0) == 0) ok = constant_time_equal(auth.substr(7), options.token);
      const std::string cookies = req.get_header_value("Cookie");
      for (size_t pos = 0; !ok && pos < cookies.size();) {
        size_t end = cookies.find(';', pos);
        if (end == std::string::npos) end = cookies.size();
        std::string c = cookies.substr(pos, end - pos);
        while (!c.empty() && c.front() == ' ') c.erase(0, 1);
        if (c.rfind("cnclip_token=", 0) == 0) ok = constant_time_equal(c.substr(13), options.token);
        pos = end + 1;
      }
      if (!ok && req.has_param("token") && constant_time_equal(req.get_param_value("token"), options.token)) {
        ok = true;
        res.set_header("Set-Cookie", "cnclip_token=" + options.token + "; Path=/; HttpOnly; SameSite=Strict");
      }
      if (!ok) {
        send_error(res, 401, "unauthorized", "a valid token is required (open the URL printed by cnclip serve)");
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    // A known API route asked with another method: 405 with the methods it takes (RFC 9110 15.5.6).
    for (const auto& route : api_routes) {
      if (!std::regex_match(req.path, route.path)) continue;
      const bool get = route.method == "GET";
      if (req.method == route.method || (get && req.method == "HEAD")) break;
      const std::string allowed = get ? "GET, HEAD" : route.method;
      res.set_header("Allow", allowed);
      send_error(res, 405, "method_not_allowed", req.path + " takes " + allowed + ", not " + req.method);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  }

  template <class Method>
  httplib::Server::Handler guarded(Method m) {
    return [this, m](const httplib::Request& req, httplib::Response& res) {
      try {
        (this->*m)(req, res);
      } catch (const Exception& e) {
        send_exception(res, e);
      } catch (const std::exception& e) {
        send_error(res, 500, "internal", std::string("unexpected failure: ") + e.what());
      }
    };
  }

  void setup_routes() {
    http.set_default_headers(
        {{"X-Content-Type-Options", "nosniff"}, {"Referrer-Policy", "no-referrer"}, {"X-Frame-Options", "DENY"}});
    http.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return check_request(req, res); });
    using Handler = void (Impl::*)(const httplib::Request&, httplib::Response&);
    const struct {
      const char* method;
      const char* path;
      Handler handler;
    } routes[] = {
        {"GET", "/api/v1/search", &Impl::handle_search_text},
        {"POST", "/api/v1/search/image", &Impl::handle_search_image},
        {"GET", R"(/api/v1/similar/(\d{1,18}))", &Impl::handle_similar},
        {"GET", "/api/v1/info", &Impl::handle_info},
        {"GET", R"(/api/v1/thumb/(\d{1,18}))", &Impl::handle_thumb},
        {"GET", R"(/api/v1/image/(\d{1,18}))", &Impl::handle_image},
    };
    for (const auto& route : routes) {
      if (std::string(route.method) == "GET") {
        http.Get(route.path, guarded(route.handler));
      } else {
        http.Post(route.path, guarded(route.handler));
      }
      api_routes.push_back(ApiRoute{std::regex(route.path), route.method});
    }
    http.Get(R"(/[A-Za-z0-9_.-]*)", guarded(&Impl::handle_asset));
    // Whatever httplib answers by itself (no route: 404; a body over the limit: 413; ...) gets a JSON body.
    http.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
      switch (res.status) {
        case 404: send_error(res, 404, "not_found", "no such route"); break;
        case 413:
          send_error(res, 413, "too_large",
                     "the request is larger than the upload limit (" + std::to_string(options.max_upload_bytes >> 20) +
                         " MB)");
          break;
        case 400: send_error(res, 400, "bad_request", "malformed request"); break;
        case 414:
          // httplib's limit on the request line (its CPPHTTPLIB_REQUEST_URI_MAX_LENGTH), checked before
          // anything else of the request is looked at.
          send_error(res, 414, "uri_too_long",
                     "the request line is longer than " + std::to_string(CPPHTTPLIB_REQUEST_URI_MAX_LENGTH) + " bytes");
          break;
        default: send_error(res, res.status, "error", "the request failed (HTTP " + std::to_string(res.status) + ")");
      }
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        send_error(res, 500, "internal", std::string("unexpected failure: ") + e.what());
      } catch (...) {
        send_error(res, 500, "internal", "unexpected failure");
      }
    });
    // httplib's default also sets SO_REUSEPORT, which lets a second server (of the same user) bind the
    // same port and silently take half of the connections: a port in use must be an error instead.
    http.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    const int workers = std::max(1, options.workers);
    http.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<size_t>(workers)); };
    // Multipart framing around the largest accepted image; the image itself is checked exactly.
    http.set_payload_max_length(options.max_upload_bytes + (size_t{64} << 10));
    http.set_read_timeout(10, 0);
    http.set_write_timeout(30, 0);
    http.set_keep_alive_timeout(2);
    http.set_keep_alive_max_count(100);
  }
};

std::unique_ptr<Server> Server::create(const ServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    throw Exception(ErrorCode::kInvalidArgument, "--port must be from 0 to 65535");
  }
  if (!is_loopback_host(options.host) && options.token.empty()) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "--host " + options.host + " is reachable from other machines: give --token");
  }
  if (options.max_upload_bytes == 0) throw Exception(ErrorCode::kInvalidArgument, "the upload limit must be positive");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->model = Model::open(options.model_dir, options.model);
  impl->model->load_text_tower();
  // A model that does not fit the index is reported now rather than on the first query.
  impl->with_index([](IndexStore*, Searcher*) { return 0; });

  std::string bound = options.host;
  if (bound.size() > 2 && bound.front() == '[' && bound.back() == ']') bound = bound.substr(1, bound.size() - 2);
  for (auto& ch : bound) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  impl->allowed_hosts = {"localhost", "127.0.0.1", "::1", bound};
  impl->wildcard = bound == "0.0.0.0" || bound == "::";
  if (impl->wildcard) {
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0 && name[0]) {
      std::string n = name;
      for (auto& ch : n) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      impl->allowed_hosts.insert(n);
      impl->allowed_hosts.insert(n + ".local");
    }
  }
  impl->setup_routes();
  if (options.port == 0) {
    impl->port = impl->http.bind_to_any_port(bound);
  } else {
    impl->port = impl->http.bind_to_port(bound, options.port) ? options.port : -1;
  }
  if (impl->port <= 0) {
    throw Exception(ErrorCode::kIoError, "cannot listen on " + options.host + ":" + std::to_string(options.port) +
                                             " (address in use, or not an address of this machine)");
  }
  if (options.advertise) {
    impl->setup_route_server();
    impl->advertise();
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() {
  stop();
  impl_->withdraw_advert();
  if (impl_->advert_dir_fd >= 0) ::close(impl_->advert_dir_fd);
}

std::string Server::advert() const { return impl_->advert_path; }
std::string Server::advert_note() const { return impl_->advert_note; }

int Server::port() const { return impl_->port; }

std::string Server::url() const {
  std::string h = impl_->options.host;
  if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";
  return "http://" + h + ":" + std::to_string(impl_->port) + "/";
}

void Server::run(const std::function<bool()>& should_stop) {
  std::atomic<bool> done{false};
  auto start_route = [this] {
    if (!impl_->advert_path.empty() && !impl_->route_thread.joinable()) {
      impl_->route_thread = std::thread([this] {
        impl_->route_http.listen_after_bind();
        impl_->route_done = true;
      });
    }
  };
  start_route();
  std::thread watcher([&] {
    while (!done.load()) {
      if (impl_->stopping.load() || (should_stop && should_stop())) {
        // httplib's stop() does nothing until listen_after_bind has started listening: a SIGTERM
        // right after start-up was lost and the server ran on. Repeated until listening ends.
        impl_->stopping = true;
        impl_->http.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      // A server started before the index folder existed advertises itself once it appears.
      if (impl_->advert_retry && impl_->options.advertise &&
          std::chrono::steady_clock::now() - impl_->advert_tried >= std::chrono::seconds(1) && impl_->advertise()) {
        start_route();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  impl_->http.listen_after_bind();
  done = true;
  watcher.join();
  impl_->withdraw_advert();  // no new routed query from here on
  if (impl_->route_thread.joinable()) {
    // stop() only stops a server that is listening: wait until it is (or gave up).
    for (int i = 0; i < 200 && !impl_->route_http.is_running() && !impl_->route_done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    impl_->route_http.stop();
    impl_->route_thread.join();
  }
}

void Server::stop() {
  impl_->stopping = true;
  impl_->http.stop();
  impl_->route_http.stop();
}

}  // namespace cnclip
