// Top-k cosine search of query embeddings against an index.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cstdint>
#include <unordered_map>
#include <unordered_set>

#include "cnclip/bundle.h"
#include "cnclip/catalog.h"
#include "cnclip/index_store.h"
#include "cnclip/photo_meta.h"
#include "cnclip/vector_index.h"

namespace cnclip {

// Default of --not-threshold: between the cosines CLIP-family models give a photo and a caption
// that describes it (around 0.3) and unrelated pairs (0.1 to 0.2); see README "Combined and
// negative queries" for the sources. Not measured on the real weights.
inline constexpr float kDefaultNotThreshold = 0.25f;
enum class SortOrder {
  kScore,  // best score first (ties: lower catalog id first)
  kDate,   // newest capture time first (ties: lower catalog id first); needs a threshold
};

struct SearchOptions {
  int top_k = 10;                  // hits per query; more than the index holds returns all of them
  std::optional<float> threshold;  // keep hits with score >= threshold
  std::string under;               // canonical path: only the files below that folder, or that file
  // --not: results whose cosine similarity to any of these unit vectors (each of the index's
  // dimension) is >= not_threshold are dropped before the top k are taken, so k results still come
  // when k others exist.
  std::vector<std::vector<float>> not_like;
  float not_threshold = kDefaultNotThreshold;
  // Only photos taken at or after `after` and before `before` (unix seconds; photo_meta.h says which
  // time a photo has). Applied before the top k, like `under`: a filtered search still returns k
  // results when k photos pass the filters.
  std::optional<int64_t> after, before;
  // The whole list of a query is every photo that passes the filters and the threshold, in this
  // order; `offset` skips its first results and top_k takes the next ones, so pages (offset 0, k,
  // 2k, ...) joined are exactly the whole list. kDate orders by capture time, so it needs `threshold`
  // to say which results to order (kInvalidArgument without it; -1 keeps every photo).
  SortOrder sort = SortOrder::kScore;
  int64_t offset = 0;
};

// "score" or "date"; kInvalidArgument naming `what` otherwise.
SortOrder parse_sort_order(const std::string& name, const std::string& what);

struct RankedHit {
  int rank = 0;  // 1-based
  std::string path;
  float score = 0;  // cosine similarity
  int64_t id = 0;   // the file's catalog id (what `cnclip serve` names it by)
  // Set by Searcher: the capture time (unix seconds; photo_meta.h), the mtime when not known yet.
  std::optional<int64_t> taken_at = std::nullopt;
  PhotoMeta meta{};  // as stored (source kNone: not known yet; width/height 0: unknown)
  // Videos: the matching moment, in seconds from the start: `time` of the best frame, and the range
  // [start, end] of the adjacent matching frames merged into this result (merge_video_hits). Unset
  // for photos.
  std::optional<double> time = std::nullopt, start = std::nullopt, end = std::nullopt;
};

// Where a stored vector sits in its video: the video's files row is frame 0 at time 0, the frames
// table's rows (catalog.h, kFrameIdBase ids) follow in time order.
struct FramePosition {
  int64_t file_id = 0;
  int64_t time_ms = 0;
  int seq = 0;  // 0 for the video's own row
};
// Vector id -> position, for every stored frame after a video's first; `videos` holds the file ids
// that have such frames. Built from Catalog::frames() (one indexed pass, ~0.1 s per 100,000 frames).
struct FrameMap {
  std::unordered_map<int64_t, FramePosition> frames;
  std::unordered_set<int64_t> videos;
  int64_t file_of(int64_t vector_id) const {
    if (vector_id < kFrameIdBase) return vector_id;
    auto it = frames.find(vector_id);
    return it == frames.end() ? -1 : it->second.file_id;
  }
};
FrameMap load_frame_map(Catalog& catalog);

// One result of a search after merging: a photo, or a moment of a video.
struct MergedHit {
  int64_t file_id = 0;
  float score = 0;          // the best frame's
  int64_t best_id = 0;      // its vector id
  size_t position = 0;      // its position in the hits given
  bool has_frames = false;  // a video with frames after its first (times below are set)
  int64_t time_ms = 0, start_ms = 0, end_ms = 0;
};
// Merges the frames of one video that are adjacent in the video (consecutive frame positions) and
// all in `hits` into one result: score and time of the best of them, start and end the first and the
// last one's times. Frames of one video that are not adjacent stay separate results. Results come in
// the order of their best hit in `hits` (pass them best first). With max_results, only the hits
// before the first one that would make more results than that are merged (a frame ranked below the
// last result wanted is not a match); *used receives how many were.
std::vector<MergedHit> merge_video_hits(const std::vector<SearchHit>& hits, const FrameMap& frames,
                                        size_t max_results = SIZE_MAX, size_t* used = nullptr);

struct QueryResult {
  std::string query;  // the text, or the image path as given
  std::vector<RankedHit> hits;
};

// Searches one index. Loads the vectors on construction (IndexStore::search_vectors: the newest
// snapshot with the delta since, or the catalog's vectors). On an approximate snapshot (flat-fp16,
// flat-sq8, IVF, HNSW: VectorIndex::exact() false) each query takes candidates_for(offset + k)
// candidates from it and re-scores them with the catalog's embeddings, so every score returned is
// the exact cosine and the order is exact among the candidates; recall@10 against flat is what the
// snapshot was tuned to (>= 0.95, README "Scale"), and filters (--under, times) apply inside the
// approximate search. With `exact` (--exact), only a flat snapshot is used: on an index of another
// type the vectors come from the catalog. Not thread-safe, and neither is the store it reads: one
// thread at a time uses the pair. The Searcher keeps a reference to `store`, which must outlive it.
class Searcher {
 public:
  explicit Searcher(IndexStore& store, bool exact = false);
  ~Searcher();

