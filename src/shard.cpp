#include "cnclip/shard.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "atomic_file.h"
#include "cnclip/image.h"
#include "cnclip/npy.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "encode_pipeline.h"
#include "json_number.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;

// "12" -> 12, "-3" -> -3 (with `negative`); nullopt for anything else, or beyond int64.
std::optional<int64_t> whole(const std::string& s, bool negative = false) {
  if (negative && !s.empty() && s[0] == '-') {
    auto v = whole(s.substr(1));
    return v ? std::optional<int64_t>(-*v) : std::nullopt;
  }
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::string lexically_absolute(const std::string& path) { return fs::absolute(path).lexically_normal().string(); }

// `path` relative to `root`, both absolute and lexically normal; nullopt when it is not below root.
std::optional<std::string> relative_to(const std::string& path, const std::string& root) {
  if (root == "/") return path.size() > 1 ? std::optional<std::string>(path.substr(1)) : std::nullopt;
  if (path.size() <= root.size() + 1 || path.compare(0, root.size(), root) != 0 || path[root.size()] != '/') {
    return std::nullopt;
  }
  return path.substr(root.size() + 1);
}

// What makes two runs' embeddings interchangeable: the shard, the model and the decoding.
nlohmann::ordered_json settings_json(const ShardSpec& shard, const BundleManifest& m, const DecodeOptions& d) {
  nlohmann::ordered_json j;
  j["shard"] = shard.to_string();
  j["model"] = {{"fingerprint", m.fingerprint},
                {"architecture", m.architecture},
                {"precision", m.precision},
                {"source", m.source_id},
                {"embedding_dim", m.embedding_dim}};
  j["decode"] = {{"apply_exif_orientation", d.apply_exif_orientation},
                 {"max_pixels", d.max_pixels},
                 {"reduced_decode_min_side", d.reduced_decode_min_side},
                 {"raw_preview_min_side", d.raw_preview_min_side}};
  return j;
}

std::string describe_settings(const nlohmann::json& s) {
  std::string out = "shard " + s.value("shard", std::string("?"));
  if (s.contains("model") && s["model"].is_object()) {
    const auto& m = s["model"];
    out += " of " + m.value("architecture", std::string("?")) + " " + m.value("precision", std::string("?")) +
           " (fingerprint " + m.value("fingerprint", std::string("?")).substr(0, 16) + ")";
  }
  if (s.contains("decode") && s["decode"].is_object()) {
    const auto& d = s["decode"];
    out += std::string(d.value("apply_exif_orientation", true) ? "" : ", --ignore-exif") +
           (detail::json_integer_or<int>(d, "reduced_decode_min_side", 0) == 0 ? ", --full-decode" : "") +
           ", --max-pixels " +
           megapixels_text(static_cast<double>(detail::json_integer_or<int64_t>(d, "max_pixels", 0)));
  }
  return out;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Exception(errno_error(path, errno, "cannot read"));
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Exception(ErrorCode::kIoError, path + ": read error");
  return s;
}

nlohmann::json read_json_file(const std::string& path) {
  try {
    return nlohmann::json::parse(read_small_file(path));
  } catch (const nlohmann::json::exception&) {
    throw Exception(ErrorCode::kCorrupt, path + ": not valid JSON; delete it (and the files beside it) to embed again");
  }
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) throw Exception(errno_error(path, errno, "cannot delete"));
}

// One saved chunk of finished rows in PREFIX.partial/: NNNNNN.list ("size<TAB>mtime_ns<TAB>path" per
// row, written first) and NNNNNN.npy (the rows; written last, so its presence commits the chunk).
struct SavedRow {
  int64_t size = 0, mtime_ns = 0;
  std::string path;
};

std::string chunk_name(const std::string& dir, int64_t n, const char* ext) {
  char name[32];
  std::snprintf(name, sizeof name, "/%06lld.%s", static_cast<long long>(n), ext);
  return dir + name;
}

