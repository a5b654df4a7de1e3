#include "cnclip/embed_files.h"

#include <map>

#include "cnclip/image.h"
#include "encode_pipeline.h"

namespace cnclip {

void embed_image_files(Model& model, const std::vector<std::string>& paths, const EmbedFilesOptions& options,
                       const std::function<void(size_t, const float*, const Error*)>& on_result) {
  if (paths.empty()) return;
  const Normalization norm = model.manifest().image;
  const size_t dim = static_cast<size_t>(model.dim());
  auto prepare = [&](size_t i) {
    auto bytes = read_file_bytes(paths[i]);
    if (!bytes) {
      detail::PreparedItem failed;
      failed.error = bytes.error();
      return failed;
    }
    return detail::prepare_image(bytes.value(), paths[i], norm, options.decode);
  };
  detail::EncodePipeline pipeline(model, paths.size(), prepare, options.encode);
  // Batches finish out of order; results wait here until every earlier one has been delivered. The
  // pipeline's bounded queues keep this small.
  struct Result {
    std::vector<float> embedding;
    Error error;
  };
  std::map<size_t, Result> waiting;
  size_t next = 0;
  while (auto batch = pipeline.next()) {
    if (batch->error) {
      pipeline.stop();
      std::rethrow_exception(batch->error);
    }
    size_t row = 0;
    for (auto& p : batch->items) {
      Result& r = waiting[p.index];
      if (p.kind == detail::PreparedItem::kPixels) {
        const float* e = &batch->embeddings[row++ * dim];
        r.embedding.assign(e, e + dim);
      } else {
        r.error = std::move(p.error);
      }
    }
    for (auto it = waiting.begin(); it != waiting.end() && it->first == next; it = waiting.erase(it), ++next) {
      if (it->second.embedding.empty()) {
        on_result(next, nullptr, &it->second.error);
      } else {
        on_result(next, it->second.embedding.data(), nullptr);
      }
    }
  }
}

}  // namespace cnclip
