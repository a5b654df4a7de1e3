#include "cnclip/search.h"

#include <faiss/utils/distances.h>

#include <algorithm>
#include <limits>
#include <unordered_map>
#include <unordered_set>

namespace cnclip {

SortOrder parse_sort_order(const std::string& name, const std::string& what) {
  if (name == "score") return SortOrder::kScore;
  if (name == "date") return SortOrder::kDate;
  throw Exception(ErrorCode::kInvalidArgument, what + ": expects score or date, not '" + name + "'");
}

Searcher::Searcher(IndexStore& store, bool exact) : store_(store), vectors_(store.search_vectors(exact)) {}
Searcher::~Searcher() = default;

int64_t Searcher::size() const { return vectors_->size(); }

namespace {

int64_t mtime_seconds(int64_t mtime_ns) { return mtime_ns / 1'000'000'000 - (mtime_ns % 1'000'000'000 < 0 ? 1 : 0); }

float dot(const float* a, const float* b, int dim) { return faiss::fvec_inner_product(a, b, static_cast<size_t>(dim)); }

// How far below a threshold an approximate range search looks, so that re-scoring finds every hit
// whose exact score passes it: SQ8's scores were within 0.01 of the exact ones on the README's sets.
constexpr float kApproximateRangeMargin = 0.02f;

}  // namespace

