// Internal: the machinery that turns many image files into embeddings, shared by `cnclip index`
// (indexer.cpp) and embed_image_files (embed-image). Decoder threads prepare items into a bounded
// queue; model workers take batches from it and run the image tower; the owner takes finished
// batches with next(), in whatever order they finish.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/encode_options.h"
#include "cnclip/error.h"
#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip::detail {

// One input item, made ready for the model by the caller's `prepare` function.
struct PreparedItem {
  enum Kind {
    kPixels,   // pixels hold 3*R*R normalized floats: encode them
    kNoModel,  // nothing to encode (e.g. a moved file that keeps its embedding)
    kFailed,   // `error` says why
  } kind = kFailed;
  size_t index = 0;
  std::string label;  // names the item in messages (prepare_image: the path)
  std::vector<float> pixels;
  Error error;
  std::string content_hash;  // set by callers that need it (index: recognising moved files)
  int64_t reuse_id = 0;      // kNoModel from index: the catalog id whose embedding this file takes over
};

// The item for an image file's bytes: kPixels, or kFailed with an error naming `path` (also for an
// exception from the decoder).
PreparedItem prepare_image(const std::vector<uint8_t>& bytes, const std::string& path, const Normalization& norm,
                           const DecodeOptions& decode);

struct EncodedBatch {
  // An image the model returned an unusable embedding for (NaN, zero, ...: Model::encode_images)
  // comes back kFailed, its error naming the item's label; it has no row in `embeddings`.
  std::vector<PreparedItem> items;
  std::vector<float> embeddings;  // one row per kPixels item, in order
  std::exception_ptr error;       // the model could not be loaded or failed: ends the run
};

// Owns its threads; the Model must outlive it and not be used elsewhere meanwhile. `prepare` runs on
// decoder threads, once per index in [0, count), concurrently: it must be thread-safe, and should
// catch its own exceptions (one that escapes becomes a kFailed item). The image tower starts loading
// at construction. Destruction (or stop) abandons what is not finished and joins every thread, waiting
// for model calls in progress.
class EncodePipeline {
 public:
  EncodePipeline(Model& model, size_t count, std::function<PreparedItem(size_t)> prepare, const EncodeOptions& options);
  ~EncodePipeline();
  EncodePipeline(const EncodePipeline&) = delete;
  EncodePipeline& operator=(const EncodePipeline&) = delete;

  // The next finished batch (at most options.batch_size images, or 4 x batch_size items when most need no
  // model); nullopt once every item has been delivered.
  std::optional<EncodedBatch> next();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cnclip::detail