// The chunk numbers in `dir` with a .list file (committed or not), in order.
std::vector<int64_t> chunk_numbers(const std::string& dir) {
  std::vector<int64_t> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw Exception(errno_error(dir, errno, "cannot list"));
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() == 11 && name.compare(6, 5, ".list") == 0) {
      if (auto n = whole(name.substr(0, 6))) out.push_back(*n);
    }
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The rows of a committed chunk, or nullopt when it is not committed or does not hold together (a
// chunk of another dimension, a list that does not match its matrix): such a chunk is simply
// encoded again.
std::optional<std::pair<std::vector<SavedRow>, std::vector<float>>> read_chunk(const std::string& dir, int64_t n,
                                                                               int dim) {
  const std::string npy = chunk_name(dir, n, "npy");
  if (!exists(npy)) return std::nullopt;
  auto m = read_npy(npy);
  if (!m || m.value().shape.size() != 2 || m.value().shape[1] != dim || m.value().dtype != "<f4") return std::nullopt;
  std::vector<SavedRow> rows;
  std::ifstream in(chunk_name(dir, n, "list"), std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    const auto t1 = line.find('\t');
    const auto t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
    if (t2 == std::string::npos) return std::nullopt;
    auto size = whole(line.substr(0, t1));
    auto mtime = whole(line.substr(t1 + 1, t2 - t1 - 1), /*negative=*/true);
    if (!size || !mtime) return std::nullopt;
    rows.push_back(SavedRow{*size, *mtime, line.substr(t2 + 1)});
  }
  if (in.bad() || static_cast<int64_t>(rows.size()) != m.value().shape[0]) return std::nullopt;
  return std::make_pair(std::move(rows), m.value().as_float());
}

void write_chunk(const std::string& dir, int64_t n, const std::vector<SavedRow>& rows, const std::vector<float>& data,
                 int dim) {
  std::string list;
  for (const auto& r : rows) {
    list += std::to_string(r.size) + '\t' + std::to_string(r.mtime_ns) + '\t' + r.path + '\n';
  }
  write_file_atomically(chunk_name(dir, n, "list"), list);
  write_file_atomically(chunk_name(dir, n, "npy"),
                        npy_bytes(data.data(), {static_cast<int64_t>(rows.size()), static_cast<int64_t>(dim)}));
}

// The lock that keeps two runs of one prefix apart: PREFIX.partial/lock, held with flock(2) for the
// life of the object (the kernel drops it when the process dies, kill -9 included).
class PartialDir {
 public:
  explicit PartialDir(std::string dir) : dir_(std::move(dir)) {
    if (::mkdir(dir_.c_str(), 0777) != 0 && errno != EEXIST) throw Exception(errno_error(dir_, errno, "cannot create"));
    struct stat st {};
    if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      throw Exception(ErrorCode::kInvalidArgument,
                      dir_ + ": is not a folder (embed-image keeps unfinished work there)");
    }
    const std::string lock = dir_ + "/lock";
    fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd_ < 0) throw Exception(errno_error(lock, errno, "cannot create"));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd_);
      fd_ = -1;
      if (err == EWOULDBLOCK) {
        throw Exception(ErrorCode::kBusy, dir_ + ": another embed-image is writing this shard; wait for it to end");
      }
      throw Exception(errno_error(lock, err, "cannot lock"));
    }
  }
  ~PartialDir() {
    if (fd_ >= 0) ::close(fd_);
  }
  PartialDir(const PartialDir&) = delete;
  PartialDir& operator=(const PartialDir&) = delete;
  const std::string& path() const { return dir_; }

  // Deletes the folder and everything in it (only files of ours are there), lock last.
  void remove_all() {
    if (DIR* d = ::opendir(dir_.c_str())) {
      std::vector<std::string> names;
      while (dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != ".." && name != "lock") names.push_back(name);
      }
      ::closedir(d);
      for (const auto& n : names) remove_file(dir_ + "/" + n);
    }
    remove_file(dir_ + "/lock");
    // ENOTEMPTY: a second run of the shard started meanwhile; it removes the folder when it finds the
    // outputs complete.
    if (::rmdir(dir_.c_str()) != 0 && errno != ENOENT && errno != ENOTEMPTY) {
      throw Exception(errno_error(dir_, errno, "cannot delete"));
    }
    sync_parent_directory(dir_);
  }

 private:
  std::string dir_;
  int fd_ = -1;
};

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool fits_a_line(const std::string& path) {
  return path.find('\n') == std::string::npos && (path.empty() || path.back() != '\r');
}

}  // namespace