std::vector<QueryResult> Searcher::search(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                          const SearchOptions& options, const std::vector<std::string>& exclude) {
  const int nq = static_cast<int>(labels.size());
  std::vector<QueryResult> results(labels.size());
  for (int q = 0; q < nq; ++q) results[q].query = labels[q];
  if (options.sort == SortOrder::kDate && !options.threshold) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "sorting by date needs a score threshold, to say which results to order by date "
                    "(-1 keeps every photo)");
  }
  if (options.offset < 0) throw Exception(ErrorCode::kInvalidArgument, "the offset cannot be negative");
  const int64_t n = vectors_->size();
  if (nq == 0 || n == 0 || options.top_k <= 0) return results;
  if (queries.size() != static_cast<size_t>(nq) * vectors_->dim()) {
    throw Exception(ErrorCode::kMismatch, store_.dir() + ": query embeddings have dimension " +
                                              std::to_string(queries.size() / nq) + ", the index has " +
                                              std::to_string(vectors_->dim()));
  }
  Catalog& catalog = store_.catalog();
  // Filters, applied inside the search (FAISS's ID selector), before the top k.
  const bool by_time = options.after || options.before;
  std::unordered_map<int64_t, int64_t> times;  // id -> capture time: the files in range, or all of them
  if (by_time || options.sort == SortOrder::kDate) times = catalog.capture_times(options.after, options.before);
  std::unordered_set<int64_t> under_ids;
  if (!options.under.empty()) {
    for (const auto& r : catalog.files_under(options.under)) under_ids.insert(r.id);
  }
  std::function<bool(int64_t)> allowed;
  if (!options.under.empty() || by_time) {
    allowed = [&](int64_t id) {
      return (options.under.empty() || under_ids.count(id) > 0) && (!by_time || times.count(id) > 0);
    };
  }
  // --not: the ids too close to an unwanted text, found by one range search per text. An
  // approximate index checks them exactly on its re-scored candidates instead (below).
  const bool exact = vectors_->exact();
  const int dim = vectors_->dim();
  for (const auto& v : options.not_like) {
    if (v.size() != static_cast<size_t>(dim)) {
      throw Exception(ErrorCode::kMismatch, store_.dir() + ": a --not embedding has dimension " +
                                                std::to_string(v.size()) + ", the index has " + std::to_string(dim));
    }
  }
  std::unordered_set<int64_t> unwanted;
  if (exact) {
    for (const auto& v : options.not_like) {
      for (const auto& h : vectors_->range_search(v.data(), 1, options.not_threshold)[0]) unwanted.insert(h.id);
    }
  }
  if (!unwanted.empty()) {
    allowed = [&unwanted, within = std::move(allowed)](int64_t id) {
      return unwanted.count(id) == 0 && (!within || within(id));
    };
  }
  // Approximate candidates get their exact scores from the catalog's embeddings (the source of
  // truth), lose those too close to a --not text, and are ordered by (score, id).
  auto rescore = [&](std::vector<std::vector<SearchHit>>& lists) {
    std::vector<int64_t> ids;
    for (const auto& hits : lists) {
      for (const auto& h : hits) ids.push_back(h.id);
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::unordered_map<int64_t, std::vector<float>> embedding;
    catalog.for_each_embedding_of(ids, dim, [&](int64_t id, const float* v) { embedding[id].assign(v, v + dim); });
    for (size_t q = 0; q < lists.size(); ++q) {
      std::vector<SearchHit> kept;
      for (const auto& h : lists[q]) {
        auto it = embedding.find(h.id);
        if (it == embedding.end()) continue;  // removed since the vectors were read
        const float* v = it->second.data();
        bool unwanted_here = false;
        for (const auto& nv : options.not_like) unwanted_here |= dot(nv.data(), v, dim) >= options.not_threshold;
        if (unwanted_here) continue;
        kept.push_back(SearchHit{h.id, std::clamp(dot(queries.data() + q * dim, v, dim), -1.0f, 1.0f)});
      }
      std::sort(kept.begin(), kept.end(), [](const SearchHit& a, const SearchHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      lists[q] = std::move(kept);
    }
  };
  // The ids left out per query (--exclude-self), by path.
  std::vector<int64_t> excluded(labels.size(), -1);
  int64_t extra = 0;
  for (int q = 0; q < nq && q < static_cast<int>(exclude.size()); ++q) {
    if (exclude[q].empty()) continue;
    if (auto r = catalog.find(exclude[q])) excluded[q] = r->id, extra = 1;
  }
  // In 64 bits and bounded by the index size: -k 2147483647 asks for everything.
  const int64_t want = std::min<int64_t>(options.offset + int64_t{options.top_k} + extra, n);

  std::vector<std::vector<SearchHit>> raw;
  if (options.sort == SortOrder::kScore) {
    // One more than wanted, to see whether the last wanted hit ties with the next: FAISS keeps any of
    // equal scores (exact copies of a photo have equal embeddings), so the list is extended until the
    // tie is complete, and then ordered by (score, id): the same order at any k and offset.
    int64_t k = std::min<int64_t>(want + 1, n);
    while (true) {
      bool more = false;  // an approximate list lost candidates to --not: more may come with a larger k
      if (exact) {
        raw = vectors_->search(queries.data(), nq, static_cast<int>(std::min<int64_t>(k, INT32_MAX)), allowed);
      } else {
        const int64_t asked = std::min<int64_t>(candidates_for(k), std::min<int64_t>(n, INT32_MAX));
        raw = vectors_->search(queries.data(), nq, static_cast<int>(asked), allowed);
        std::vector<size_t> found;
        for (const auto& hits : raw) found.push_back(hits.size());
        rescore(raw);
        for (size_t q = 0; q < raw.size(); ++q) {
          if (static_cast<int64_t>(found[q]) == asked && static_cast<int64_t>(raw[q].size()) < k) more = true;
          if (static_cast<int64_t>(raw[q].size()) > k) raw[q].resize(static_cast<size_t>(k));
        }
      }
      bool tie = false;
      for (const auto& hits : raw) {
        const auto got = static_cast<int64_t>(hits.size());
        if (got == k && got > want && want > 0 && hits[got - 1].score == hits[want - 1].score) tie = true;
      }
      if ((!tie && !more) || k >= n || k >= INT32_MAX) break;
      k = std::min<int64_t>(k * 2, n);
    }
    for (auto& hits : raw) {
      std::sort(hits.begin(), hits.end(), [](const SearchHit& a, const SearchHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
    }
  } else {
    if (exact) {
      raw = vectors_->range_search(queries.data(), nq, *options.threshold, allowed);
    } else {
      raw = vectors_->range_search(queries.data(), nq, *options.threshold - kApproximateRangeMargin, allowed);
      rescore(raw);
    }
    for (auto& hits : raw) {
      std::sort(hits.begin(), hits.end(), [&](const SearchHit& a, const SearchHit& b) {
        const int64_t ta = times.at(a.id), tb = times.at(b.id);
        return ta != tb ? ta > tb : a.id < b.id;
      });
    }
  }

  // The page of each query: skip `offset` results of the whole list, take top_k.
  std::vector<std::vector<SearchHit>> pages(labels.size());
  std::vector<int64_t> ids;
  for (int q = 0; q < nq; ++q) {
    int64_t position = 0;
    for (const auto& h : raw[q]) {
      if (static_cast<int64_t>(pages[q].size()) == options.top_k) break;
      if (options.threshold && h.score < *options.threshold) {
        if (options.sort == SortOrder::kScore) break;  // best first: the rest are lower
        continue;
      }
      if (h.id == excluded[q]) continue;
      if (position++ < options.offset) continue;
      pages[q].push_back(h);
      ids.push_back(h.id);
    }
  }
  std::unordered_map<int64_t, FileRecord> record_of;
  for (auto& r : catalog.find_by_ids(ids)) record_of.emplace(r.id, std::move(r));
  for (int q = 0; q < nq; ++q) {
    for (const auto& h : pages[q]) {
      auto it = record_of.find(h.id);
      if (it == record_of.end()) continue;  // removed since the vectors were read
      RankedHit hit;
      hit.rank = static_cast<int>(std::min<int64_t>(options.offset + static_cast<int64_t>(results[q].hits.size()) + 1,
                                                    std::numeric_limits<int>::max()));
      hit.path = it->second.path;
      hit.score = h.score;
      hit.id = h.id;
      hit.meta = it->second.meta;
      if (hit.meta.source != TimeSource::kNone) hit.taken_at = hit.meta.taken_at;
      else if (it->second.mtime_ns != 0) hit.taken_at = mtime_seconds(it->second.mtime_ns);  // 0: imported, no file
      results[q].hits.push_back(std::move(hit));
    }
  }
  return results;
}

}  // namespace cnclip
