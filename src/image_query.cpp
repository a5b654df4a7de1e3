#include "cnclip/image_query.h"

namespace cnclip {

std::vector<float> stored_embedding_if_unchanged(Catalog& catalog, const std::string& canonical, const FoundFile& now,
                                                 int dim) {
  auto rec = catalog.find(canonical);
  if (!rec || rec->size != now.size || rec->mtime_ns != now.mtime_ns) return {};
  std::vector<float> e = catalog.embedding(rec->id);
  if (e.size() != static_cast<size_t>(dim)) return {};
  return e;
}

}  // namespace cnclip