ShardSpec parse_shard_spec(const std::string& text, const std::string& what) {
  const std::string shown = what + " '" + text + "'";
  const std::string expects = ": expects K/N, two whole numbers with 1 <= K <= N, e.g. 2/8 for the second of 8 shards";
  const auto slash = text.find('/');
  if (slash == std::string::npos) throw Exception(ErrorCode::kInvalidArgument, shown + expects);
  const auto k = whole(text.substr(0, slash)), n = whole(text.substr(slash + 1));
  if (!k || !n) throw Exception(ErrorCode::kInvalidArgument, shown + expects);
  if (*n == 0)
    throw Exception(ErrorCode::kInvalidArgument, what + " " + text + ": the number of shards N must be at least 1");
  if (*n > kMaxShards) {
    throw Exception(ErrorCode::kInvalidArgument,
                    what + " " + text + ": at most " + std::to_string(kMaxShards) + " shards");
  }
  if (*k == 0) {
    throw Exception(ErrorCode::kInvalidArgument, what + " " + text + ": shards are counted from 1 (the first of " +
                                                     std::to_string(*n) + " is 1/" + std::to_string(*n) + ")");
  }
  if (*k > *n) {
    throw Exception(ErrorCode::kInvalidArgument,
                    what + " " + text + ": there are only " + std::to_string(*n) + " shards (K must be at most N)");
  }
  return ShardSpec{*k, *n};
}

int64_t shard_of(std::string_view key, int64_t count) {
  if (count <= 1) return 1;
  return 1 + static_cast<int64_t>(XXH3_64bits(key.data(), key.size()) % static_cast<uint64_t>(count));
}

