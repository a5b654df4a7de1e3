#include "cnclip/search.h"

#include "cnclip/video.h"

#include <faiss/utils/distances.h>
#include <sys/stat.h>

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

Searcher::Searcher(IndexStore& store, bool exact) : store_(store), vectors_(store.search_vectors(exact, &origin_)) {}
Searcher::~Searcher() = default;

int64_t Searcher::size() const { return vectors_->size(); }

FollowingSearcher::FollowingSearcher(IndexStore& store, FollowOptions options)
    : store_(store), options_(std::move(options)) {
  store_.catalog().refresh();  // a store kept open across a failed load (serve) may read a replaced file
  load(store_.catalog().generation());
}
FollowingSearcher::~FollowingSearcher() = default;

std::pair<uint64_t, int64_t> FollowingSearcher::snapshot_file(int64_t generation) const {
  struct stat st {};
  if (::stat(store_.snapshot_path(generation).c_str(), &st) != 0) return {0, 0};
  return {static_cast<uint64_t>(st.st_ino),
          static_cast<int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec};
}

// The generation (and the time) are taken before the vectors load: a commit during the load is a
// newer generation for the next current(), never vectors older than it believes it has.
void FollowingSearcher::load(int64_t generation) {
  if (options_.model) store_.require_model(*options_.model, options_.mixed_precision);
  const auto seen = snapshot_file(generation);
  const auto started = std::chrono::steady_clock::now();
  searcher_.reset();  // one set of vectors in memory at a time
  searcher_ = std::make_unique<Searcher>(store_, options_.exact);
  generation_ = generation;
  snapshot_seen_ = seen;
  loaded_at_ = started;
}

Searcher& FollowingSearcher::loaded() { return searcher_ ? *searcher_ : current(); }

Searcher& FollowingSearcher::current(bool fresh) {
  store_.catalog().refresh();  // an immutable read sees what was committed since (catalog.h)
  const int64_t g = store_.catalog().generation();
  const auto seen = snapshot_file(g);
  const bool due =
      fresh || seen.first != 0 || std::chrono::steady_clock::now() - loaded_at_ >= options_.reload_interval;
  // (No searcher: the last load failed, and its error was thrown.)
  if (!searcher_ || (g != generation_ && due) || (g == generation_ && seen != snapshot_seen_)) load(g);
  return *searcher_;
}

namespace {

int64_t mtime_seconds(int64_t mtime_ns) { return mtime_ns / 1'000'000'000 - (mtime_ns % 1'000'000'000 < 0 ? 1 : 0); }

float dot(const float* a, const float* b, int dim) { return faiss::fvec_inner_product(a, b, static_cast<size_t>(dim)); }

// How far below a threshold an approximate range search looks, so that re-scoring finds every hit
// whose exact score passes it: SQ8's scores were within 0.01 of the exact ones on the README's sets.
constexpr float kApproximateRangeMargin = 0.02f;

}  // namespace

FrameMap load_frame_map(Catalog& catalog) {
  FrameMap map;
  int64_t file = -1;
  int seq = 0;
  for (const auto& f : catalog.frames()) {  // by file, then time
    if (f.file_id != file) file = f.file_id, seq = 0;
    map.frames.emplace(f.vector_id, FramePosition{f.file_id, f.time_ms, ++seq});
    map.videos.insert(f.file_id);
  }
  return map;
}

