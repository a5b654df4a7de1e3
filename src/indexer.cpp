#include "cnclip/indexer.h"

#include <xxhash.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "cnclip/image.h"
#include "cnclip/runtime.h"
#include "cnclip/video.h"
#include "encode_pipeline.h"

namespace cnclip {
namespace {

std::string content_hash(const std::vector<uint8_t>& bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

// XXH3-128 of a whole file read in 1 MiB pieces (videos are not read into memory at once).
Result<std::string> file_content_hash(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return errno_error(path, errno, "cannot read file");
  std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(XXH3_createState(), &XXH3_freeState);
  XXH3_128bits_reset(state.get());
  std::vector<char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) XXH3_128bits_update(state.get(), buf.data(), n);
  if (std::ferror(f.get())) return errno_error(path, errno, "cannot read file");
  const XXH128_hash_t h = XXH3_128bits_digest(state.get());
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return std::string(hex);
}

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The videos of the plan (plan.to_encode from `first` on): each decoded (decode_video: a frame every
// frame_interval seconds plus scene changes), its frames encoded in batches, and committed in one
// transaction: the video's row (its first frame's embedding) with its other frames. An interruption
// abandons the video in progress (nothing of it is written). Returns false when interrupted.
bool encode_videos(IndexStore& store, Model& model, IndexPlan& plan, size_t first, const IndexOptions& options,
                   IndexObserver& observer, IndexSummary& summary) {
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  const Normalization norm = bundle.image;
  const size_t image_floats = 3 * static_cast<size_t>(norm.size) * static_cast<size_t>(norm.size);
  const int batch_size = std::max(1, options.encode.batch_size);
  Catalog& catalog = store.catalog();
  model.load_image_tower();  // before concurrent calls (model.h)
  const ModelParallelism parallelism =
      choose_parallelism(compute_threads(), model.on_cpu(), options.encode.model_workers);
  VideoOptions vo;
  vo.frame_interval = options.frame_interval;
  vo.reduced_min_side = options.decode.reduced_decode_min_side;
  vo.apply_rotation = options.decode.apply_exif_orientation;
  vo.max_pixels = options.decode.max_pixels;
  const auto total = static_cast<int64_t>(plan.to_encode.size());
  int64_t done = static_cast<int64_t>(first);
  bool model_recorded = false;
  auto fail = [&](const PlannedFile& item, const Error& e) {
    observer.on_file_error(e);
    ++summary.failed;
    CatalogTransaction tx(catalog);
    catalog.record_failure(FileRecord{0, item.file.path, item.file.size, item.file.mtime_ns, "", 0}, e.message);
    tx.commit();
  };
  for (size_t i = first; i < plan.to_encode.size(); ++i) {
    if (interrupt_requested()) return false;
    const PlannedFile& item = plan.to_encode[i];
    auto hash = file_content_hash(item.file.path);
    if (!hash) {
      fail(item, hash.error());
      observer.on_progress(++done, total);
      continue;
    }
    if (!item.existing) {
      auto it = plan.vanished.find(hash.value());
      if (it != plan.vanished.end()) {  // a vanished video under a new name: its row and frames move
        FileRecord r = it->second;
        plan.vanished.erase(it);
        r.path = item.file.path;
        r.size = item.file.size;
        r.mtime_ns = item.file.mtime_ns;
        r.indexed_at = now_seconds();
        CatalogTransaction tx(catalog);
        catalog.forget_failure(item.file.path);
        catalog.update(r, nullptr, dim);
        tx.commit();
        ++summary.moved;
        observer.on_progress(++done, total);
        continue;
      }
    }
    std::vector<int64_t> times_ms;
    std::vector<float> embeddings, pixels;
    std::optional<Error> model_error;
    std::exception_ptr model_failure;  // the model failed (not one frame): ends the run, as for photos
    // A chunk of frames is encoded as the photo pipeline does (one single-threaded call per core,
    // see choose_parallelism), while the next chunk is decoded on this thread.
    struct Part {
      std::vector<float> pixels, embeddings;
      RowErrors errors;
      std::exception_ptr failure;
    };
    std::vector<Part> parts;
    std::vector<std::thread> running;
    auto wait = [&] {
      for (auto& t : running) t.join();
      running.clear();
      for (auto& part : parts) {
        if (part.failure) std::rethrow_exception(part.failure);  // the model failed: ends the run
        for (const auto& err : part.errors) {
          if (err && !model_error) model_error = Error{err->code, item.file.path + ": a frame: " + err->message};
        }
        embeddings.insert(embeddings.end(), part.embeddings.begin(), part.embeddings.end());
      }
      parts.clear();
    };
    auto flush = [&] {
      wait();
      const size_t n = pixels.size() / image_floats;
      if (n == 0) return;
      const size_t per = (n + static_cast<size_t>(parallelism.workers) - 1) / static_cast<size_t>(parallelism.workers);
      parts.resize((n + per - 1) / per);
      for (size_t w = 0; w < parts.size(); ++w) {
        const size_t from = w * per, count = std::min(per, n - from);
        parts[w].pixels.assign(pixels.begin() + static_cast<std::ptrdiff_t>(from * image_floats),
                               pixels.begin() + static_cast<std::ptrdiff_t>((from + count) * image_floats));
      }
      pixels.clear();
      for (size_t w = 0; w < parts.size(); ++w) {
        running.emplace_back([&model, &parallelism, part = &parts[w], w, image_floats] {
          try {
            set_compute_threads(parallelism.threads_of(static_cast<int>(w)));
            part->embeddings = model.encode_images(part->pixels.data(),
                                                   static_cast<int>(part->pixels.size() / image_floats), &part->errors);
          } catch (...) {
            part->failure = std::current_exception();
          }
        });
      }
    };
    struct Joiner {  // no thread is left running when this video ends early (an error, an interruption)
      std::vector<std::thread>& threads;
      ~Joiner() {
        for (auto& t : threads) {
          if (t.joinable()) t.join();
        }
      }
    } joiner{running};
    auto decoded = decode_video(item.file.path, vo, [&](const VideoFrame& frame) {
      if (interrupt_requested()) return false;
      DecodedImage image;
      image.pixels = frame.rgb;
      image.mode = PixelMode::kRGB;
      image.format = "video";
      const cv::Mat rgb = resize_like_pillow(image, norm.size, norm.size);
      pixels.resize(pixels.size() + image_floats);
      normalize_to_chw(rgb, norm, &pixels[pixels.size() - image_floats]);
      times_ms.push_back(static_cast<int64_t>(std::llround(frame.time * 1000)));
      if (pixels.size() / image_floats >= static_cast<size_t>(batch_size * parallelism.workers)) {
        try {
          flush();
        } catch (...) {
          model_failure = std::current_exception();
          return false;
        }
      }
      return true;
    });
    if (model_failure) std::rethrow_exception(model_failure);
    if (!decoded && decoded.error().code == ErrorCode::kInterrupted) return false;
    if (decoded) flush();
    wait();
    if (!decoded || model_error) {
      fail(item, decoded ? *model_error : decoded.error());
      observer.on_progress(++done, total);
      continue;
    }
    const VideoInfo& info = decoded.value();
    PhotoMeta meta;
    meta.width = info.width;
    meta.height = info.height;
    if (info.creation_time) {  // the container's creation_time is UTC
      meta.taken_at = *info.creation_time;
      meta.source = TimeSource::kExif;
      meta.offset_minutes = 0;
    } else {
      meta.taken_at = item.file.mtime_ns / 1'000'000'000 - (item.file.mtime_ns % 1'000'000'000 < 0 ? 1 : 0);
      meta.source = TimeSource::kMtime;
    }
    CatalogTransaction tx(catalog);
    if (!model_recorded) {
      store.record_model(bundle);
      model_recorded = true;
    }
    catalog.forget_failure(item.file.path);
    FileRecord r{0, item.file.path, item.file.size, item.file.mtime_ns, hash.value(), now_seconds(), meta};
    if (item.existing) {
      r.id = item.existing->id;
      catalog.update(r, embeddings.data(), dim);
      ++summary.updated;
    } else {
      r.id = catalog.insert(r, embeddings.data(), dim);
      ++summary.added;
    }
    // The first frame is the row's own embedding; the others go to the frames table.
    std::vector<int64_t> rest(times_ms.begin() + 1, times_ms.end());
    catalog.set_frames(r.id, rest, embeddings.data() + dim, dim);
    tx.commit();
    ++summary.video_frames;
    summary.video_frames += static_cast<int64_t>(rest.size());
    summary.video_seconds += info.duration;
    observer.on_progress(++done, total);
  }
  return true;
}

// Where the exact copies of one run take their embedding from. A photo with the content hash of an
// indexed photo whose embedding is current is stored with that embedding, not the model's output for
// it: so copies are bit-identical vectors, equal in every score and ranked by id among themselves,
// where the model's output for the same pixels can differ with its batch mates (~1e-7 on OpenBLAS's
// AVX2 kernels, which round a row by the rows around it; far more with int8's per-call activation
// scale). Current: not waiting to be encoded again by this run, and with --reindex written by this
// run (the run is asked for the model's output again: another decode option, a re-exported bundle);
// then a photo encoded afresh also gives its embedding to its copies outside the paths given.
// The copy must have the same extension (a TIFF-based RAW decodes by its name) and be no video.
class CopySources {
 public:
  CopySources(const IndexPlan& plan, size_t photos, bool reindex) : reindex_(reindex) {
    if (reindex_) return;
    for (size_t i = 0; i < photos; ++i) {
      if (plan.to_encode[i].existing) stale_.insert(plan.to_encode[i].existing->id);
    }
  }
  // The embedding to store for the photo at `path` with content hash `hash`, else empty (the model's).
  // One indexed lookup per photo (spread() makes a second for a photo --reindex encodes afresh); a
  // hash with copies is remembered, so k copies cost k lookups.
  std::vector<float> embedding_for(Catalog& catalog, const std::string& hash, const std::string& path, int dim) {
    const auto valid = [dim](const std::vector<float>& e) {
      return e.size() == static_cast<size_t>(dim) &&
             std::all_of(e.begin(), e.end(), [](float v) { return std::isfinite(v); });
    };
    const auto known = source_.find(hash);
    if (known != source_.end()) {
      std::vector<float> e = catalog.embedding(known->second);
      if (valid(e)) return e;
    }
    const std::string ext = extension_of(path);
    const auto f = catalog.first_with_hash(hash, [&](const FileRecord& r) {
      return (reindex_ ? written_.count(r.id) > 0 : stale_.count(r.id) == 0) && !is_video_path(r.path) &&
             extension_of(r.path) == ext;
    });
    if (!f) return {};
    std::vector<float> e = catalog.embedding(f->id);
    if (!valid(e)) return {};
    source_[hash] = f->id;
    return e;
  }
  // Row `id` now holds an embedding made (or copied) by this run.
  void written(int64_t id) {
    stale_.erase(id);
    if (reindex_) written_.insert(id);
  }
  // With --reindex, a photo the model encoded afresh gives its embedding `e` to its copies that this
  // run did not write (outside the paths given, or not reached yet), so copies stay one vector.
  void spread(Catalog& catalog, const FileRecord& record, const float* e, int dim) {
    if (!reindex_) return;
    const std::string ext = extension_of(record.path);
    std::vector<FileRecord> others;
    catalog.first_with_hash(record.content_hash, [&](const FileRecord& r) {
      if (r.id != record.id && !written_.count(r.id) && !is_video_path(r.path) && extension_of(r.path) == ext) {
        others.push_back(r);
      }
      return false;  // every one
    });
    for (const FileRecord& r : others) {
      catalog.update(r, e, dim);
      written_.insert(r.id);
    }
  }