ShardSelection select_shard(const std::vector<std::string>& inputs, const ShardSpec& shard, const std::string& root,
                            const WalkOptions& walk) {
  ShardSelection out;
  const std::string abs_root = root.empty() ? "" : lexically_absolute(root);
  auto key_below_root = [&](const std::string& path, const std::string& input) {
    auto rel = relative_to(lexically_absolute(path), abs_root);
    if (!rel) {
      throw Exception(
          ErrorCode::kInvalidArgument,
          input + ": not below --root " + root + " (every input must be, so that its key is the same everywhere)");
    }
    return *rel;
  };
  auto take = [&](std::string path, const std::string& key) {
    ++out.total;
    if (shard_of(key, shard.count) == shard.index) out.files.push_back(ShardFile{std::move(path), key});
  };
  for (const auto& input : inputs) {
    struct stat st {};
    if (::stat(input.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      auto canonical = canonical_path(input);
      if (!canonical) throw Exception(canonical.error());
      // Keys of a walked folder: relative to --root when given (through the folder as given, so a
      // root reached through a link still counts), else to the folder.
      const std::string base = abs_root.empty() ? ""
                                                : (input == abs_root || lexically_absolute(input) == abs_root
                                                       ? std::string()
                                                       : key_below_root(input, input) + "/");
      WalkResult w = walk_folder(canonical.value(), walk);
      for (size_t i = 0; i < w.unlisted.size(); ++i) out.problems.push_back(w.unlisted_errors[i]);
      for (auto& s : w.skipped) {
        auto rel = relative_to(s.file.path, canonical.value());
        if (shard_of(base + rel.value_or(s.file.path), shard.count) == shard.index) out.problems.push_back(s.error);
      }
      for (auto& f : w.files) {
        auto rel = relative_to(f.path, canonical.value());
        take(std::move(f.path), base + rel.value_or(f.path));
      }
      continue;
    }
    take(input, abs_root.empty() ? fs::path(input).lexically_normal().string() : key_below_root(input, input));
  }
  return out;
}

ShardRunSummary run_shard(Model& model, const ShardSelection& selection, const ShardSpec& shard,
                          const std::string& prefix, const ShardRunOptions& options, ShardObserver& observer) {
  const ShardOutputPaths out(prefix);
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  const nlohmann::ordered_json settings = settings_json(shard, bundle, options.embed.decode);
  const nlohmann::json settings_plain = nlohmann::json::parse(settings.dump());
  ShardRunSummary summary;
  // The files by the absolute path their rows carry (canonical when they exist), each once.
  std::vector<ShardFile> files;
  {
    std::unordered_set<std::string> seen;
    for (const auto& f : selection.files) {
      auto canonical = canonical_path(f.path);
      std::string path = canonical ? canonical.value() : lexically_absolute(f.path);
      if (seen.insert(path).second) files.push_back(ShardFile{std::move(path), f.key});
    }
  }
  summary.files = static_cast<int64_t>(files.size());

  const std::string partial_settings = out.partial + "/settings.json";

  // Complete outputs of an earlier run: the same shard, model and decoding over the same files is
  // done; another shard or model is refused (never overwritten); other files are embedded again.
  if (exists(out.npy) && !exists(out.json)) {
    throw Exception(ErrorCode::kMismatch, out.npy + ": exists and is not the output of embed-image --shard (no " +
                                              out.json + " beside it); give another prefix");
  }
  if (exists(out.json) && exists(out.npy)) {
    const nlohmann::json done = read_json_file(out.json);
    const nlohmann::json done_settings = done.contains("settings") ? done["settings"] : nlohmann::json();
    if (done_settings != settings_plain) {
      throw Exception(ErrorCode::kMismatch, prefix + ": the outputs there are " + describe_settings(done_settings) +
                                                ", not " + describe_settings(settings_plain) +
                                                "; give another prefix, or delete " + out.npy + " to replace them");
    }
    std::unordered_set<std::string> had;
    {
      std::ifstream in(out.paths, std::ios::binary);
      std::string line;
      while (std::getline(in, line)) had.insert(line);
    }
    if (done.contains("failed") && done["failed"].is_array()) {
      for (const auto& f : done["failed"]) {
        try {
          had.insert(get_string_field(f, "path"));
        } catch (const Exception&) {
        }
      }
    }
    bool same = had.size() == files.size();
    for (size_t i = 0; same && i < files.size(); ++i) same = had.count(files[i].path) > 0;
    if (same && !exists(partial_settings)) {
      if (exists(out.partial)) {
        try {  // left by a run that ended while this one started: nothing of value is in it
          PartialDir(out.partial).remove_all();
        } catch (const Exception&) {
        }
      }
      summary.already_complete = true;
      summary.embedded = detail::json_integer_or<int64_t>(done, "embedded", 0);
      summary.failed =
          done.contains("failed") && done["failed"].is_array() ? static_cast<int64_t>(done["failed"].size()) : 0;
      return summary;
    }
  }

  // Saved work of an interrupted run.
  PartialDir partial(out.partial);
  if (exists(partial_settings)) {
    const nlohmann::json saved = read_json_file(partial_settings);
    if (saved != settings_plain) {
      throw Exception(ErrorCode::kMismatch, partial.path() + ": holds unfinished work of " + describe_settings(saved) +
                                                ", not " + describe_settings(settings_plain) +
                                                "; give another prefix, or delete that folder to start again");
    }
  } else {
    write_file_atomically(partial_settings, settings.dump(1) + "\n");
  }
  struct Saved {
    int64_t chunk = 0;
    size_t row = 0;
  };
  std::unordered_map<std::string, Saved> saved;  // path -> where its current row is
  std::map<int64_t, std::vector<SavedRow>> chunk_rows;
  int64_t next_chunk = 0;
  for (int64_t n : chunk_numbers(partial.path())) {
    next_chunk = n + 1;
    auto chunk = read_chunk(partial.path(), n, dim);
    if (!chunk) continue;
    for (size_t r = 0; r < chunk->first.size(); ++r) saved[chunk->first[r].path] = Saved{n, r};
    chunk_rows[n] = std::move(chunk->first);
  }

  // What is still to do: files without a saved row of their present size and mtime.
  struct Todo {
    size_t file;  // index in files
    int64_t size = 0, mtime_ns = 0;
  };
  std::vector<Todo> todo;
  std::unordered_set<std::string> current;  // files whose saved row is theirs as they are now
  std::vector<std::pair<std::string, Error>> failures;
  auto fail = [&](const std::string& path, Error e) {
    observer.on_file_error(e);
    failures.emplace_back(path, std::move(e));
  };
  for (size_t i = 0; i < files.size(); ++i) {
    const ShardFile& f = files[i];
    if (!fits_a_line(f.path)) {
      fail(f.path,
           Error{ErrorCode::kInvalidArgument, f.path + ": the name holds a line break, which a line of " + out.paths +
                                                  " cannot carry (embed-image without --out prints JSONL, which can)"});
      continue;
    }
    auto st = stat_file(f.path);
    const int64_t size = st ? st.value().size : -1, mtime = st ? st.value().mtime_ns : -1;
    if (auto it = saved.find(f.path); it != saved.end() && st) {
      const SavedRow& r = chunk_rows[it->second.chunk][it->second.row];
      if (r.size == size && r.mtime_ns == mtime) {
        current.insert(f.path);
        continue;
      }
    }
    todo.push_back(Todo{i, size, mtime});
  }
  summary.reused = static_cast<int64_t>(current.size());
  observer.on_start(static_cast<int64_t>(todo.size()), summary.reused);

  // Encode what is left, saving finished rows as chunks.
  std::vector<SavedRow> pending_rows;
  std::vector<float> pending;
  auto last_save = std::chrono::steady_clock::now();
  auto save = [&] {
    if (pending_rows.empty()) return;
    write_chunk(partial.path(), next_chunk, pending_rows, pending, dim);
    for (size_t r = 0; r < pending_rows.size(); ++r) {
      saved[pending_rows[r].path] = Saved{next_chunk, r};
      current.insert(pending_rows[r].path);
    }
    chunk_rows[next_chunk] = std::move(pending_rows);
    ++next_chunk;
    pending_rows.clear();
    pending.clear();
    last_save = std::chrono::steady_clock::now();
  };
  if (!todo.empty()) {
    const Normalization norm = bundle.image;
    auto prepare = [&](size_t i) {
      const std::string& path = files[todo[i].file].path;
      auto bytes = read_file_bytes(path);
      if (!bytes) {
        detail::PreparedItem failed;
        failed.error = bytes.error();
        return failed;
      }
      return detail::prepare_image(bytes.value(), path, norm, options.embed.decode);
    };
    detail::EncodePipeline pipeline(model, todo.size(), prepare, options.embed.encode);
    int64_t done = 0;
    while (auto batch = pipeline.next()) {
      if (batch->error) {
        pipeline.stop();
        save();  // what was finished before the model failed stays
        std::rethrow_exception(batch->error);
      }
      size_t row = 0;
      for (auto& p : batch->items) {
        const Todo& t = todo[p.index];
        const std::string& path = files[t.file].path;
        if (p.kind == detail::PreparedItem::kPixels) {
          const float* e = &batch->embeddings[row++ * static_cast<size_t>(dim)];
          pending_rows.push_back(SavedRow{t.size, t.mtime_ns, path});
          pending.insert(pending.end(), e, e + dim);
        } else {
          fail(path, std::move(p.error));
        }
      }
      done += static_cast<int64_t>(batch->items.size());
      observer.on_progress(done, static_cast<int64_t>(todo.size()));
      const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count();
      if (since >= options.save_every_seconds) save();
      if (interrupt_requested() && done < static_cast<int64_t>(todo.size())) {
        pipeline.stop();
        save();
        summary.interrupted = true;
        return summary;
      }
    }
    pipeline.stop();
    save();
  }

  // The outputs: every file of the selection with a current row, chunk by chunk (so that each chunk
  // is read once).
  std::vector<Saved> rows;
  for (const auto& f : files) {
    if (current.count(f.path)) rows.push_back(saved.at(f.path));
  }
  std::sort(rows.begin(), rows.end(),
            [](const Saved& a, const Saved& b) { return a.chunk != b.chunk ? a.chunk < b.chunk : a.row < b.row; });
  summary.embedded = static_cast<int64_t>(rows.size());
  summary.failed = static_cast<int64_t>(failures.size());
  // PREFIX.npy goes first and comes back last: while it is missing the files beside it may be of
  // either run, and nothing imports them.
  remove_file(out.npy);
  sync_parent_directory(out.npy);
  {
    AtomicFileWriter paths(out.paths);
    for (const auto& where : rows) {
      const std::string& p = chunk_rows[where.chunk][where.row].path;
      paths.write(p.data(), p.size());
      paths.write("\n", 1);
    }
    paths.commit();
  }
  {
    nlohmann::ordered_json j;
    j["format"] = "cnclip-shard";
    j["version"] = 1;
    j["settings"] = settings;
    j["files"] = summary.files;
    j["embedded"] = summary.embedded;
    j["failed_count"] = summary.failed;
    j["written"] = now_utc();
    nlohmann::ordered_json failed = nlohmann::ordered_json::array();
    for (const auto& [path, e] : failures) {
      nlohmann::ordered_json f;
      set_string_field(f, "path", path);
      f["code"] = error_code_name(e.code);
      f["error"] = e.message;
      failed.push_back(std::move(f));
    }
    j["failed"] = std::move(failed);
    write_file_atomically(out.json, dump_json(j) + "\n");
  }
  {
    AtomicFileWriter npy(out.npy);
    const std::string header = npy_header({summary.embedded, static_cast<int64_t>(dim)});
    npy.write(header.data(), header.size());
    int64_t chunk = -1;
    std::vector<float> data;
    for (const auto& where : rows) {
      if (where.chunk != chunk) {
        auto m = read_npy(chunk_name(partial.path(), where.chunk, "npy"));
        if (!m) throw Exception(m.error());
        data = m.value().as_float();
        chunk = where.chunk;
      }
      npy.write(&data[where.row * static_cast<size_t>(dim)], sizeof(float) * static_cast<size_t>(dim));
    }
    npy.commit();
  }
  partial.remove_all();
  return summary;
}

}  // namespace cnclip