std::vector<MergedHit> merge_video_hits(const std::vector<SearchHit>& hits, const FrameMap& frames, size_t max_results,
                                        size_t* used) {
  std::vector<MergedHit> out;
  struct Frame {
    int seq;
    int64_t time_ms;
    size_t position;
  };
  // The prefix of `hits` that makes at most max_results results: a hit that would start one more
  // result ends it (a frame next to one taken joins its result; one between two joins both).
  size_t n = hits.size();
  if (max_results < hits.size()) {
    std::unordered_map<int64_t, std::unordered_set<int>> taken;  // video -> frame positions taken
    size_t results = 0;
    n = 0;
    for (; n < hits.size(); ++n) {
      const int64_t id = hits[n].id;
      int64_t file = id;
      int seq = 0;
      if (id >= kFrameIdBase) {
        auto it = frames.frames.find(id);
        if (it == frames.frames.end()) continue;
        file = it->second.file_id;
        seq = it->second.seq;
      } else if (!frames.videos.count(id)) {
        if (results == max_results) break;
        ++results;
        continue;
      }
      auto& seqs = taken[file];
      const size_t next = results + 1 - seqs.count(seq - 1) - seqs.count(seq + 1);
      if (next > max_results) break;
      results = next;
      seqs.insert(seq);
    }
  }
  if (used) *used = n;
  std::unordered_map<int64_t, std::vector<Frame>> of_video;  // file id -> its frames among the hits
  for (size_t i = 0; i < n; ++i) {
    const int64_t id = hits[i].id;
    if (id >= kFrameIdBase) {
      auto it = frames.frames.find(id);
      if (it == frames.frames.end()) continue;  // removed since the vectors were read
      of_video[it->second.file_id].push_back(Frame{it->second.seq, it->second.time_ms, i});
    } else if (frames.videos.count(id)) {
      of_video[id].push_back(Frame{0, 0, i});
    } else {
      MergedHit m;
      m.file_id = id;
      m.score = hits[i].score;
      m.best_id = id;
      m.position = i;
      out.push_back(m);
    }
  }
  for (auto& [file, list] : of_video) {
    std::sort(list.begin(), list.end(), [](const Frame& a, const Frame& b) { return a.seq < b.seq; });
    for (size_t a = 0; a < list.size();) {
      size_t b = a + 1;
      while (b < list.size() && list[b].seq == list[b - 1].seq + 1) ++b;
      MergedHit m;
      m.file_id = file;
      m.has_frames = true;
      m.start_ms = list[a].time_ms;
      m.end_ms = list[b - 1].time_ms;
      m.position = list[a].position;
      m.time_ms = list[a].time_ms;
      for (size_t k = a; k < b; ++k) {
        if (list[k].position < m.position) m.position = list[k].position, m.time_ms = list[k].time_ms;
      }
      m.score = hits[m.position].score;
      m.best_id = hits[m.position].id;
      out.push_back(m);
      a = b;
    }
  }
  std::sort(out.begin(), out.end(), [](const MergedHit& x, const MergedHit& y) { return x.position < y.position; });
  return out;
}

std::vector<QueryResult> Searcher::search(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                          const SearchOptions& options, const std::vector<std::string>& exclude) {
  // A catalog read as it is on disk (immutable, catalog.h) that a writer changed during the query
  // may have given a mix of old and new pages: the query is answered again (at most twice more),
  // from the catalog as it is then.
  Catalog& catalog = store_.catalog();
  for (int attempt = 0;; ++attempt) {
    catalog.refresh();
    try {
      auto results = search_once(labels, queries, options, exclude);
      if (attempt == 2 || !catalog.changed_under_immutable_read()) return results;
    } catch (const Exception&) {
      if (attempt == 2 || !catalog.changed_under_immutable_read()) throw;
    }
  }
}

