// Exhaustive inner-product search over L2-normalized embeddings (so scores are cosine similarities).
// On disk the vectors are a FAISS index file, IndexIDMap2 over IndexFlatIP (ids = catalog ids), which
// faiss::read_index reads like any other; cnclip memory-maps it instead, because FAISS 1.7.3 copies a
// flat index into memory on load (about 1.5 s for a million vectors) and cannot map it.
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
  // Memory-maps a file written by VectorFileWriter (or faiss::write_index of IndexIDMap2/IndexFlatIP).
  // Throws Exception(kCorrupt) naming the file when it is not such a file or is cut short.
  static std::unique_ptr<VectorIndex> open_file(const std::string& path);

  virtual int dim() const = 0;
  virtual int64_t size() const = 0;
  virtual const int64_t* ids() const = 0;
  virtual const float* vectors() const = 0;

  // For each of the nq queries (nq * dim floats), up to k hits, best first. When `allowed` is given,
  // only ids it accepts are considered.
  std::vector<std::vector<SearchHit>> search(const float* queries, int nq, int k,
                                             const std::function<bool(int64_t)>& allowed = nullptr) const;
};

// Writes a vector file atomically; `count` vectors must be added before commit().
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
