#include "cnclip/dups.h"

#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/utils/distances.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>
#include <unordered_set>

namespace cnclip {

std::vector<DupGroup> find_duplicates(IndexStore& store, const DupsOptions& options) {
  if (!std::isfinite(options.threshold)) {
    throw Exception(ErrorCode::kInvalidArgument, "the duplicate threshold must be a finite number");
  }
  std::unique_ptr<VectorIndex> vectors = store.load_vectors();
  std::unordered_map<int64_t, FileRecord> files;
  for (auto& r : store.catalog().files_at_or_under(options.under)) files.emplace(r.id, std::move(r));
  const int dim = vectors->dim();

  // Files that have a vector, in id order.
  std::vector<std::pair<int64_t, int64_t>> order;  // (id, position in `vectors`)
  for (int64_t i = 0; i < vectors->size(); ++i) {
    if (files.count(vectors->ids()[i])) order.emplace_back(vectors->ids()[i], i);
  }
  std::sort(order.begin(), order.end());

  std::vector<DupGroup> groups;
  // 1. Exact copies: the same content hash.
  std::map<std::string, std::vector<int64_t>> by_hash;
  for (const auto& [id, pos] : order) {
    const std::string& h = files.at(id).content_hash;
    if (!h.empty()) by_hash[h].push_back(id);
  }
  std::unordered_set<int64_t> copies;                                  // members of an exact group after its first
  std::unordered_map<int64_t, const std::vector<int64_t>*> copies_of;  // an exact group's first -> the group
  for (const auto& [hash, ids] : by_hash) {
    if (ids.size() < 2) continue;
    DupGroup g;
    g.exact = true;
    for (int64_t id : ids) {
      g.ids.push_back(id);
      g.paths.push_back(files.at(id).path);
      g.scores.push_back(1.0f);
      if (id != ids.front()) copies.insert(id);
    }
    copies_of.emplace(ids.front(), &ids);
    groups.push_back(std::move(g));
  }
  std::sort(groups.begin(), groups.end(), [](const DupGroup& a, const DupGroup& b) { return a.ids[0] < b.ids[0]; });
  // A file whose exact group joins a near group: that group takes its copies too (each file is in one
  // group only), and the exact group is dropped.
  std::unordered_set<int64_t> absorbed;
  auto add_member = [&](DupGroup& g, int64_t id, float score) {
    g.ids.push_back(id);
    g.paths.push_back(files.at(id).path);
    g.scores.push_back(score);
    auto it = copies_of.find(id);
    if (it == copies_of.end()) return;
    absorbed.insert(id);
    for (int64_t copy : *it->second) {
      if (copy == id) continue;
      g.ids.push_back(copy);
      g.paths.push_back(files.at(copy).path);
      g.scores.push_back(score);
    }
  };

  // 2. Near duplicates, among the rest (one file per exact group).
  std::vector<int64_t> ids;
  std::vector<float> data;
  for (const auto& [id, pos] : order) {
    if (copies.count(id)) continue;
    ids.push_back(id);
    const float* v = vectors->vectors() + static_cast<size_t>(pos) * dim;
    data.insert(data.end(), v, v + dim);
  }
  const auto n = static_cast<int64_t>(ids.size());
  if (n < 2) return groups;  // nothing to compare: no near group can absorb an exact one
  std::unordered_set<int64_t> grouped;
  std::vector<DupGroup> near;
  // Leaders in id order. When a file leads, every file indexed before it is grouped already or led
  // without taking it (they are less similar than the threshold), so its members all come after it:
  // each block of queries is compared with the files from its first on (half of all pairs). A block
  // at a time bounds the memory the pairs take even at a low threshold.
  constexpr int64_t kBlock = 256;
  // (Blocks of queries go through BLAS at FAISS's default threshold of 20 queries; its global is not
  // written here, as searches may run in other threads.)
  const float radius = std::nextafter(options.threshold, -3.0f);  // FAISS keeps scores > radius
  for (int64_t from = 0; from < n; from += kBlock) {
    const int64_t count = std::min(kBlock, n - from);
    const float* block = data.data() + static_cast<size_t>(from) * dim;
    faiss::RangeSearchResult result(static_cast<size_t>(count));
    faiss::range_search_inner_product(block, block, static_cast<size_t>(dim), static_cast<size_t>(count),
                                      static_cast<size_t>(n - from), radius, &result);
    for (int64_t q = 0; q < count; ++q) {
      const int64_t leader = ids[static_cast<size_t>(from + q)];
      if (grouped.count(leader)) continue;
      std::vector<SearchHit> members;
      for (size_t j = result.lims[q]; j < result.lims[q + 1]; ++j) {
        const int64_t id = ids[static_cast<size_t>(from + result.labels[j])];
        const float score = std::min(result.distances[j], 1.0f);
        if (id != leader && score >= options.threshold && !grouped.count(id)) members.push_back(SearchHit{id, score});
      }
      if (members.empty()) continue;
      std::sort(members.begin(), members.end(), [](const SearchHit& a, const SearchHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      DupGroup g;
      add_member(g, leader, 1.0f);
      grouped.insert(leader);
      for (const auto& m : members) {
        add_member(g, m.id, m.score);
        grouped.insert(m.id);
      }
      near.push_back(std::move(g));
    }
  }
  if (!absorbed.empty()) {
    groups.erase(std::remove_if(groups.begin(), groups.end(),
                                [&](const DupGroup& g) { return g.exact && absorbed.count(g.ids.front()); }),
                 groups.end());
  }
  for (auto& g : near) groups.push_back(std::move(g));
  return groups;
}

}  // namespace cnclip
