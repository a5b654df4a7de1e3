// `cnclip dups`: groups of near-duplicate photos (resized, re-encoded, lightly cropped copies,
// bursts) found from the stored embeddings, without decoding anything or running the model.
//
// How groups are made:
//   1. Exact copies first: files with the same content hash (XXH3-128 of the bytes) form a group,
//      scores 1. Only the first of each (lowest catalog id) takes part in step 2; when it joins a
//      near-duplicate group, that group lists its copies right after it (with its score) and the
//      exact group is not listed: every file is in one group at most, so a script that keeps the
//      first of each group and deletes the rest never deletes every copy of a photo.
//   2. Near duplicates: a FAISS range search of every embedding against all the others keeps the
//      pairs with cosine >= threshold. Files are then taken in catalog id order (the order they were
//      indexed, so usually the original before its copies); each file not yet in a group starts one
//      with every file not yet in a group whose cosine TO IT is >= threshold. Every member is thus
//      within the threshold of the group's first, and a chain of photos each similar to the next
//      (a slow pan, a sequence of edits) never merges photos that are not similar themselves.
//      Scores are each member's cosine to the first (the first's own: 1).
// Cost: the range search compares every pair, O(n^2 * dim) multiply-adds through BLAS: about 2 s at
// 10,000 ViT-B-16 embeddings and 100x that at 100,000 on the 2-core machine of the README.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/index_store.h"

namespace cnclip {

struct DupsOptions {
  // Cosine similarity at which two photos count as near duplicates (see the README for why 0.95).
  float threshold = 0.95f;
  std::string under;  // canonical path: only the files below that folder, or that file (both of a pair)
};

struct DupGroup {
  bool exact = false;  // same bytes (content hash); a near group may also hold exact copies
  std::vector<int64_t> ids;
  std::vector<std::string> paths;  // the group's first, then the others by score (best first), then id
  std::vector<float> scores;       // cosine of each member to the first (1 for the first)
};

// Exact-copy groups first (ordered by their first's id), then near-duplicate groups (same). Reads
// the index's vectors (snapshot or catalog) and its catalog; changes nothing. Throws kInvalidArgument
// for a threshold that is not finite, kCorrupt for damaged vectors.
std::vector<DupGroup> find_duplicates(IndexStore& store, const DupsOptions& options);

}  // namespace cnclip