std::vector<QueryResult> Searcher::search_once(const std::vector<std::string>& labels,
                                               const std::vector<float>& queries, const SearchOptions& options,
                                               const std::vector<std::string>& exclude) {
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
  // Video frames after a video's first are vectors of their own (kFrameIdBase ids): filters and
  // --exclude-self apply to their video.
  // Read whenever the catalog has frames (an empty table answers at once): the test it replaced,
  // more vectors than catalog.count(), was a COUNT(*) of every file, 30 ms of each warm query at 10M
  // (the IVF's scan took 21 ms of its 54).
  const FrameMap frame_map = load_frame_map(catalog);
  auto file_of = [&frame_map](int64_t id) { return frame_map.file_of(id); };
  // Filters, applied inside the search (FAISS's ID selector), before the top k.
  const bool by_time = options.after || options.before;
  std::unordered_map<int64_t, int64_t> times;  // id -> capture time: the files in range, or all of them
  if (by_time || options.sort == SortOrder::kDate) times = catalog.capture_times(options.after, options.before);
  std::unordered_set<int64_t> under_ids;
  if (!options.under.empty()) {
    for (const auto& r : catalog.files_at_or_under(options.under)) under_ids.insert(r.id);
  }
  std::function<bool(int64_t)> allowed;
  if (!options.under.empty() || by_time) {
    allowed = [&](int64_t vector_id) {
      const int64_t id = file_of(vector_id);
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
      const auto near = vectors_->range_search(v.data(), 1, options.not_threshold);  // kept: the loop reads [0]
      for (const auto& h : near[0]) unwanted.insert(h.id);
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

  // The hits that count (threshold, --exclude-self), with a video's adjacent frames merged.
  auto merge = [&](const std::vector<SearchHit>& hits, int q, size_t max_results, bool* all_used) {
    std::vector<SearchHit> kept;
    kept.reserve(hits.size());
    for (const auto& h : hits) {
      if (options.threshold && h.score < *options.threshold) {
        if (options.sort == SortOrder::kScore) break;  // best first: the rest are lower
        continue;
      }
      const int64_t id = file_of(h.id);
      if (id < 0 || id == excluded[q]) continue;
      kept.push_back(h);
    }
    size_t used = 0;
    auto out = merge_video_hits(kept, frame_map, max_results, &used);
    if (all_used) *all_used = used == kept.size();
    return out;
  };
  // A frame counts as matching when it ranks above the last result wanted: the hits merged are those
  // before the first that would make one result more than offset + k.
  const auto limit = static_cast<size_t>(std::min<int64_t>(options.offset + int64_t{options.top_k}, n));
  std::vector<std::vector<MergedHit>> merged(labels.size());
  if (options.sort == SortOrder::kScore) {
    // One more than wanted, to see whether the last wanted hit ties with the next: FAISS keeps any of
    // equal scores (exact copies of a photo have equal embeddings), so the list is extended until the
    // tie is complete, and then ordered by (score, id): the same order at any k and offset. With
    // video frames, also until `want` results are left after merging.
    int64_t k = std::min<int64_t>(want + 1, n);
    std::vector<std::vector<SearchHit>> raw;
    while (true) {
      // More is fetched when: an approximate list lost candidates to --not, the last wanted hit ties
      // with the next, or (video frames) too few results are left after merging.
      bool more = false;
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
      for (int q = 0; q < nq; ++q) {
        auto& hits = raw[q];
        const auto got = static_cast<int64_t>(hits.size());
        if (got == k && got > want && want > 0 && hits[got - 1].score == hits[want - 1].score) more = true;
        std::sort(hits.begin(), hits.end(), [](const SearchHit& a, const SearchHit& b) {
          return a.score != b.score ? a.score > b.score : a.id < b.id;
        });
        if (!frame_map.frames.empty()) {
          bool all_used = false;
          merged[q] = merge(hits, q, limit, &all_used);
          const bool below = options.threshold && !hits.empty() && hits.back().score < *options.threshold;
          // Every hit taken (and the list may go on): more hits may still join or add results.
          // Too few results, or every hit taken (the next ones may still extend a result): fetch more.
          if (got == k && !below && (merged[q].size() < limit || all_used)) more = true;
        }
      }
      if (!more || k >= n || k >= INT32_MAX) break;
      k = std::min<int64_t>(k * 2, n);
    }
    if (frame_map.frames.empty()) {
      for (int q = 0; q < nq; ++q) merged[q] = merge(raw[q], q, SIZE_MAX, nullptr);
    }
  } else {
    std::vector<std::vector<SearchHit>> raw;
    if (exact) {
      raw = vectors_->range_search(queries.data(), nq, *options.threshold, allowed);
    } else {
      // Approximate scores may be a little low: a margin, then exact scores (merge applies the threshold).
      raw = vectors_->range_search(queries.data(), nq, *options.threshold - kApproximateRangeMargin, allowed);
      rescore(raw);
    }
    for (int q = 0; q < nq; ++q) {
      std::sort(raw[q].begin(), raw[q].end(), [](const SearchHit& a, const SearchHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      merged[q] = merge(raw[q], q, SIZE_MAX, nullptr);  // every frame over the threshold matches
      std::stable_sort(merged[q].begin(), merged[q].end(), [&](const MergedHit& a, const MergedHit& b) {
        const int64_t ta = times.at(a.file_id), tb = times.at(b.file_id);
        if (ta != tb) return ta > tb;
        if (a.file_id != b.file_id) return a.file_id < b.file_id;
        return a.start_ms < b.start_ms;
      });
    }
  }

  // The page of each query: skip `offset` results of the whole list, take top_k.
  std::vector<std::vector<MergedHit>> pages(labels.size());
  std::vector<int64_t> ids;
  for (int q = 0; q < nq; ++q) {
    int64_t position = 0;
    for (const auto& h : merged[q]) {
      if (static_cast<int64_t>(pages[q].size()) == options.top_k) break;
      if (position++ < options.offset) continue;
      pages[q].push_back(h);
      ids.push_back(h.file_id);
    }
  }
  std::unordered_map<int64_t, FileRecord> record_of;
  for (auto& r : catalog.find_by_ids(ids)) record_of.emplace(r.id, std::move(r));
  for (int q = 0; q < nq; ++q) {
    for (const auto& h : pages[q]) {
      auto it = record_of.find(h.file_id);
      if (it == record_of.end()) continue;  // removed since the vectors were read
      RankedHit hit;
      hit.rank = static_cast<int>(std::min<int64_t>(options.offset + static_cast<int64_t>(results[q].hits.size()) + 1,
                                                    std::numeric_limits<int>::max()));
      hit.path = it->second.path;
      hit.score = h.score;
      hit.id = h.file_id;
      hit.meta = it->second.meta;
      if (hit.meta.source != TimeSource::kNone) hit.taken_at = hit.meta.taken_at;
      else if (it->second.mtime_ns != 0) hit.taken_at = mtime_seconds(it->second.mtime_ns);  // 0: imported, no file
      if (h.has_frames || is_video_path(hit.path)) {
        hit.time = static_cast<double>(h.time_ms) / 1000.0;
        hit.start = static_cast<double>(h.start_ms) / 1000.0;
        hit.end = static_cast<double>(h.end_ms) / 1000.0;
      }
      results[q].hits.push_back(std::move(hit));
    }
  }
  return results;
}

}  // namespace cnclip
