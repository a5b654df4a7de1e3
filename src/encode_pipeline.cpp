#include "encode_pipeline.h"

#include <opencv2/core/utility.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include "cnclip/image.h"

namespace cnclip::detail {
namespace {

// Prepares items on decoder threads into a bounded queue, so memory stays bounded whatever the
// number of items, and decoding runs ahead of the model.
class DecodeQueue {
 public:
  DecodeQueue(size_t count, std::function<PreparedItem(size_t)> prepare, int threads, size_t capacity)
      : count_(count), prepare_(std::move(prepare)), capacity_(capacity) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this] { work(); });
  }
  ~DecodeQueue() { stop(); }

  // The next prepared item; nullopt once every item has been handed out, or after stop().
  std::optional<PreparedItem> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !queue_.empty() || delivered_ == count_ || stopping_; });
    if (queue_.empty() || stopping_) return std::nullopt;
    PreparedItem item = std::move(queue_.front());
    queue_.pop_front();
    ++delivered_;
    cv_.notify_all();
    return item;
  }

  // Items not yet handed out by next().
  size_t remaining() {
    std::lock_guard<std::mutex> lock(mu_);
    return count_ - delivered_;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
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
      const size_t i = next_index_.fetch_add(1);
      if (i >= count_) return;
      PreparedItem item;
      try {
        item = prepare_(i);
      } catch (const std::exception& e) {
        item = PreparedItem{};
        item.error = Error{ErrorCode::kInternal, std::string("preparing an image: ") + e.what()};
      }
      item.index = i;
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return queue_.size() < capacity_ || stopping_; });
      if (stopping_) return;
      queue_.push_back(std::move(item));
      cv_.notify_all();
    }
  }

  const size_t count_;
  const std::function<PreparedItem(size_t)> prepare_;
  const size_t capacity_;
  std::atomic<size_t> next_index_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<PreparedItem> queue_;
  size_t delivered_ = 0;
  bool stopping_ = false;
  bool paused_ = false;
  std::vector<std::thread> threads_;
};

// Model workers: each takes the next batch from the decode queue, runs the image tower on it with
// its share of the cores, and hands the result to next().
class ModelWorkers {
 public:
  ModelWorkers(DecodeQueue& queue, Model& model, std::shared_future<void> tower_loaded, ModelParallelism parallelism,
               int batch_size)
      : queue_(queue),
        model_(model),
        tower_loaded_(std::move(tower_loaded)),
        parallelism_(parallelism),
        batch_size_(batch_size) {
    for (int w = 0; w < parallelism_.workers; ++w)
      threads_.emplace_back([this, w] { work(parallelism_.threads_of(w)); });
  }
  ~ModelWorkers() { stop(); }

  std::optional<EncodedBatch> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !results_.empty() || finished_ == parallelism_.workers; });
    if (results_.empty()) return std::nullopt;
    EncodedBatch b = std::move(results_.front());
    results_.pop_front();
    cv_.notify_all();
    return b;
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    queue_.stop();
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
      size_t images = 0;
      // Near the end, the remaining items are shared out, so that no core idles while another
      // finishes a full batch alone.
      const size_t share = (queue_.remaining() + parallelism_.workers - 1) / parallelism_.workers;
      const size_t target = std::clamp<size_t>(share, 1, batch_size_);
      while (images < target && b.items.size() < static_cast<size_t>(batch_size_) * 4) {
        auto item = queue_.next();
        if (!item) break;
        if (item->kind == PreparedItem::kPixels) ++images;
        b.items.push_back(std::move(*item));
      }
      if (b.items.empty()) break;
      if (images > 0) {
        try {
          std::vector<float> pixels;
          for (auto& item : b.items) {
            if (item.kind != PreparedItem::kPixels) continue;
            pixels.insert(pixels.end(), item.pixels.begin(), item.pixels.end());
            std::vector<float>().swap(item.pixels);
          }
          tower_loaded.get();
          if (pause_decoders) queue_.pause();
          RowErrors row_errors;
          b.embeddings = model_.encode_images(pixels.data(), static_cast<int>(images), &row_errors);
          if (pause_decoders) queue_.resume();
          drop_unusable_rows(b, row_errors);
        } catch (...) {
          if (pause_decoders) queue_.resume();
          b.error = std::current_exception();
        }
      }
      std::unique_lock<std::mutex> lock(mu_);
      // A bounded hand-off: a worker does not run ahead of its consumer by more than one batch.
      cv_.wait(lock, [&] { return results_.size() < static_cast<size_t>(parallelism_.workers) || stopping_; });
      if (stopping_) break;
      results_.push_back(std::move(b));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++finished_;
    cv_.notify_all();
  }

  // Items whose embedding the model check refused become kFailed, and their rows leave the batch.
  void drop_unusable_rows(EncodedBatch& b, const RowErrors& row_errors) {
    const size_t dim = static_cast<size_t>(model_.dim());
    size_t row = 0, kept = 0;
    for (auto& item : b.items) {
      if (item.kind != PreparedItem::kPixels) continue;
      if (const auto& error = row_errors[row]) {
        item.kind = PreparedItem::kFailed;
        item.error = Error{error->code, (item.label.empty() ? "item " + std::to_string(item.index + 1) : item.label) +
                                            ": " + error->message};
      } else {
        if (kept != row) std::copy_n(&b.embeddings[row * dim], dim, &b.embeddings[kept * dim]);
        ++kept;
      }
      ++row;
    }
    b.embeddings.resize(kept * dim);
  }

  DecodeQueue& queue_;
  Model& model_;
  std::shared_future<void> tower_loaded_;
  const ModelParallelism parallelism_;
  const int batch_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EncodedBatch> results_;
  int finished_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace

