#include "cnclip/remove.h"

#include "cnclip/file_walk.h"

namespace cnclip {

void check_remove_paths(const std::vector<std::string>& paths) {
  if (paths.empty()) throw Exception(ErrorCode::kInvalidArgument, "remove: no paths on stdin");
  for (const auto& p : paths) {
    if (p.empty()) throw Exception(ErrorCode::kInvalidArgument, "remove: an empty path names nothing");
  }
}

RemoveSummary remove_paths(IndexStore& store, const std::vector<std::string>& paths) {
  check_remove_paths(paths);
  Catalog& cat = store.catalog();
  RemoveSummary summary;
  {
    CatalogTransaction tx(cat);
    for (const auto& p : paths) {
      const std::string target = canonical_or_absolute(p);
      const int64_t n = cat.remove_under(target);
      cat.remove_root(target);
      cat.forget_failures_under(target);
      if (n == 0) summary.not_found.push_back(p);
      summary.removed += n;
    }
    tx.commit();
  }
  store.ensure_snapshot();
  return summary;
}

}  // namespace cnclip
