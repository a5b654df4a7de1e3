// Embeddings of many image files at once, computed the way `cnclip index` computes them: decoder
// threads beside one model worker per core. For `cnclip embed-image` and library users.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "cnclip/encode_options.h"
#include "cnclip/error.h"
#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip {

struct EmbedFilesOptions {
  DecodeOptions decode;
  EncodeOptions encode;  // batch size, decoder threads, model workers (defaults documented there)
};

// Calls on_result(i, embedding, nullptr) with model.dim() floats, or on_result(i, nullptr, &error)
// for a file that cannot be read or decoded or whose embedding the model check refused (see
// Model::encode_images: a damaged bundle), once for each path, in the order of `paths`, on the
// calling thread. Throws Exception when the model cannot be loaded or fails; results already
// delivered stand.
void embed_image_files(Model& model, const std::vector<std::string>& paths, const EmbedFilesOptions& options,
                       const std::function<void(size_t index, const float* embedding, const Error* error)>& on_result);

}  // namespace cnclip
