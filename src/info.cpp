#include "cnclip/info.h"

#include <algorithm>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cnclip/file_walk.h"
#include "cnclip/output.h"

namespace cnclip {
namespace {

std::string iso_time(int64_t t) {
  char buf[32];
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

IndexInfo index_info(IndexStore& store, const Searcher* loaded) {
  Catalog& cat = store.catalog();
  IndexInfo info;
  info.index = canonical_or_absolute(store.dir());
  info.model_fingerprint = cat.meta("model_fingerprint").value_or("");
  info.model_architecture = cat.meta("model_architecture").value_or("");
  info.model_precision = cat.meta("model_precision").value_or("");
  info.embedding_dim = store.embedding_dim();
  info.files = cat.count();
  std::unique_ptr<VectorIndex> own;
  VectorsOrigin own_origin;
  if (!loaded) own = store.search_vectors(false, &own_origin);
  const VectorIndex& vectors = loaded ? loaded->vectors() : *own;
  const VectorsOrigin& origin = loaded ? loaded->origin() : own_origin;
  info.vectors = vectors.size();
  info.vectors_setting = store.vector_spec().text;
  if (origin.snapshot_generation >= 0) {
    info.snapshot_type = vectors.type();
    info.snapshot_search_parameter = vectors.search_parameter();
    info.snapshot_changed_since = origin.changed_since;
  }
  info.snapshot_note = store.standing_snapshot_fallback();
  info.snapshot_problem = origin.problem;
  info.catalog_page_bytes = cat.page_bytes();
  for (auto& root : cat.root_records()) {
    info.folders.push_back(std::move(root.path));
    info.folder_is_file.push_back(root.is_file);
  }
  info.disk_bytes = store.disk_bytes();
  const int64_t updated = std::stoll(cat.meta("updated_at").value_or("0"));
  info.updated_at = updated ? iso_time(updated) : "";
  return info;
}

IndexInfo read_index_info(const std::string& dir) {
  auto store = IndexStore::open(dir, IndexAccess::kRead);
  store->catalog().check();
  return index_info(*store);
}

IndexInfo empty_index_info(const std::string& dir) {
  IndexInfo info;
  info.index = canonical_or_absolute(dir);
  return info;
}

nlohmann::ordered_json index_info_json(const IndexInfo& info) {
  nlohmann::ordered_json out;
  set_string_field(out, "index", info.index);
  out["model_fingerprint"] = info.model_fingerprint;
  out["model_architecture"] = info.model_architecture;
  out["model_precision"] = info.model_precision;
  out["embedding_dim"] = info.embedding_dim;
  out["files"] = info.files;
  out["vectors"] = info.vectors;
  out["folders"] = info.folders;
  bool any = false;
  nlohmann::ordered_json bytes = nlohmann::ordered_json::array();
  for (const auto& r : info.folders) {
    nlohmann::ordered_json one;
    set_string_field(one, "f", r);
    any = any || one.contains("f_bytes");
    bytes.push_back(hex_encode(r));
  }
  if (any) out["folders_bytes"] = bytes;
  // Which roots are single files (`cnclip index photo.jpg`), only when there are any: an index of
  // folders alone prints what it printed before.
  if (std::find(info.folder_is_file.begin(), info.folder_is_file.end(), true) != info.folder_is_file.end()) {
    nlohmann::ordered_json kinds = nlohmann::ordered_json::array();
    for (const bool is_file : info.folder_is_file) kinds.push_back(is_file ? "file" : "folder");
    out["folders_kind"] = kinds;
  }
  out["disk_bytes"] = info.disk_bytes;
  out["updated_at"] = info.updated_at;
  out["vectors_setting"] = info.vectors_setting;
  if (info.snapshot_type.empty()) {
    out["snapshot"] = nullptr;
  } else {
    out["snapshot"] = {{"type", info.snapshot_type},
                       {"search_parameter", info.snapshot_search_parameter},
                       {"changed_since", info.snapshot_changed_since}};
  }
  out["snapshot_note"] = info.snapshot_note;
  set_string_field(out, "snapshot_problem", info.snapshot_problem);
  out["catalog_page_bytes"] = info.catalog_page_bytes;
  return out;
}

}  // namespace cnclip
