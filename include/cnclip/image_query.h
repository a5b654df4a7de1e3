// Query images that are already indexed: their stored embedding stands in for running the image
// tower, for search-image (local or routed through `cnclip serve`) and serve's "similar".
#pragma once

#include <string>
#include <vector>

#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"

namespace cnclip {

// The embedding the catalog holds for `canonical` when that file is indexed and unchanged since (the
// size and mtime in `now`, from stat_file, equal the recorded ones) and has `dim` values; else empty
// (not indexed, changed, or of another dimension): the caller then encodes the image. Throws what
// the catalog throws (kCorrupt on damage).
std::vector<float> stored_embedding_if_unchanged(Catalog& catalog, const std::string& canonical, const FoundFile& now,
                                                 int dim);

}  // namespace cnclip
