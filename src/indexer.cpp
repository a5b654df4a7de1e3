#include "cnclip/indexer.h"

#include <opencv2/core/utility.hpp>
#include <xxhash.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "cnclip/runtime.h"

namespace cnclip {
namespace {

struct WorkItem {
  FoundFile file;
  std::optional<FileRecord> existing;  // set when the file changed since it was indexed
};

struct Outcome {
  enum Kind { kEncoded, kMoved, kFailed } kind = kFailed;
  size_t item = 0;
  std::vector<float> pixels;  // kEncoded: 3*R*R floats
  std::string hash;
  FileRecord moved_from;  // kMoved: the vanished file whose embedding this file takes over
  Error error;
};

std::string content_hash(const std::vector<uint8_t>& bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  char hex[33];
  std::snprintf(hex, sizeof(hex), "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

// Decodes work items on worker threads into a bounded queue, so memory stays bounded whatever the
// folder size and decoding overlaps with the model running on the calling thread.
class DecodePipeline {
 public:
  DecodePipeline(const std::vector<WorkItem>& items, const BundleManifest& bundle, const DecodeOptions& decode,
                 std::unordered_multimap<std::string, FileRecord>& vanished, int threads, size_t capacity)
      : items_(items), norm_(bundle.image), decode_(decode), vanished_(vanished), capacity_(capacity) {
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
  }
  ~DecodePipeline() { stop(); }

  // Next finished outcome; nullopt once every item has been handed out.
  std::optional<Outcome> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty() || delivered_ == items_.size() || stopping_; });
    if (queue_.empty() || stopping_) return std::nullopt;
    Outcome o = std::move(queue_.front());
    queue_.pop_front();
    ++delivered_;
    cv_.notify_all();
    return o;
  }

  // Outcomes not yet handed out by next().
  size_t remaining() {
    std::lock_guard<std::mutex> lock(mu_);
    return items_.size() - delivered_;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) {
      if (w.joinable()) w.join();
    }
  }

  // While a multi-threaded model call runs, decoders wait: LibTorch's OpenMP threads meet at a
  // barrier after every operation, so a decoder taking a core from one of them stalls all of them
  // (measured: ~20% slower model). Single-threaded model workers need no pause.
  void pause() {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = true;
  }
  void resume() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      paused_ = false;
    }
    cv_.notify_all();
  }

 private:
  void work() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !paused_ || stopping_; });
        if (stopping_) return;
      }
      const size_t i = next_item_.fetch_add(1);
      if (i >= items_.size()) return;
      Outcome o = process(i);
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return queue_.size() < capacity_ || stopping_; });
      if (stopping_) return;
      queue_.push_back(std::move(o));
      cv_.notify_all();
    }
  }

  Outcome process(size_t i) {
    Outcome o;
    o.item = i;
    const WorkItem& item = items_[i];
    try {
      auto bytes = read_file_bytes(item.file.path);
      if (!bytes) {
        o.error = bytes.error();
        return o;
      }
      o.hash = content_hash(bytes.value());
      if (!item.existing) {
        std::lock_guard<std::mutex> lock(vanished_mu_);
        auto it = vanished_.find(o.hash);
        if (it != vanished_.end()) {
          o.kind = Outcome::kMoved;
          o.moved_from = it->second;
          vanished_.erase(it);
          return o;
        }
      }
      o.pixels.resize(static_cast<size_t>(3) * norm_.size * norm_.size);
      auto ok = preprocess_image(bytes.value(), item.file.path, norm_, decode_, o.pixels.data());
      if (!ok) {
        o.pixels.clear();
        o.error = ok.error();
        return o;
      }
      o.kind = Outcome::kEncoded;
    } catch (const std::exception& e) {
      o.kind = Outcome::kFailed;
      o.error = Error{ErrorCode::kInternal, item.file.path + ": " + e.what()};
    }
    return o;
  }

  const std::vector<WorkItem>& items_;
  const Normalization norm_;
  const DecodeOptions decode_;
  std::unordered_multimap<std::string, FileRecord>& vanished_;
  std::mutex vanished_mu_;
  const size_t capacity_;
  std::atomic<size_t> next_item_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Outcome> queue_;
  size_t delivered_ = 0;
  bool stopping_ = false;
  bool paused_ = false;
  std::vector<std::thread> workers_;
};

// A batch of outcomes taken from the decode pipeline, with the embeddings of its decoded images
// (in order), ready to be committed by the thread that runs the index.
struct EncodedBatch {
  std::vector<Outcome> outcomes;
  std::vector<float> embeddings;
  std::exception_ptr error;  // the model could not be loaded or failed: ends the run
};

// How the model is spread over the cores while indexing.
struct ModelParallelism {
  int threads = 1;  // compute threads in all
  int workers = 1;  // concurrent model calls, sharing the threads out
  int threads_of(int worker) const { return threads / workers + (worker < threads % workers ? 1 : 0); }
};

