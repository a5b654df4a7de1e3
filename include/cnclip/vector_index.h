// Exhaustive inner-product search over L2-normalized embeddings (so scores are cosine similarities).
// On disk the vectors are a FAISS index file, IndexIDMap2 over IndexFlatIP (ids = catalog ids), which
// faiss::read_index reads like any other; cnclip memory-maps it instead, because FAISS 1.7.3 copies a
// flat index into memory on load (about 1.5 s for a million vectors) and cannot map it.
//
// Integrity: VectorFileWriter appends a 24-byte trailer after the FAISS data ("CNCLIPX3", the number
// of bytes covered, and the XXH3-64 of all of them; FAISS's own reader stops before it), and
// open_file verifies it on every open, so random bytes anywhere (header, vectors, ids), a cut or an
// extended file are all caught before a search uses the data. Why a full hash on every open: XXH3
// runs at ~9.8 GB/s on one core of the machine that measured the README's figures (2 GB, the
// vectors of a million ViT-B-16 embeddings, in 0.22 s, from memory), the file is read into memory
// anyway (MAP_POPULATE) and a search reads every vector, and cold searches open the index on a
// thread of its own while the model loads (~0.5 s), so the check hides behind work that is done
// anyway. Block checksums verified lazily would save nothing, since an exhaustive search touches
// every block; verifying once and recording it would miss damage done after that.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cnclip {

struct SearchHit {
  int64_t id = -1;
  float score = 0.0f;
};

// Immutable after construction; search() may be called from several threads at once.
class VectorIndex {
 public:
  virtual ~VectorIndex() = default;
  // Copies `ids` (n) and `vectors` (n * dim) into an in-memory index.
  static std::unique_ptr<VectorIndex> from_vectors(int dim, std::vector<int64_t> ids, std::vector<float> vectors);
  // Memory-maps a file written by VectorFileWriter (or, with !require_checksum, by faiss::write_index
  // of IndexIDMap2/IndexFlatIP, which has no trailer). Throws Exception(kCorrupt) naming the file when
  // it is not such a file, is cut short or extended, or its checksum does not match.
  static std::unique_ptr<VectorIndex> open_file(const std::string& path, bool require_checksum = true);

  virtual int dim() const = 0;
  virtual int64_t size() const = 0;
  virtual const int64_t* ids() const = 0;
  // The n * dim floats, row i at vectors() + i * dim. Alignment: an in-memory index's are aligned,
  // but a memory-mapped snapshot's start at file offset 82 (FAISS's IndexIDMap2/IndexFlatIP layout,
  // which cnclip keeps so `faiss::read_index` reads the file), so they are only 2-byte aligned:
  // copy a row out with memcpy, or hand the pointer to FAISS/BLAS, which load unaligned data;
  // never dereference it as float. (Copying 2 GB at a million vectors into aligned memory would
  // give up the shared page cache that makes a warm query cheap.)
  virtual const float* vectors() const = 0;

  // For each of the nq queries (nq * dim floats), up to k hits, best first. When `allowed` is given,
  // only ids it accepts are considered. Scores are cosines of unit vectors, always within [-1, 1]:
  // rounding past the bounds is clamped, and a score that is not finite or lies further out (a vector
  // or query that is not unit length: damage) throws Exception(kCorrupt) instead of being returned.
  std::vector<std::vector<SearchHit>> search(const float* queries, int nq, int k,
                                             const std::function<bool(int64_t)>& allowed = nullptr) const;
  // For each query, every hit with score >= min_score (FAISS range search), in no particular order;
  // the same checks and clamping as search().
  std::vector<std::vector<SearchHit>> range_search(const float* queries, int nq, float min_score,
                                                   const std::function<bool(int64_t)>& allowed = nullptr) const;
};

// Writes a vector file atomically, with its checksum trailer; `count` vectors must be added before
// commit(). add() refuses a vector that is not finite (kCorrupt).
class VectorFileWriter {
 public:
  VectorFileWriter(const std::string& path, int dim, int64_t count);
  ~VectorFileWriter();
  void add(int64_t id, const float* vector);
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cnclip