 private:
  static std::string extension_of(const std::string& path) {
    std::string ext = std::filesystem::path(path).extension().string();
    for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return ext;
  }
  bool reindex_;
  std::unordered_set<int64_t> stale_, written_;
  std::unordered_map<std::string, int64_t> source_;  // hashes that had a copy: the row they copy
};

// Phase 3: decode, encode and commit the plan's files, one transaction per batch. Returns false when
// interrupted before the end (what was committed is kept).
bool encode_and_commit(IndexStore& store, Model& model, IndexPlan& plan, const IndexOptions& options,
                       IndexObserver& observer, IndexSummary& summary) {
  if (plan.to_encode.empty()) return true;
  // Photos first, through the pipeline; then videos, one at a time (encode_videos).
  const auto first_video = std::stable_partition(plan.to_encode.begin(), plan.to_encode.end(),
                                                 [](const PlannedFile& f) { return !is_video_path(f.file.path); });
  const auto photos = static_cast<size_t>(first_video - plan.to_encode.begin());
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  Catalog& catalog = store.catalog();
  std::mutex vanished_mu;  // plan.vanished: a move takes its source out, from a decoder thread
  const Normalization norm = bundle.image;
  // Capture time and size, from the bytes read for the model anyway; one slot per file, each written
  // by the one decoder thread that prepares that file.
  std::vector<PhotoMeta> metas(photos);
  auto prepare = [&](size_t i) {
    const PlannedFile& item = plan.to_encode[i];
    auto bytes = read_file_bytes(item.file.path);
    if (!bytes) {
      detail::PreparedItem p;
      p.error = bytes.error();
      return p;
    }
    metas[i] = read_photo_meta(bytes.value(), item.file.mtime_ns);
    std::string hash = content_hash(bytes.value());
    if (!item.existing) {
      std::lock_guard<std::mutex> lock(vanished_mu);
      auto it = plan.vanished.find(hash);
      if (it != plan.vanished.end()) {  // a vanished file's content under a new name: a move
        detail::PreparedItem p;
        p.kind = detail::PreparedItem::kNoModel;
        p.content_hash = std::move(hash);
        p.reuse_id = it->second.id;
        plan.vanished.erase(it);
        return p;
      }
    }
    detail::PreparedItem p = detail::prepare_image(bytes.value(), item.file.path, norm, options.decode);
    p.content_hash = std::move(hash);
    return p;
  };
  const auto total = static_cast<int64_t>(plan.to_encode.size());
  if (photos == 0) return encode_videos(store, model, plan, 0, options, observer, summary);
  detail::EncodePipeline pipeline(model, photos, prepare, options.encode);
  CopySources copies(plan, photos, options.reindex);
  bool model_recorded = false;
  int64_t done = 0;
  while (auto batch = pipeline.next()) {
    if (batch->error) {
      pipeline.stop();
      std::rethrow_exception(batch->error);
    }
    CatalogTransaction tx(catalog);
    if (!model_recorded) {
      store.record_model(bundle);
      model_recorded = true;
    }
    size_t row = 0;
    for (const auto& p : batch->items) {
      const PlannedFile& item = plan.to_encode[p.index];
      if (p.kind == detail::PreparedItem::kFailed) {
        observer.on_file_error(p.error);
        ++summary.failed;
        catalog.record_failure(FileRecord{0, item.file.path, item.file.size, item.file.mtime_ns, "", 0},
                               p.error.message);
        continue;
      }
      catalog.forget_failure(item.file.path);
      FileRecord r{
          0, item.file.path, item.file.size, item.file.mtime_ns, p.content_hash, now_seconds(), metas[p.index]};
      if (p.kind == detail::PreparedItem::kPixels) {
        const float* e = &batch->embeddings[row++ * static_cast<size_t>(dim)];
        const std::vector<float> copied = copies.embedding_for(catalog, p.content_hash, r.path, dim);
        if (!copied.empty()) e = copied.data();
        if (item.existing) {
          r.id = item.existing->id;
          catalog.update(r, e, dim);
          ++summary.updated;
        } else {
          r.id = catalog.insert(r, e, dim);
          ++summary.added;
        }
        copies.written(r.id);
        if (copied.empty()) copies.spread(catalog, r, e, dim);
      } else {
        r.id = p.reuse_id;
        catalog.update(r, nullptr, dim);
        ++summary.moved;
      }
    }
    tx.commit();
    done += static_cast<int64_t>(batch->items.size());
    observer.on_progress(done, total);
    if (interrupt_requested() && done < total) {
      pipeline.stop();
      return false;  // what was decoded but not committed is simply done again next time
    }
  }
  pipeline.stop();
  return photos == plan.to_encode.size() || encode_videos(store, model, plan, photos, options, observer, summary);
}

// Files indexed before capture times and sizes were stored (an index upgraded from schema 2) get
// them from their bytes, without the model: only files still there unchanged, and not about to be
// encoded anyway. One transaction per 256 files; a file that cannot be read now keeps counting as
// taken at its mtime and is tried again by the next run. Returns false when interrupted.
bool fill_photo_meta(Catalog& catalog, const IndexPlan& plan, IndexObserver& observer, IndexSummary& summary) {
  std::vector<FileRecord> missing = catalog.files_without_meta();
  if (missing.empty()) return true;
  std::set<std::string> encoding;
  for (const auto& f : plan.to_encode) encoding.insert(f.file.path);
  std::vector<std::pair<int64_t, PhotoMeta>> found;
  observer.on_notice("reading the capture time and size of " + std::to_string(missing.size()) +
                     " file(s) indexed before cnclip stored them (no re-encoding)");
  auto flush = [&] {
    if (found.empty()) return;
    CatalogTransaction tx(catalog);
    for (const auto& [id, meta] : found) catalog.set_photo_meta(id, meta);
    tx.commit();
    summary.filled += static_cast<int64_t>(found.size());
    found.clear();
  };
  for (const auto& f : missing) {
    if (interrupt_requested()) {
      flush();
      return false;
    }
    if (encoding.count(f.path)) continue;
    struct stat st {};
    if (::lstat(f.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != f.size ||
        static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec != f.mtime_ns) {
      continue;  // gone, changed, or unreachable: left to the pass
    }
    auto meta = read_photo_meta_file(f.path, f.mtime_ns);
    if (!meta) continue;
    found.emplace_back(f.id, meta.value());
    if (found.size() == 256) flush();
  }
  flush();
  return true;
}

// Phase 4, after a complete pass: forget files seen to be gone (not moved) and files now excluded,
// and file roots whose file is gone.
void finish_pass(IndexStore& store, const IndexPlan& plan, IndexObserver& observer, IndexSummary& summary) {
  Catalog& catalog = store.catalog();
  if (!plan.vanished.empty() || !plan.excluded.empty() || !plan.pruned_roots.empty() || !plan.superseded.empty()) {
    CatalogTransaction tx(catalog);
    for (const auto& [hash, record] : plan.vanished) {
      catalog.remove(record.id);
      ++summary.removed;
    }
    for (const auto& record : plan.excluded) {
      catalog.remove(record.id);
      ++summary.excluded;
    }
    for (const auto& record : plan.superseded) {
      catalog.remove(record.id);
      ++summary.excluded;
    }
    for (const auto& root : plan.pruned_roots) catalog.remove_root(root);
    tx.commit();
  }
  if (!plan.superseded.empty()) {
    observer.on_notice(std::to_string(plan.superseded.size()) +
                       " indexed RAW file(s) now next to a JPEG of the same name were removed from the index "
                       "(a RAW+JPEG pair is indexed as its JPEG)");
  }
  if (summary.excluded > static_cast<int64_t>(plan.superseded.size())) {
    observer.on_notice(std::to_string(summary.excluded - static_cast<int64_t>(plan.superseded.size())) +
                       " indexed file(s) that their folder's options now exclude were removed from the index");
  }
  // Also replaces a damaged one.
  if (store.ensure_snapshot() && !store.snapshot_fallback().empty()) {
    observer.on_notice("vector snapshot written as flat: " + store.snapshot_fallback());
  }
}

std::string quoted(const std::string& path) {
  std::string out = "'";
  for (char c : path) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string parent_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

bool is_under(const std::string& path, const std::string& root) {
  if (path == root) return true;
  if (root == "/") return !path.empty() && path[0] == '/';
  return path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/';
}

// errno of lstat(path), 0 when it exists; `st` receives its status.
int lstat_errno(const std::string& path, struct stat& st) { return ::lstat(path.c_str(), &st) == 0 ? 0 : errno; }

// Whether a file that lstat reports absent is positively gone: the nearest folder above it that
// exists was listed completely by this walk (so the file, or a folder on its way, is not there).
bool seen_gone(const std::string& path, const std::string& root, const std::set<std::string>& listed) {
  std::string dir = parent_of(path);
  while (true) {
    struct stat st {};
    const int err = lstat_errno(dir, st);
    // A folder listed without what was below it; or something else in the place of a folder, in a
    // folder listed with it.
    if (err == 0) return listed.count(S_ISDIR(st.st_mode) ? dir : parent_of(dir)) > 0;
    if (err != ENOENT && err != ENOTDIR) return false;  // cannot tell
    if (dir == root || dir == "/") return false;        // the root itself is gone: a missing root
    dir = parent_of(dir);
  }
}

}  // namespace

std::vector<IndexTarget> resolve_targets(Catalog& catalog, const IndexOptions& options, bool all_roots) {
  if (options.walk) check_walk_options(*options.walk);
  std::vector<IndexTarget> targets;
  std::unordered_map<std::string, RootRecord> stored;  // by path (many file roots come from `index -`)
  for (auto& r : catalog.root_records()) stored.emplace(r.path, std::move(r));
  std::set<std::string> taken;
  for (const auto& p : options.paths) {
    auto canonical = canonical_path(p);
    if (!canonical) throw Exception(canonical.error());
    IndexTarget t;
    t.path = canonical.value();
    if (!taken.insert(t.path).second) continue;
    struct stat st {};
    t.is_file = !(::stat(t.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode));
    auto known = stored.find(t.path);
    if (known == stored.end() && !t.is_file) {
      // A folder inside an indexed folder root: that root's options say what it holds.
      const RootRecord* owner = nullptr;
      for (const auto& [path, r] : stored) {
        if (!r.is_file && path != t.path && is_under(t.path, path) && (!owner || path.size() > owner->path.size())) {
          owner = &r;
        }
      }
      if (owner) {
        const WalkOptions root_walk = WalkOptions::from_json(owner->options);
        if (options.walk) {
          throw Exception(ErrorCode::kInvalidArgument,
                          t.path + ": inside the indexed folder " + owner->path + ", whose options (" +
                              root_walk.describe() + ") say what all of it holds; give new options with that folder " +
                              "('cnclip index " + quoted(owner->path) +
                              " OPTIONS'), or index this folder without options");
        }
        if (!root_walk.enters(owner->path, t.path)) {
          throw Exception(ErrorCode::kInvalidArgument,
                          t.path + ": inside the indexed folder " + owner->path + ", whose options (" +
                              root_walk.describe() + ") leave it out; to index it, change that folder's options " +
                              "('cnclip index " + quoted(owner->path) + " OPTIONS')");
        }
        t.walk = root_walk;
        t.record = false;
        t.within = owner->path;
        targets.push_back(std::move(t));
        continue;
      }
    }
    const WalkOptions before = known != stored.end() ? WalkOptions::from_json(known->second.options) : WalkOptions{};
    t.walk = options.walk.value_or(before);
    if (known != stored.end() && !known->second.is_file && !t.is_file && t.walk != before) t.replaced = before;
    targets.push_back(std::move(t));
  }
  if (options.paths.empty() || all_roots) {
    const auto first_root = static_cast<std::ptrdiff_t>(targets.size());
    for (const auto& [path, r] : stored) {
      if (taken.insert(path).second) {
        targets.push_back(IndexTarget{path, r.is_file, WalkOptions::from_json(r.options), true, std::nullopt, ""});
      }
    }
    std::sort(targets.begin() + first_root, targets.end(),
              [](const IndexTarget& x, const IndexTarget& y) { return x.path < y.path; });
  }
  // A file given on its own inside a folder that is a root already (with options that take it) is
  // looked at, but not kept as a root of its own.
  std::vector<std::pair<std::string, WalkOptions>> folders;
  for (const auto& [path, r] : stored) {
    if (!r.is_file) folders.emplace_back(path, WalkOptions::from_json(r.options));
  }
  for (const auto& t : targets) {
    if (!t.is_file) folders.emplace_back(t.path, t.walk);
  }
  for (auto& t : targets) {
    if (!t.is_file || stored.count(t.path)) continue;
    for (const auto& [path, walk] : folders) {
      if (walk.holds(path, t.path)) t.record = false;
    }
  }
  return targets;
}

IndexPlan plan_index(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options,
                     bool force) {
  IndexPlan plan;
  std::set<std::string> seen;
  std::set<int64_t> decided;  // entries already classified (nested roots list them twice)
  auto consider = [&](const FoundFile& f, const std::optional<FileRecord>& existing) {
    if (!seen.insert(f.path).second) return;
    if (force) {
      plan.to_encode.push_back(PlannedFile{f, existing});
      return;
    }
    if (existing && existing->size == f.size && existing->mtime_ns == f.mtime_ns) {
      ++plan.unchanged;
      return;
    }
    if (!options.retry_failed) {
      auto failed = catalog.failure(f.path);
      if (failed && failed->size == f.size && failed->mtime_ns == f.mtime_ns) {
        ++plan.failed_before;
        return;
      }
    }
    plan.to_encode.push_back(PlannedFile{f, existing});
  };
  auto fail = [&](SkippedFile s) {
    if (!seen.insert(s.file.path).second) return;
    if (!options.retry_failed && !force) {
      auto failed = catalog.failure(s.file.path);
      if (failed && failed->size == s.file.size && failed->mtime_ns == s.file.mtime_ns) {
        ++plan.failed_before;
        return;
      }
    }
    plan.failures.push_back(std::move(s));
  };
  // Whether some root (of this run, or stored) takes `path` with its options.
  std::vector<IndexTarget> stored_roots;
  for (const auto& r : catalog.root_records()) {
    // A root given in this run is held by its new options only.
    if (std::any_of(targets.begin(), targets.end(),
                    [&](const IndexTarget& t) { return t.record && t.path == r.path; })) {
      continue;
    }
    stored_roots.push_back(IndexTarget{r.path, r.is_file, WalkOptions::from_json(r.options), true, std::nullopt, ""});
  }
  auto held = [&](const std::string& path) {
    auto takes = [&](const IndexTarget& t) { return t.is_file ? t.path == path : t.walk.holds(t.path, path); };
    return std::any_of(targets.begin(), targets.end(), takes) ||
           std::any_of(stored_roots.begin(), stored_roots.end(), takes);
  };

  // Given as a file of its own in this run: indexed even when the RAW+JPEG rule leaves it out of a walk.
  auto file_target = [&](const std::string& path) {
    return std::any_of(targets.begin(), targets.end(),
                       [&](const IndexTarget& t) { return t.is_file && t.path == path; });
  };
  for (const auto& target : targets) {
    if (target.is_file) continue;
    std::vector<FileRecord> known = catalog.files_under(target.path);
    struct stat st {};
    const int err = lstat_errno(target.path, st);
    if (err != 0 || !S_ISDIR(st.st_mode)) {
      ++plan.missing;
      const std::string kept = std::to_string(known.size()) + " entr" + (known.size() == 1 ? "y is" : "ies are");
      if (err == ENOENT || err == ENOTDIR) {
        plan.notices.push_back(target.path + ": folder missing; its " + kept + " kept; 'cnclip remove " +
                               quoted(target.path) + "' drops them");
      } else {
        plan.notices.push_back(target.path + ": cannot look at the folder (" +
                               (err ? std::string(std::strerror(err)) : std::string("not a folder any more")) +
                               "); its " + kept + " kept");
      }
      continue;
    }
    WalkResult walk = walk_folder(target.path, target.walk);
    for (size_t i = 0; i < walk.unlisted.size(); ++i) {
      ++plan.unreadable_folders;
      int64_t below = 0;
      for (const auto& k : known) below += is_under(k.path, walk.unlisted[i]) ? 1 : 0;
      plan.notices.push_back(walk.unlisted_errors[i].message + "; its " + std::to_string(below) +
                             " indexed file(s) are kept");
    }
    if (!walk.links.empty()) {
      plan.links += static_cast<int64_t>(walk.links.size());
      plan.notices.push_back(target.path + ": " + std::to_string(walk.links.size()) +
                             " symbolic link(s) not followed (first: " + walk.links.front() +
                             "); cnclip indexes real paths: index a link's target to include it");
    }
    if (!walk.index_folders.empty()) {
      plan.notices.push_back(target.path + ": " + std::to_string(walk.index_folders.size()) +
                             " cnclip index folder(s) not entered (first: " + walk.index_folders.front() +
                             "): an index's own files, thumbnails included, are not photos to index");
    }
    for (auto& s : walk.skipped) fail(std::move(s));
    plan.paired += static_cast<int64_t>(walk.paired.size());
    const std::unordered_set<std::string> paired(walk.paired.begin(), walk.paired.end());
    std::unordered_map<std::string, size_t> known_by_path;
    for (size_t i = 0; i < known.size(); ++i) known_by_path.emplace(known[i].path, i);
    // The folder now empty (WalkResult::empty) that a gone entry was below, if any.
    auto emptied_above = [&](const std::string& path) -> std::string {
      if (walk.empty.empty()) return "";
      for (std::string dir = parent_of(path); is_under(dir, target.path); dir = parent_of(dir)) {
        if (walk.empty.count(dir)) return dir;
        if (dir == target.path || dir == "/") break;
      }
      return "";
    };
    std::map<std::string, int64_t> emptied;  // empty folder -> entries kept below it
    std::vector<bool> still_there(known.size(), false);
    for (const auto& f : walk.files) {
      auto it = known_by_path.find(f.path);
      if (it != known_by_path.end()) still_there[it->second] = true;
      consider(f, it == known_by_path.end() ? std::nullopt : std::optional<FileRecord>(known[it->second]));
    }
    for (size_t i = 0; i < known.size(); ++i) {
      const FileRecord& k = known[i];
      if (still_there[i] || seen.count(k.path) || !decided.insert(k.id).second) continue;
      if (std::any_of(walk.index_folders.begin(), walk.index_folders.end(),
                      [&](const std::string& d) { return is_under(k.path, d); })) {
        plan.excluded.push_back(k);  // a file of an index folder (a thumbnail), never a photo to keep
        continue;
      }
      if (paired.count(k.path) && !file_target(k.path)) {
        plan.superseded.push_back(k);  // its JPEG is indexed instead (WalkResult::paired)
        continue;
      }
      struct stat kst {};
      const int kerr = lstat_errno(k.path, kst);
      const auto real = kerr == 0 ? canonical_path(k.path) : Result<std::string>(k.path);
      if (kerr == 0 && S_ISREG(kst.st_mode) && real && real.value() != k.path) {
        // Reached only through a link now (a folder on the way was replaced by one): the walk does
        // not follow it (and reported it), so the entry would never be seen again.
        plan.vanished.emplace(k.content_hash, k);
      } else if (kerr == 0 && S_ISREG(kst.st_mode)) {
        if (!held(k.path)) plan.excluded.push_back(k);  // on disk, but no root takes it any more
        // else: below a folder that could not be listed, or another root's: kept
      } else if (kerr == 0) {
        // Now a link, a folder or a special file: not a photo file any more (reported by the walk).
        if (walk.listed.count(parent_of(k.path))) plan.vanished.emplace(k.content_hash, k);
      } else if ((kerr == ENOENT || kerr == ENOTDIR) && seen_gone(k.path, target.path, walk.listed)) {
        const std::string empty_dir = emptied_above(k.path);
        if (!empty_dir.empty()) ++emptied[empty_dir];  // an unmounted share, most often: kept
        else plan.vanished.emplace(k.content_hash, k);
      }
      // else: cannot tell (permissions, I/O error, name too long): kept
    }
    for (const auto& [dir, n] : emptied) {
      ++plan.missing;
      plan.notices.push_back(dir + ": folder empty now (an unmounted drive or share?); its " + std::to_string(n) +
                             " indexed file(s) are kept and counted as missing; if they were deleted, 'cnclip remove " +
                             quoted(dir) + "' drops them");
    }
  }
  for (const auto& target : targets) {
    if (!target.is_file) continue;
    auto existing = catalog.find(target.path);
    struct stat st {};
    const int err = lstat_errno(target.path, st);
    if (err == 0 && S_ISREG(st.st_mode)) {
      consider(FoundFile{target.path, static_cast<int64_t>(st.st_size),
                         static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec},
               existing);
      continue;
    }
    if (err == ENOENT) {
      struct stat pst {};
      if (lstat_errno(parent_of(target.path), pst) == 0 && S_ISDIR(pst.st_mode)) {
        // Deleted: its folder is there without it.
        if (existing && decided.insert(existing->id).second) plan.vanished.emplace(existing->content_hash, *existing);
        plan.pruned_roots.push_back(target.path);
        continue;
      }
      ++plan.missing;
      plan.notices.push_back(target.path + ": file missing, and so is its folder; its entry is kept; 'cnclip remove " +
                             quoted(target.path) + "' drops it");
      continue;
    }
    const Error e = err ? errno_error(target.path, err, "cannot look at file")
                        : Error{ErrorCode::kUnsupportedFormat, target.path + ": not a regular file; not indexed"};
    fail(SkippedFile{FoundFile{target.path, err ? 0 : static_cast<int64_t>(st.st_size),
                               err ? 0 : static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec},
                     e});
  }
  return plan;
}

// From this many entries on, new options may not remove more than half of a root without
// confirmation (below, only all of it is refused: in a folder of a few photos, dropping most by one
// format is an ordinary narrowing).
constexpr int64_t kLargeRoot = 10;

void check_removals(Catalog& catalog, const std::vector<IndexTarget>& targets, const IndexOptions& options) {
  if (options.confirm_removal) return;
  std::vector<IndexTarget> others;  // folder roots after this run, each with the options it will have
  for (const auto& r : catalog.root_records()) {
    if (r.is_file) continue;
    if (std::any_of(targets.begin(), targets.end(),
                    [&](const IndexTarget& t) { return t.record && t.path == r.path; })) {
      continue;
    }
    others.push_back(IndexTarget{r.path, false, WalkOptions::from_json(r.options), true, std::nullopt, ""});
  }
  for (const auto& t : targets) {
    if (!t.is_file && t.record) others.push_back(t);
  }
  for (const auto& t : targets) {
    if (!t.replaced) continue;
    const std::vector<FileRecord> known = catalog.files_under(t.path);
    int64_t going = 0;
    for (const auto& k : known) {
      if (t.walk.holds(t.path, k.path)) continue;
      const bool held_elsewhere = std::any_of(others.begin(), others.end(), [&](const IndexTarget& o) {
        return o.path != t.path && o.walk.holds(o.path, k.path);
      });
      if (!held_elsewhere) ++going;
    }
    const auto total = static_cast<int64_t>(known.size());
    if (going > 0 && (going == total || (total >= kLargeRoot && going * 2 > total))) {
      throw Exception(ErrorCode::kInvalidArgument,
                      t.path + ": the new options (" + t.walk.describe() + ") would remove " +
                          (going == total ? "all " + std::to_string(total)
                                          : std::to_string(going) + " of the " + std::to_string(total)) +
                          " indexed file(s) of this folder (its options were: " + t.replaced->describe() +
                          "); nothing was changed. Check the options, or add --confirm-removal to remove them");
    }
  }
}

IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const BundleManifest& bundle = model.manifest();
  Catalog& catalog = store.catalog();
  IndexSummary summary;

  // With another model, the whole index is encoded again (never two models in one index).
  const bool new_model = options.reindex && !store.model_matches(bundle);
  if (!options.reindex) store.require_model(bundle, options.allow_mixed_precision);

  const std::vector<IndexTarget> targets = resolve_targets(catalog, options, /*all_roots=*/new_model);
  if (new_model) {
    // Every entry must be encoded again from disk; refuse before changing anything if some cannot.
    std::map<std::string, int64_t> unreachable;  // root (or "") -> entries
    for (const auto& f : catalog.files_under("")) {
      const IndexTarget* owner = nullptr;
      for (const auto& t : targets) {
        if (is_under(f.path, t.path) && (!owner || t.path.size() > owner->path.size())) owner = &t;
      }
      struct stat st {};
      if (!owner) ++unreachable[""];
      else if (lstat_errno(owner->path, st) != 0) ++unreachable[owner->path];
    }
    if (!unreachable.empty()) {
      std::string why;
      for (const auto& [root, n] : unreachable) {
        why += (why.empty() ? "" : "; ") + std::to_string(n) + " entries " +
               (root.empty() ? std::string("are under no indexed folder (imported?)")
                             : "are under " + root + ", which is missing");
      }
      throw Exception(ErrorCode::kMismatch,
                      "cannot move the index to the model " + bundle.dir + ": " + why +
                          ". Reconnect the missing folders, or drop those entries with 'cnclip remove PATH', then "
                          "run 'cnclip index --reindex' again (nothing was changed)");
    }
  }
  check_removals(catalog, targets, options);
  for (const auto& t : targets) {
    if (!t.within.empty()) {
      observer.on_notice(t.path + ": inside the indexed folder " + t.within + "; indexed with its options (" +
                         t.walk.describe() + ")");
    }
    if (t.replaced) {
      observer.on_notice(t.path + ": its walk options are replaced (were: " + t.replaced->describe() +
                         "; now: " + t.walk.describe() + ")");
    }
  }

  // First transaction: the roots and the model, before any encoding. With a new model the old
  // embeddings (and remembered failures) go in the same transaction.
  // Skipped when it would change nothing: every commit bumps the generation, and a new generation
  // means a new vector snapshot (2 GB at a million files) for a run that found nothing to do.
  std::vector<RootRecord> roots_to_record;
  {
    std::unordered_map<std::string, RootRecord> stored;
    for (auto& r : catalog.root_records()) stored.emplace(r.path, std::move(r));
    for (const auto& t : targets) {
      struct stat st {};
      if (!t.record || lstat_errno(t.path, st) != 0) continue;
      RootRecord wanted{t.path, t.is_file, t.walk.to_json()};
      auto it = stored.find(t.path);
      // remove_all() below forgets the roots too, so a new model records every one again.
      if (new_model || it == stored.end() || it->second.is_file != wanted.is_file ||
          it->second.options != wanted.options) {
        roots_to_record.push_back(std::move(wanted));
      }
    }
  }
  const auto recorded_fingerprint = catalog.meta("model_fingerprint");
  const bool model_to_record =
      !recorded_fingerprint || (*recorded_fingerprint != bundle.fingerprint && catalog.count() == 0);
  if (new_model || model_to_record || !roots_to_record.empty()) {
    CatalogTransaction tx(catalog);
    if (new_model) catalog.remove_all();
    for (const auto& r : roots_to_record) catalog.set_root(r);
    store.record_model(bundle);
    tx.commit();
  }

  IndexPlan plan = plan_index(catalog, targets, options, /*force=*/options.reindex && !new_model);
  for (const auto& n : plan.notices) observer.on_notice(n);
  summary.unchanged = plan.unchanged;
  summary.failed_before = plan.failed_before;
  summary.missing = plan.missing;
  summary.unreadable_folders = plan.unreadable_folders;
  summary.links = plan.links;
  summary.paired = plan.paired;
  if (!plan.failures.empty()) {
    CatalogTransaction tx(catalog);
    for (const auto& f : plan.failures) {
      observer.on_file_error(f.error);
      ++summary.failed;
      catalog.record_failure(FileRecord{0, f.file.path, f.file.size, f.file.mtime_ns, "", 0}, f.error.message);
    }
    tx.commit();
  }
  observer.on_plan(static_cast<int64_t>(plan.to_encode.size()), summary.unchanged,
                   static_cast<int64_t>(plan.vanished.size() + plan.excluded.size()));

  if (!fill_photo_meta(catalog, plan, observer, summary) ||
      !encode_and_commit(store, model, plan, options, observer, summary)) {
    summary.interrupted = true;
  } else {
    finish_pass(store, plan, observer, summary);
  }
  summary.seconds = seconds_since(start);
  return summary;
}

}  // namespace cnclip
