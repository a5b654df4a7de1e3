#include "cnclip/remove.h"

#include <filesystem>

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
      auto canonical = canonical_path(p);
      std::string target = canonical ? canonical.value() : std::filesystem::absolute(p).lexically_normal().string();
      while (target.size() > 1 && target.back() == '/') target.pop_back();
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