  int64_t size() const;
  // What it searches: the vectors loaded on construction, and where they came from.
  const VectorIndex& vectors() const { return *vectors_; }
  const VectorsOrigin& origin() const { return origin_; }
  // queries: labels.size() embeddings of the index's dimension. exclude[i], when not empty, is a
  // path that must not appear in query i's results (search-image --exclude-self). Ranks count from
  // the start of the whole list (offset 20: the first hit has rank 21).
  std::vector<QueryResult> search(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                  const SearchOptions& options, const std::vector<std::string>& exclude = {});

 private:
  std::vector<QueryResult> search_once(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                       const SearchOptions& options, const std::vector<std::string>& exclude);
  IndexStore& store_;
  VectorsOrigin origin_;
  std::unique_ptr<VectorIndex> vectors_;
};

// What a FollowingSearcher reloads, and checks before it does.
struct FollowOptions {
  bool exact = false;  // as Searcher's
  // A new generation without its snapshot (an index run committing batch after batch, whose vectors
  // then come from the catalog: about a second per reload at 1M) is loaded at most this often; a
  // generation with its snapshot, at once.
  std::chrono::milliseconds reload_interval{2000};
  // When set, every reload first checks that the index still holds this model's vectors
  // (IndexStore::require_model, kMismatch when it moved to another model): queries are never compared
  // with another model's vectors. Not owned; must outlive the FollowingSearcher.
  const BundleManifest* model = nullptr;
  bool mixed_precision = false;  // require_model's
};

// A Searcher for a reader that lives across index runs (serve, a `search-text -` stream): current()
// answers with the vectors of the newest committed state. It refreshes the catalog's connection
// (Catalog::refresh), and loads the vectors again when the generation changed (see
// FollowOptions::reload_interval; `fresh` loads any new generation at once) or when the current
// generation's snapshot file was replaced (`cnclip index --vectors TYPE` rewrites it under the same
// generation). Cost when nothing changed: one catalog read and a few stats (tens of microseconds).
// Not thread-safe, like the store it reads, which must outlive it.
class FollowingSearcher {
 public:
  // Refreshes the catalog's connection and loads the vectors now (as Searcher's constructor).
  explicit FollowingSearcher(IndexStore& store, FollowOptions options = {});
  ~FollowingSearcher();

  Searcher& current(bool fresh = false);
  // The vectors loaded last, without looking for commits: for a command that answers its queries
  // from one state (reloading during an index run would cost a one-shot search-image of many paths
  // about a second every reload_interval at 1M).
  // After a failed load (its error thrown), loads as current() does.
  Searcher& loaded();

 private:
  std::pair<uint64_t, int64_t> snapshot_file(int64_t generation) const;  // inode, change time; 0s: none
  void load(int64_t generation);

  IndexStore& store_;
  FollowOptions options_;
  std::unique_ptr<Searcher> searcher_;
  int64_t generation_ = -1;
  std::pair<uint64_t, int64_t> snapshot_seen_{0, 0};
  std::chrono::steady_clock::time_point loaded_at_;
};

}  // namespace cnclip
