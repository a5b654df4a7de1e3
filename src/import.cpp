#include "cnclip/import.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>

#include "cnclip/file_walk.h"

namespace cnclip {
namespace {

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

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
