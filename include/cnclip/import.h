// `cnclip import`: add embeddings computed elsewhere (another machine, a GPU, the benchmark) to an index.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/index_store.h"

namespace cnclip {

struct ImportSummary {
  int64_t added = 0, updated = 0;
};

// Adds (path, embedding) rows computed elsewhere (another machine, a GPU cluster, the benchmark).
// `embeddings` holds paths.size() rows of the bundle's dimension; each is L2-normalized on the way in.
// Paths are made absolute; size and mtime are taken from the file when it exists here (so a later
// `index` of its folder keeps it), else 0 (so a later `index` re-encodes it). Committed in batches;
// the index must hold the same model (or be empty). Throws kMismatch for a wrong dimension.
ImportSummary import_embeddings(IndexStore& store, const BundleManifest& bundle, const std::vector<std::string>& paths,
                                const std::vector<float>& embeddings, bool allow_mixed_precision = false);

}  // namespace cnclip
