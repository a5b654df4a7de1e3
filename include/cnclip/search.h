// Top-k cosine search of query embeddings against an index.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/index_store.h"

namespace cnclip {

// Default of --not-threshold: between the cosines CLIP-family models give a photo and a caption
// that describes it (around 0.3) and unrelated pairs (0.1 to 0.2); see README "Combined and
// negative queries" for the sources. Not measured on the real weights.
inline constexpr float kDefaultNotThreshold = 0.25f;

struct SearchOptions {
  int top_k = 10;  // hits per query; more than the index holds returns all of them
  std::optional<float> threshold;  // keep hits with score >= threshold
  std::string under;               // canonical folder: only files below it
  // --not: results whose cosine similarity to any of these unit vectors (each of the index's
  // dimension) is >= not_threshold are dropped before the top k are taken, so k results still come
  // when k others exist.
  std::vector<std::vector<float>> not_like;
  float not_threshold = kDefaultNotThreshold;
};

struct SearchHit;

struct RankedHit {
  int rank = 0;  // 1-based
  std::string path;
  float score = 0;  // cosine similarity
  int64_t id = 0;   // the file's catalog id (what `cnclip serve` names it by)
};

struct QueryResult {
  std::string query;  // the text, or the image path as given
  std::vector<RankedHit> hits;
};

// Searches one index. Loads the vectors on construction (memory-mapped snapshot, or built from the
// catalog when the snapshot is not current). Not thread-safe.
class Searcher {
 public:
  explicit Searcher(IndexStore& store);
  ~Searcher();

  int64_t size() const;
  // queries: labels.size() embeddings of the index's dimension. exclude[i], when not empty, is a
  // path that must not appear in query i's results (search-image --exclude-self).
  std::vector<QueryResult> search(const std::vector<std::string>& labels, const std::vector<float>& queries,
                                  const SearchOptions& options, const std::vector<std::string>& exclude = {});

 private:
  IndexStore& store_;
  std::unique_ptr<VectorIndex> vectors_;
};

}  // namespace cnclip