PreparedItem prepare_image(const std::vector<uint8_t>& bytes, const std::string& path, const Normalization& norm,
                           const DecodeOptions& decode) {
  PreparedItem p;
  p.label = path;
  try {
    p.pixels.resize(static_cast<size_t>(3) * norm.size * norm.size);
    auto ok = preprocess_image(bytes, path, norm, decode, p.pixels.data());
    if (ok) {
      p.kind = PreparedItem::kPixels;
      return p;
    }
    p.error = ok.error();
  } catch (const std::exception& e) {
    p.error = Error{ErrorCode::kInternal, path + ": " + e.what()};
  }
  p.kind = PreparedItem::kFailed;
  p.pixels.clear();
  return p;
}

struct EncodePipeline::Impl {
  // Declared first, destroyed last: the loader uses the Model, so it is always waited for.
  std::shared_future<void> tower_loaded;
  struct WaitOnExit {
    std::shared_future<void>& f;
    ~WaitOnExit() {
      if (f.valid()) f.wait();
    }
  } wait_loader{tower_loaded};
  std::unique_ptr<DecodeQueue> queue;
  std::unique_ptr<ModelWorkers> workers;
};

EncodePipeline::EncodePipeline(Model& model, size_t count, std::function<PreparedItem(size_t)> prepare,
                               const EncodeOptions& options)
    : impl_(std::make_unique<Impl>()) {
  // Load the image tower (hundreds of MB) while the first images are decoded; with nothing to encode
  // (an index run that found no new or changed file) not at all, nor LibTorch with it (model.h).
  if (count > 0) {
    impl_->tower_loaded = std::async(std::launch::async, [&model] { model.load_image_tower(); }).share();
  } else {
    std::promise<void> nothing_to_load;
    nothing_to_load.set_value();
    impl_->tower_loaded = nothing_to_load.get_future().share();
  }
  const ModelParallelism parallelism = choose_parallelism(compute_threads(), model.on_cpu(), options.model_workers);
  const int batch_size = std::max(1, options.batch_size);
  const int decode_threads = options.decode_threads > 0
                                 ? options.decode_threads
                                 : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cv::setNumThreads(0);  // one decode per decoder thread; OpenCV's own threads would oversubscribe
  impl_->queue = std::make_unique<DecodeQueue>(
      count, std::move(prepare), static_cast<int>(std::min<size_t>(decode_threads, std::max<size_t>(count, 1))),
      // room to decode ahead while the image tower loads (~600 KB per ViT-B-16 image)
      std::max<size_t>(static_cast<size_t>(batch_size) * 2 * parallelism.workers, 64));
  impl_->workers = std::make_unique<ModelWorkers>(*impl_->queue, model, impl_->tower_loaded, parallelism, batch_size);
}

EncodePipeline::~EncodePipeline() { stop(); }

std::optional<EncodedBatch> EncodePipeline::next() { return impl_->workers->next(); }

void EncodePipeline::stop() { impl_->workers->stop(); }  // which stops the decode queue too

}  // namespace cnclip::detail