// On a CPU, the ViT runs faster as one single-threaded model call per core than as one call over
// all cores: nothing waits at OpenMP barriers, the small attention matmuls run at single-core BLAS
// speed instead of paying for a thread team each, and a decoder taking a core delays one call instead
// of stalling all. Measured with `cnclip-bench image --workers 2` on 2 cores: fp32 ~7% and int8 ~20%
// faster. Each worker holds its own batch of activations, so their number is capped.
ModelParallelism choose_parallelism(const Model& model, int requested_workers) {
  ModelParallelism p;
  p.threads = std::max(1, compute_threads());
  if (requested_workers > 0) {
    p.workers = std::min(requested_workers, p.threads);
  } else if (model.on_cpu()) {
    p.workers = std::min(p.threads, 4);
  }
  return p;
}

// Model workers: each takes the next batch from the decode pipeline, runs the image tower on it with
// its share of the cores, and hands the result to next(). Results may arrive out of order; each is
// committed on its own.
class ModelWorkers {
 public:
  ModelWorkers(DecodePipeline& pipeline, Model& model, std::shared_future<void> tower_loaded,
               ModelParallelism parallelism, int batch_size, size_t floats_per_image)
      : pipeline_(pipeline),
        model_(model),
        tower_loaded_(std::move(tower_loaded)),
        parallelism_(parallelism),
        batch_size_(batch_size),
        floats_per_image_(floats_per_image) {
    for (int w = 0; w < parallelism_.workers; ++w) threads_.emplace_back([this, w] { work(parallelism_.threads_of(w)); });
  }
  ~ModelWorkers() { stop(); }

