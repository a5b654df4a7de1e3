#include "cnclip/search.h"

#include <faiss/utils/distances.h>

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

namespace cnclip {

Searcher::Searcher(IndexStore& store) : store_(store), vectors_(store.load_vectors()) {}
Searcher::~Searcher() = default;

int64_t Searcher::size() const { return vectors_->size(); }

std::vector<QueryResult> Searcher::search(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                          const SearchOptions& options, const std::vector<std::string>& exclude) {
  const int nq = static_cast<int>(labels.size());
  std::vector<QueryResult> results(labels.size());
  for (int q = 0; q < nq; ++q) results[q].query = labels[q];
  if (nq == 0 || vectors_->size() == 0 || options.top_k <= 0) return results;
  if (queries.size() != static_cast<size_t>(nq) * vectors_->dim()) {
    throw Exception(ErrorCode::kMismatch, store_.dir() + ": query embeddings have dimension " +
                                              std::to_string(queries.size() / nq) + ", the index has " +
                                              std::to_string(vectors_->dim()));
  }
  std::function<bool(int64_t)> allowed;
  std::unordered_set<int64_t> under_ids;
  if (!options.under.empty()) {
    for (const auto& r : store_.catalog().files_under(options.under)) under_ids.insert(r.id);
    allowed = [&](int64_t id) { return under_ids.count(id) > 0; };
  }
  // --not: the ids too close to an unwanted text, found in one pass over the vectors.
  std::unordered_set<int64_t> unwanted;
  for (const auto& v : options.not_like) {
    if (v.size() != static_cast<size_t>(vectors_->dim())) {
      throw Exception(ErrorCode::kMismatch, store_.dir() + ": a --not embedding has dimension " +
                                                std::to_string(v.size()) + ", the index has " +
                                                std::to_string(vectors_->dim()));
    }
    std::vector<float> ip(static_cast<size_t>(vectors_->size()));
    faiss::fvec_inner_products_ny(ip.data(), v.data(), vectors_->vectors(), static_cast<size_t>(vectors_->dim()),
                                  ip.size());
    for (size_t r = 0; r < ip.size(); ++r) {
      if (ip[r] >= options.not_threshold) unwanted.insert(vectors_->ids()[r]);
    }
  }
  if (!unwanted.empty()) {
    allowed = [&unwanted, within = std::move(allowed)](int64_t id) {
      return unwanted.count(id) == 0 && (!within || within(id));
    };
  }
  const bool any_exclude = std::any_of(exclude.begin(), exclude.end(), [](const std::string& s) { return !s.empty(); });
  // In 64 bits and bounded by the index size: -k 2147483647 asks for everything, and one more hit for
  // the excluded query image must not overflow.
  const int64_t k = std::min<int64_t>(int64_t{options.top_k} + (any_exclude ? 1 : 0), vectors_->size());
  auto raw = vectors_->search(queries.data(), nq, static_cast<int>(k), allowed);

  std::vector<int64_t> ids;
  for (const auto& hits : raw) {
    for (const auto& h : hits) ids.push_back(h.id);
  }
  std::unordered_map<int64_t, std::string> path_of;
  for (auto& r : store_.catalog().find_by_ids(ids)) path_of.emplace(r.id, std::move(r.path));

  for (int q = 0; q < nq; ++q) {
    for (const auto& h : raw[q]) {
      if (static_cast<int>(results[q].hits.size()) == options.top_k) break;
      if (options.threshold && h.score < *options.threshold) break;  // hits come best first
      auto it = path_of.find(h.id);
      if (it == path_of.end()) continue;  // removed since the vectors were read
      if (q < static_cast<int>(exclude.size()) && !exclude[q].empty() && it->second == exclude[q]) continue;
      results[q].hits.push_back(RankedHit{static_cast<int>(results[q].hits.size()) + 1, it->second, h.score, h.id});
    }
  }
  return results;
}

}  // namespace cnclip