  // The next encoded batch; nullopt once every outcome has been taken.
  std::optional<EncodedBatch> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !results_.empty() || finished_ == parallelism_.workers; });
    if (results_.empty()) return std::nullopt;
    EncodedBatch b = std::move(results_.front());
    results_.pop_front();
    cv_.notify_all();
    return b;
  }

  // Abandons what is not yet encoded; waits for model calls in progress to end.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    pipeline_.stop();
    bool joined = false;
    for (auto& t : threads_) {
      if (t.joinable()) {
        t.join();
        joined = true;
      }
    }
    // The workers' setting is also LibTorch's default for threads started later: give it back.
    if (joined) set_compute_threads(parallelism_.threads);
  }

 private:
  void work(int threads) {
    set_compute_threads(threads);
    std::shared_future<void> tower_loaded = tower_loaded_;  // a copy per thread: get() is not shared-safe
    const bool pause_decoders = parallelism_.workers == 1 && threads > 1 && model_.on_cpu();
    for (;;) {
      EncodedBatch b;
      size_t tensors = 0;
      // Near the end, the remaining images are shared out, so that no core idles while another
      // finishes a full batch alone.
      const size_t share = (pipeline_.remaining() + parallelism_.workers - 1) / parallelism_.workers;
      const size_t target = std::clamp<size_t>(share, 1, batch_size_);
      // Moves and failures need no model: a batch ends at `target` images or 4 x batch_size outcomes.
      while (tensors < target && b.outcomes.size() < static_cast<size_t>(batch_size_) * 4) {
        auto o = pipeline_.next();
        if (!o) break;
        if (o->kind == Outcome::kEncoded) ++tensors;
        b.outcomes.push_back(std::move(*o));
      }
      if (b.outcomes.empty()) break;
      if (tensors > 0) {
        try {
          std::vector<float> pixels;
          pixels.reserve(tensors * floats_per_image_);
          for (auto& o : b.outcomes) {
            if (o.kind != Outcome::kEncoded) continue;
            pixels.insert(pixels.end(), o.pixels.begin(), o.pixels.end());
            std::vector<float>().swap(o.pixels);
          }
          tower_loaded.get();
          if (pause_decoders) pipeline_.pause();
          b.embeddings = model_.encode_images(pixels.data(), static_cast<int>(tensors));
          if (pause_decoders) pipeline_.resume();
        } catch (...) {
          if (pause_decoders) pipeline_.resume();
          b.error = std::current_exception();
        }
      }
      std::unique_lock<std::mutex> lock(mu_);
      // A bounded hand-off: a worker does not run ahead of the commits by more than one batch.
      cv_.wait(lock, [&] { return results_.size() < static_cast<size_t>(parallelism_.workers) || stopping_; });
      if (stopping_) break;
      results_.push_back(std::move(b));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++finished_;
    cv_.notify_all();
  }

  DecodePipeline& pipeline_;
  Model& model_;
  std::shared_future<void> tower_loaded_;
  const ModelParallelism parallelism_;
  const int batch_size_;
  const size_t floats_per_image_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EncodedBatch> results_;
  int finished_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

IndexSummary run_index(IndexStore& store, Model& model, const IndexOptions& options, IndexObserver& observer) {
  const auto start = std::chrono::steady_clock::now();
  const BundleManifest& bundle = model.manifest();
  const int dim = bundle.embedding_dim;
  Catalog& catalog = store.catalog();
  IndexSummary summary;

  if (options.reindex) {
    CatalogTransaction tx(catalog);
    catalog.remove_all();
    store.record_model(bundle);
    tx.commit();
  } else {
    store.require_model(bundle, options.allow_mixed_precision);
  }

  // What to look at: folders (walked, and pruned of vanished files) and single files.
  std::vector<std::string> folders, files;
  const bool from_roots = options.paths.empty();
  for (const auto& p : from_roots ? catalog.roots() : options.paths) {
    auto canonical = canonical_path(p);
    if (!canonical) {
      if (!from_roots) throw Exception(canonical.error());
      folders.push_back(p);  // an indexed folder that is gone entirely: its files go too
      continue;
    }
    struct stat st {};
    if (::stat(canonical.value().c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      folders.push_back(canonical.value());
    } else {
      files.push_back(canonical.value());
    }
  }

  // Plan: compare what is on disk with the catalog.
  std::vector<WorkItem> work;
  std::unordered_multimap<std::string, FileRecord> vanished;  // by content hash
  std::set<std::string> seen;
  auto consider = [&](const FoundFile& f, const std::optional<FileRecord>& existing) {
    if (!seen.insert(f.path).second) return;
    if (existing && existing->size == f.size && existing->mtime_ns == f.mtime_ns) {
      ++summary.unchanged;
      return;
    }
    if (!options.retry_failed) {
      auto failed = catalog.failure(f.path);
      if (failed && failed->size == f.size && failed->mtime_ns == f.mtime_ns) {
        ++summary.failed_before;
        return;
      }
    }
    work.push_back(WorkItem{f, existing});
  };
  for (const auto& folder : folders) {
    std::vector<FoundFile> found;
    if (::access(folder.c_str(), F_OK) == 0) {
      walk_folder(folder, options.walk, found, [&](const Error& e) { observer.on_file_error(e); });
    }
    std::vector<FileRecord> known = catalog.files_under(folder);
    std::unordered_map<std::string, size_t> known_by_path;
    for (size_t i = 0; i < known.size(); ++i) known_by_path.emplace(known[i].path, i);
    std::vector<bool> still_there(known.size(), false);
    for (const auto& f : found) {
      auto it = known_by_path.find(f.path);
      if (it != known_by_path.end()) still_there[it->second] = true;
      consider(f, it == known_by_path.end() ? std::nullopt : std::optional<FileRecord>(known[it->second]));
    }
    for (size_t i = 0; i < known.size(); ++i) {
      // Files excluded by this run's options but still on disk are left alone.
      if (!still_there[i] && !seen.count(known[i].path) && ::access(known[i].path.c_str(), F_OK) != 0) {
        vanished.emplace(known[i].content_hash, known[i]);
      }
    }
  }
  for (const auto& path : files) {
    auto f = stat_file(path);
    if (!f) {
      observer.on_file_error(f.error());
      ++summary.failed;
      continue;
    }
    consider(f.value(), catalog.find(path));
  }
  observer.on_plan(static_cast<int64_t>(work.size()), summary.unchanged, static_cast<int64_t>(vanished.size()));

  // Encode in batches; each batch is committed in one transaction.
  const int threads = options.decode_threads > 0
                          ? options.decode_threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int batch_size = std::max(1, options.batch_size);
  cv::setNumThreads(0);  // one decode per worker thread; OpenCV's own threads would oversubscribe
  bool model_recorded = false;
  int64_t done = 0;
  if (!work.empty()) {
    // Load the image tower (hundreds of MB) while the first images are decoded.
    std::shared_future<void> tower_loaded =
        std::async(std::launch::async, [&model] { model.load_image_tower(); }).share();
    struct WaitOnExit {  // the loader uses `model`: never leave it running
      std::shared_future<void>& f;
      ~WaitOnExit() { f.wait(); }
    } wait_loader{tower_loaded};
    const ModelParallelism parallelism = choose_parallelism(model, options.model_workers);
    DecodePipeline pipeline(work, bundle, options.decode, vanished, std::min<int>(threads, static_cast<int>(work.size())),
                            // room to decode ahead while the image tower loads (~600 KB per image)
                            std::max<size_t>(static_cast<size_t>(batch_size) * 2 * parallelism.workers, 64));
    ModelWorkers workers(pipeline, model, tower_loaded, parallelism, batch_size,
                         static_cast<size_t>(3) * bundle.image.size * bundle.image.size);
    bool stopped_early = false;
    while (auto batch = workers.next()) {
      if (batch->error) {
        workers.stop();
        std::rethrow_exception(batch->error);
      }
      CatalogTransaction tx(catalog);
      if (!model_recorded) {
        store.record_model(bundle);
        model_recorded = true;
      }
      size_t row = 0;
      for (const auto& o : batch->outcomes) {
        const WorkItem& item = work[o.item];
        if (o.kind == Outcome::kFailed) {
          observer.on_file_error(o.error);
          ++summary.failed;
          catalog.record_failure(FileRecord{0, item.file.path, item.file.size, item.file.mtime_ns, "", 0}, o.error.message);
          continue;
        }
        catalog.forget_failure(item.file.path);
        FileRecord r{0, item.file.path, item.file.size, item.file.mtime_ns, o.hash, now_seconds()};
        if (o.kind == Outcome::kEncoded) {
          const float* e = &batch->embeddings[row++ * static_cast<size_t>(dim)];
          if (item.existing) {
            r.id = item.existing->id;
            catalog.update(r, e, dim);
            ++summary.updated;
          } else {
            catalog.insert(r, e, dim);
            ++summary.added;
          }
        } else {
          r.id = o.moved_from.id;
          catalog.update(r, nullptr, dim);
          ++summary.moved;
        }
      }
      tx.commit();
      done += static_cast<int64_t>(batch->outcomes.size());
      observer.on_progress(done, static_cast<int64_t>(work.size()));
      if (interrupt_requested() && done < static_cast<int64_t>(work.size())) {
        stopped_early = true;
        break;
      }
    }
    workers.stop();
    summary.interrupted = stopped_early;
    if (summary.interrupted) {
      // What was decoded but not committed is simply done again next time.
      summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return summary;
    }
  }

  // A complete pass: forget vanished files that were not moved, remember the folders.
  const auto known_roots = catalog.roots();
  bool new_roots = false;
  for (const auto& f : folders) {
    if (std::find(known_roots.begin(), known_roots.end(), f) == known_roots.end()) new_roots = true;
  }
  if (!vanished.empty() || new_roots) {
    CatalogTransaction tx(catalog);
    for (const auto& [hash, record] : vanished) {
      catalog.remove(record.id);
      ++summary.removed;
    }
    for (const auto& f : folders) {
      if (::access(f.c_str(), F_OK) == 0) catalog.add_root(f);
      else catalog.remove_root(f);
    }
    store.record_model(bundle);
    tx.commit();
  }
  struct stat st {};
  if (::stat(store.snapshot_path().c_str(), &st) != 0) store.write_snapshot();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return summary;
}

ImportSummary import_embeddings(IndexStore& store, const BundleManifest& bundle, const std::vector<std::string>& paths,
                                const std::vector<float>& embeddings, bool allow_mixed_precision) {
  const int dim = bundle.embedding_dim;
  if (embeddings.size() != paths.size() * static_cast<size_t>(dim)) {
    throw Exception(ErrorCode::kMismatch, "embeddings have dimension " +
                                              std::to_string(paths.empty() ? 0 : embeddings.size() / paths.size()) +
                                              ", the model " + bundle.dir + " has " + std::to_string(dim));
  }
  store.require_model(bundle, allow_mixed_precision);
  Catalog& catalog = store.catalog();
  ImportSummary summary;
  constexpr size_t kBatch = 20000;
  std::vector<float> row(static_cast<size_t>(dim));
  for (size_t start = 0; start < paths.size(); start += kBatch) {
    CatalogTransaction tx(catalog);
    store.record_model(bundle);
    for (size_t i = start; i < std::min(paths.size(), start + kBatch); ++i) {
      const float* e = &embeddings[i * dim];
      double norm = 0;
      for (int d = 0; d < dim; ++d) norm += double(e[d]) * e[d];
      if (!(norm > 0) || !std::isfinite(norm)) {
        throw Exception(ErrorCode::kCorrupt, paths[i] + ": embedding is zero or not finite");
      }
      for (int d = 0; d < dim; ++d) row[d] = static_cast<float>(e[d] / std::sqrt(norm));
      std::string path = std::filesystem::absolute(paths[i]).lexically_normal().string();
      FileRecord r{0, path, 0, 0, "", now_seconds()};
      if (auto canonical = canonical_path(path)) {
        r.path = canonical.value();
        if (auto st = stat_file(r.path)) {
          r.size = st.value().size;
          r.mtime_ns = st.value().mtime_ns;
        }
      }
      if (auto existing = catalog.find(r.path)) {
        r.id = existing->id;
        catalog.update(r, row.data(), dim);
        ++summary.updated;
      } else {
        catalog.insert(r, row.data(), dim);
        ++summary.added;
      }
    }
    tx.commit();
  }
  store.write_snapshot();
  return summary;
}

}  // namespace cnclip
