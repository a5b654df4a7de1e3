#include "cnclip/vector_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexIVFPQFastScan.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPQFastScan.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/MetricType.h>
#include <faiss/VectorTransform.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/utils/distances.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <omp.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <random>
#include <regex>
#include <typeinfo>
#include <unordered_set>

#include "atomic_file.h"
#include "cnclip/error.h"
#include "cnclip/runtime.h"
#include "read_at.h"
#include "sq_scan.h"

namespace cnclip {
namespace {

// The byte layout faiss::write_index uses for IndexIDMap2 over IndexFlatIP (FAISS 1.7.x):
//   "IxM2" header  "IxFI" header  u64 n*dim  float[n*dim]  u64 n  int64[n]
// where header = i32 d, i64 ntotal, i64 dummy, i64 dummy, u8 is_trained, i32 metric_type.
constexpr size_t kHeaderBytes = 4 + 8 + 8 + 8 + 1 + 4;
constexpr size_t kVectorsOffset = 4 + kHeaderBytes + 4 + kHeaderBytes + 8;
// cnclip's trailer after the FAISS data (FAISS's reader stops before it):
//   "CNCLIPX3"  u64 bytes covered (everything before the trailer)  u64 XXH3-64 of those bytes
constexpr char kTrailerMagic[8] = {'C', 'N', 'C', 'L', 'I', 'P', 'X', '3'};
constexpr size_t kTrailerBytes = 8 + 8 + 8;
// A stored embedding is unit length; a score further than this from [-1, 1] means damaged vectors.
constexpr float kScoreSlack = 1e-3f;
// Quantized types (fp16, SQ8, PQ) score within this of the exact cosine; damage is caught by the
// checksum, so this only keeps an absurd score from being returned.
constexpr float kApproximateScoreSlack = 0.1f;

void put_header(std::string& out, const char* fourcc, int32_t d, int64_t ntotal) {
  const int64_t dummy = 1 << 20;
  const uint8_t trained = 1;
  const int32_t metric = faiss::METRIC_INNER_PRODUCT;
  out.append(fourcc, 4);
  out.append(reinterpret_cast<const char*>(&d), 4);
  out.append(reinterpret_cast<const char*>(&ntotal), 8);
  out.append(reinterpret_cast<const char*>(&dummy), 8);
  out.append(reinterpret_cast<const char*>(&dummy), 8);
  out.append(reinterpret_cast<const char*>(&trained), 1);
  out.append(reinterpret_cast<const char*>(&metric), 4);
}

// A single query is still fastest through BLAS on large indexes (one sgemm per thread's range of
// rows: search_split). FAISS keeps this threshold in a global: set it once, so concurrent searches do
// not write it (a data race).
void use_blas_for_single_queries() {
  static std::once_flag blas_threshold_set;
  std::call_once(blas_threshold_set, [] { faiss::distance_compute_blas_threshold = 1; });
}

// The rows whose ids `allowed` accepts (and, when `keep` is given, whose bit is set there), as
// FAISS's ID selector over row positions; no selector (every row) when neither is given.
class RowSelection {
 public:
  RowSelection(const int64_t* ids, int64_t n, const std::function<bool(int64_t)>& allowed,
               const std::vector<uint8_t>* keep = nullptr) {
    if (!allowed && !keep) return;
    if (keep) bitmap_ = *keep;
    else bitmap_.assign(static_cast<size_t>((n + 7) / 8), 0xff);
    if (allowed) {
      for (int64_t i = 0; i < n; ++i) {
        if (!allowed(ids[i])) bitmap_[static_cast<size_t>(i >> 3)] &= static_cast<uint8_t>(~(1u << (i & 7)));
      }
    }
    selector_ = std::make_unique<faiss::IDSelectorBitmap>(bitmap_.size(), bitmap_.data());
  }
  faiss::IDSelector* selector() const { return selector_.get(); }

 private:
  std::vector<uint8_t> bitmap_;
  std::unique_ptr<faiss::IDSelectorBitmap> selector_;
};

// FAISS runs the queries of a search in parallel, not the rows of one query: a lone query scanned on
// one core wherever BLAS does not do the work (a flat index with a selector: a filter, or the rows a
// delta masks; and every scalar-quantized flat index), and OpenBLAS threads a 1-row product poorly.
// search_split gives each compute thread a range of rows instead. Below this many rows it does not pay.
constexpr int64_t kParallelScanRows = 65'536;

// The rows [lo, hi) of a scan that `inner` (null: all) accepts.
class RangeSelection : public faiss::IDSelector {
 public:
  RangeSelection(int64_t lo, int64_t hi, const faiss::IDSelector* inner) : lo_(lo), hi_(hi), inner_(inner) {}
  bool is_member(faiss::Index::idx_t row) const override {
    return row >= lo_ && row < hi_ && (!inner_ || inner_->is_member(row));
  }

 private:
  int64_t lo_, hi_;
  const faiss::IDSelector* inner_;
};

// Row j of a scan that starts at row `offset`, as `inner` (row offset + j) says.
class OffsetSelection : public faiss::IDSelector {
 public:
  OffsetSelection(int64_t offset, const faiss::IDSelector* inner) : offset_(offset), inner_(inner) {}
  bool is_member(faiss::Index::idx_t row) const override { return inner_->is_member(offset_ + row); }

 private:
  int64_t offset_;
  const faiss::IDSelector* inner_;
};

// Top k of nq queries (fewer than the calling thread's compute threads) over n rows, one range of rows
// per thread: part(lo, hi, scores, rows) fills [nq][k] with its best rows (positions in the whole
// index, -1 for none); the parts are merged best first, a tie to the lower row. False (nothing done)
// where a split does not pay: one thread, as many queries as threads, or few rows.
template <typename Part>
bool search_split(int64_t n, int nq, int k, float* scores, int64_t* rows, Part&& part) {
  const int threads = omp_get_max_threads();
  if (threads < 2 || nq >= threads || n < kParallelScanRows || k <= 0) return false;
  const int parts = static_cast<int>(std::min<int64_t>(threads, n / (kParallelScanRows / 2)));
  const size_t per = static_cast<size_t>(nq) * static_cast<size_t>(k);
  std::vector<float> part_scores(per * static_cast<size_t>(parts));
  std::vector<int64_t> part_rows(per * static_cast<size_t>(parts), -1);
  std::exception_ptr failure;
  std::mutex failure_mutex;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
  for (int p = 0; p < parts; ++p) {
    try {
      part(n * p / parts, n * (p + 1) / parts, &part_scores[per * static_cast<size_t>(p)],
           &part_rows[per * static_cast<size_t>(p)]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  std::vector<std::pair<float, int64_t>> merged;
  for (int q = 0; q < nq; ++q) {
    merged.clear();
    for (int p = 0; p < parts; ++p) {
      for (int j = 0; j < k; ++j) {
        const size_t at = per * static_cast<size_t>(p) + static_cast<size_t>(q) * k + static_cast<size_t>(j);
        if (part_rows[at] >= 0) merged.emplace_back(part_scores[at], part_rows[at]);
      }
    }
    const size_t keep = std::min(merged.size(), static_cast<size_t>(k));
    std::partial_sort(
        merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(keep), merged.end(),
        [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
    for (int j = 0; j < k; ++j) {
      const size_t at = static_cast<size_t>(q) * k + static_cast<size_t>(j);
      scores[at] = static_cast<size_t>(j) < keep ? merged[static_cast<size_t>(j)].first : -1.0f;
      rows[at] = static_cast<size_t>(j) < keep ? merged[static_cast<size_t>(j)].second : -1;
    }
  }
  return true;
}

[[noreturn]] void damaged_score(int64_t id, float score) {
  throw Exception(ErrorCode::kCorrupt, "vector of id " + std::to_string(id) + " gives score " + std::to_string(score) +
                                           ": the vectors or the query are damaged (not unit length)");
}

// Every concrete index: searches over row positions, which search()/range_search() turn into ids.
class RowIndex : public VectorIndex {
 public:
  // Top k rows per query accepted by `sel` (null: all), best first; -1 rows pad a short list.
  virtual void search_rows(const float* queries, int nq, int k, const faiss::IDSelector* sel, float* scores,
                           int64_t* rows) const = 0;
  // Rows scoring above `radius`, per query.
  virtual void range_rows(const float* queries, int nq, float radius, const faiss::IDSelector* sel,
                          faiss::RangeSearchResult* result) const = 0;
  virtual float slack() const { return kScoreSlack; }

  std::vector<std::vector<SearchHit>> search(const float* queries, int nq, int k,
                                             const std::function<bool(int64_t)>& allowed) const override {
    const RowSelection selection(ids(), size(), allowed);
    return search_selected(queries, nq, k, selection.selector());
  }
  std::vector<std::vector<SearchHit>> range_search(const float* queries, int nq, float min_score,
                                                   const std::function<bool(int64_t)>& allowed) const override {
    const RowSelection selection(ids(), size(), allowed);
    return range_selected(queries, nq, min_score, selection.selector());
  }

  std::vector<std::vector<SearchHit>> search_selected(const float* queries, int nq, int k,
                                                      const faiss::IDSelector* sel) const {
    std::vector<std::vector<SearchHit>> out(static_cast<size_t>(nq));
    const int64_t n = size();
    if (nq <= 0 || k <= 0 || n == 0) return out;
    k = static_cast<int>(std::min<int64_t>(k, n));
    std::vector<float> scores(static_cast<size_t>(nq) * k);
    std::vector<int64_t> rows(static_cast<size_t>(nq) * k, -1);
    search_rows(queries, nq, k, sel, scores.data(), rows.data());
    for (int q = 0; q < nq; ++q) {
      for (int j = 0; j < k; ++j) {
        const int64_t row = rows[static_cast<size_t>(q) * k + j];
        if (row < 0 || row >= n) continue;
        out[q].push_back(SearchHit{ids()[row], checked(ids()[row], scores[static_cast<size_t>(q) * k + j])});
      }
    }
    return out;
  }

  std::vector<std::vector<SearchHit>> range_selected(const float* queries, int nq, float min_score,
                                                     const faiss::IDSelector* sel) const {
    std::vector<std::vector<SearchHit>> out(static_cast<size_t>(nq));
    const int64_t n = size();
    if (nq <= 0 || n == 0) return out;
    // FAISS keeps inner products strictly above the radius.
    const float radius = std::nextafter(std::max(min_score, -2.0f), -3.0f);
    faiss::RangeSearchResult result(static_cast<size_t>(nq));
    range_rows(queries, nq, radius, sel, &result);
    for (int q = 0; q < nq; ++q) {
      for (size_t j = result.lims[q]; j < result.lims[q + 1]; ++j) {
        const int64_t row = result.labels[j];
        if (row < 0 || row >= n) continue;
        const float score = checked(ids()[row], result.distances[j]);
        if (score < min_score) continue;
        out[q].push_back(SearchHit{ids()[row], score});
      }
    }
    return out;
  }

 private:
  // Unit vectors give cosines in [-1, 1] up to rounding (or quantization); anything else is damage
  // (of the vectors or of the query), never a result.
  float checked(int64_t id, float score) const {
    if (!std::isfinite(score) || std::fabs(score) > 1.0f + slack()) damaged_score(id, score);
    return std::clamp(score, -1.0f, 1.0f);
  }
};

// Exact fp32 rows, searched with FAISS's brute-force kernels (BLAS).
class FlatRowIndex : public RowIndex {
 public:
  void search_rows(const float* queries, int nq, int k, const faiss::IDSelector* sel, float* scores,
                   int64_t* rows) const override {
    use_blas_for_single_queries();
    const size_t d = static_cast<size_t>(dim());
    // A lone query: one range of rows per thread, each scanned on that thread (BLAS without a selector,
    // FAISS's own loop with one). FAISS would run it on one core with a selector, and without one let
    // OpenBLAS thread a 1-row product, which took longer on 2 threads than on 1 (200,000 rows of 512:
    // 48 ms on 2, 42 on 1; split: 23).
    if (search_split(size(), nq, k, scores, rows, [&](int64_t lo, int64_t hi, float* s, int64_t* r) {
          const OffsetSelection part(lo, sel);
          faiss::knn_inner_product(queries, vectors() + static_cast<size_t>(lo) * d, d, static_cast<size_t>(nq),
                                   static_cast<size_t>(hi - lo), static_cast<size_t>(k), s, r, sel ? &part : nullptr);
          for (size_t i = 0; i < static_cast<size_t>(nq) * static_cast<size_t>(k); ++i) {
            if (r[i] >= 0) r[i] += lo;
          }
        })) {
      return;
    }
    faiss::knn_inner_product(queries, vectors(), d, static_cast<size_t>(nq), static_cast<size_t>(size()),
                             static_cast<size_t>(k), scores, rows, sel);
  }
  void range_rows(const float* queries, int nq, float radius, const faiss::IDSelector* sel,
                  faiss::RangeSearchResult* result) const override {
    use_blas_for_single_queries();
    faiss::range_search_inner_product(queries, vectors(), static_cast<size_t>(dim()), static_cast<size_t>(nq),
                                      static_cast<size_t>(size()), radius, result, sel);
  }
};

class MemoryVectorIndex : public FlatRowIndex {
 public:
  MemoryVectorIndex(int dim, std::vector<int64_t> ids, std::vector<float> vectors)
      : dim_(dim), ids_(std::move(ids)), vectors_(std::move(vectors)) {}
  int dim() const override { return dim_; }
  int64_t size() const override { return static_cast<int64_t>(ids_.size()); }
  const int64_t* ids() const override { return ids_.data(); }
  const float* vectors() const override { return vectors_.data(); }

 private:
  int dim_;
  std::vector<int64_t> ids_;
  std::vector<float> vectors_;
};

class MappedVectorIndex : public FlatRowIndex {
 public:
  // The ids start at an offset of the file that is not 8-byte aligned (FAISS's layout), so they are
  // copied out (8 MB at a million vectors, against 2 GB of vectors that stay mapped).
  MappedVectorIndex(void* base, size_t bytes, int dim, int64_t n, const float* vectors, const uint8_t* ids)
      : base_(base), bytes_(bytes), dim_(dim), n_(n), vectors_(vectors), ids_(static_cast<size_t>(n)) {
    if (n > 0) std::memcpy(ids_.data(), ids, static_cast<size_t>(n) * sizeof(int64_t));
  }
  ~MappedVectorIndex() override { ::munmap(base_, bytes_); }
  MappedVectorIndex(const MappedVectorIndex&) = delete;
  MappedVectorIndex& operator=(const MappedVectorIndex&) = delete;
  int dim() const override { return dim_; }
  int64_t size() const override { return n_; }
  const int64_t* ids() const override { return ids_.data(); }
  const float* vectors() const override { return vectors_; }

 private:
  void* base_;
  size_t bytes_;
  int dim_;
  int64_t n_;
  const float* vectors_;
  std::vector<int64_t> ids_;
};

// The canonical name of a FAISS index's structure (what VectorIndex::type() returns): the same
// string for a snapshot read back and for an empty index the factory builds from the same spec.
std::string describe(const faiss::Index* index) {
  auto sq_name = [](faiss::ScalarQuantizer::QuantizerType t) -> std::string {
    switch (t) {
      case faiss::ScalarQuantizer::QT_fp16: return "SQfp16";
      case faiss::ScalarQuantizer::QT_8bit: return "SQ8";
      case faiss::ScalarQuantizer::QT_4bit: return "SQ4";
      case faiss::ScalarQuantizer::QT_6bit: return "SQ6";
      case faiss::ScalarQuantizer::QT_8bit_uniform: return "SQ8_uniform";
      default: return "SQ" + std::to_string(static_cast<int>(t));
    }
  };
  if (dynamic_cast<const faiss::IndexFlat*>(index)) return "flat";
  if (const auto* sq = dynamic_cast<const faiss::IndexScalarQuantizer*>(index)) {
    const std::string q = sq_name(sq->sq.qtype);
    return q == "SQfp16" ? "flat-fp16" : q == "SQ8" ? "flat-sq8" : q;
  }
  if (const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index)) {
    std::string codes = "?";
    if (const auto* s = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(ivf)) codes = sq_name(s->sq.qtype);
    else if (dynamic_cast<const faiss::IndexIVFFlat*>(ivf)) codes = "Flat";
    else if (const auto* pq = dynamic_cast<const faiss::IndexIVFPQ*>(ivf)) {
      codes = "PQ" + std::to_string(pq->pq.M) + (pq->pq.nbits != 8 ? "x" + std::to_string(pq->pq.nbits) : "");
    }
    // The coarse quantizer when it is not a flat one ("IVF1024_HNSW32,SQ8").
    std::string coarse;
    if (const auto* h = dynamic_cast<const faiss::IndexHNSW*>(ivf->quantizer)) {
      coarse = "_HNSW" + std::to_string(h->hnsw.nb_neighbors(1));
    }
    return "IVF" + std::to_string(ivf->nlist) + coarse + "," + codes;
  }
  if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(index)) {
    const std::string storage = hnsw->storage ? describe(hnsw->storage) : "flat";
    return "HNSW" + std::to_string(hnsw->hnsw.nb_neighbors(1)) +
           (storage == "flat"        ? ""
            : storage == "flat-fp16" ? ",SQfp16"
            : storage == "flat-sq8"  ? ",SQ8"
                                     : "," + storage);
  }
  if (const auto* pq = dynamic_cast<const faiss::IndexPQ*>(index)) {
    return "PQ" + std::to_string(pq->pq.M) + (pq->pq.nbits != 8 ? "x" + std::to_string(pq->pq.nbits) : "");
  }
  if (const auto* t = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    std::string out;
    for (const faiss::VectorTransform* vt : t->chain) {
      if (const auto* opq = dynamic_cast<const faiss::OPQMatrix*>(vt)) {
        out += "OPQ" + std::to_string(opq->M) + "_" + std::to_string(opq->d_out);
      } else if (dynamic_cast<const faiss::PCAMatrix*>(vt)) {
        out += "PCA" + std::to_string(vt->d_out);
      } else if (dynamic_cast<const faiss::RandomRotationMatrix*>(vt)) {
        out += "RR" + std::to_string(vt->d_out);
      } else {
        out += std::string("faiss:") + typeid(*vt).name();
      }
      out += ",";
    }
    const std::string inner = t->index ? describe(t->index) : "flat";
    return out + (inner == "flat-fp16" ? "SQfp16" : inner == "flat-sq8" ? "SQ8" : inner == "flat" ? "Flat" : inner);
  }
  return std::string("faiss:") + typeid(*index).name();
}

// A snapshot of any other type: FAISS's own index (positions as labels), with the ids beside it.
// The index a wrapper holds (a transform's, a refinement's base, HNSW's storage), else null.
faiss::Index* wrapped(const faiss::Index* index) {
  if (auto* t = dynamic_cast<const faiss::IndexPreTransform*>(index)) return t->index;
  if (auto* r = dynamic_cast<const faiss::IndexRefine*>(index)) return r->base_index;
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(index)) return h->storage;
  return nullptr;
}

// The first index of type T in `index` and what it wraps.
template <typename T>
T* find_in(faiss::Index* index) {
  for (; index; index = wrapped(index)) {
    if (auto* t = dynamic_cast<T*>(index)) return t;
  }
  return nullptr;
}

class FaissVectorIndex : public RowIndex {
 public:
  FaissVectorIndex(std::unique_ptr<faiss::Index> index, std::vector<int64_t> ids)
      : index_(std::move(index)), ids_(std::move(ids)), type_(describe(index_.get())) {}
  int dim() const override { return index_->d; }
  int64_t size() const override { return static_cast<int64_t>(ids_.size()); }
  const int64_t* ids() const override { return ids_.data(); }
  const float* vectors() const override { return nullptr; }
  std::string type() const override { return type_; }
  std::string search_parameter() const override {
    if (auto* ivf = find_in<faiss::IndexIVF>(index_.get())) return "nprobe " + std::to_string(ivf->nprobe);
    if (auto* hnsw = find_in<faiss::IndexHNSW>(index_.get())) return "efSearch " + std::to_string(hnsw->hnsw.efSearch);
    return "";
  }
  bool exact() const override { return false; }
  float slack() const override { return kApproximateScoreSlack; }

  void search_rows(const float* queries, int nq, int k, const faiss::IDSelector* sel, float* scores,
                   int64_t* rows) const override {
    // 8-bit and fp16 codes (`ivf`, `flat-sq8`, `flat-fp16`): cnclip's AVX2 scan (sq_scan.h), as fast
    // as memory where FAISS 1.7.3 decodes one dimension at a time.
    if (sq_scan_serves(index_.get())) {
      const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index_.get());
      sq_search(*index_, nq, queries, k, ivf ? nprobe_for(*ivf, k) : 0, sel, scores, rows);
      return;
    }
    // Any other scalar-quantized flat index (4- or 6-bit codes; fp16 on a CPU without F16C): FAISS
    // scans every code of a query on one thread, so split the rows (each part still steps over the
    // others' codes, but scores only its own).
    if (dynamic_cast<const faiss::IndexScalarQuantizer*>(index_.get()) &&
        search_split(size(), nq, k, scores, rows, [&](int64_t lo, int64_t hi, float* s, int64_t* r) {
          const RangeSelection part(lo, hi, sel);
          std::vector<faiss::Index::idx_t> labels(static_cast<size_t>(nq) * k, -1);
          faiss_call([&] {
            faiss::SearchParameters params;
            params.sel = const_cast<RangeSelection*>(&part);
            index_->search(nq, queries, k, s, labels.data(), &params);
          });
          std::copy(labels.begin(), labels.end(), r);
        })) {
      return;
    }
    std::vector<faiss::Index::idx_t> labels(static_cast<size_t>(nq) * k, -1);
    faiss_call([&] {
      auto params = parameters(sel, k);
      index_->search(nq, queries, k, scores, labels.data(), params.get());
    });
    std::copy(labels.begin(), labels.end(), rows);
  }

  void range_rows(const float* queries, int nq, float radius, const faiss::IDSelector* sel,
                  faiss::RangeSearchResult* result) const override {
    // Every list of an IVF (below), every row of a flat one, at memory speed.
    if (sq_scan_serves(index_.get())) {
      sq_range_search(*index_, nq, queries, radius, sel, result);
      return;
    }
    if (dynamic_cast<const faiss::IndexIVF*>(index_.get())) {
      faiss_call([&] {
        // Every list: which lists hold scores above the radius is not known, and the tuned nprobe
        // kept 7 of 68 photos of `--sort date --threshold -1` (every photo).
        auto params = parameters(sel, size());
        index_->range_search(nq, queries, radius, result, params.get());
      });
      return;
    }
    // FAISS 1.7.3 has no range search for scalar-quantized flat or HNSW indexes: top-k searches with
    // a growing k until the last score is below the radius (or every row is in).
    faiss::RangeSearchPartialResult partial(result);
    for (int q = 0; q < nq; ++q) {
      const float* query = queries + static_cast<size_t>(q) * dim();
      int64_t k = std::min<int64_t>(256, size());
      std::vector<float> scores;
      std::vector<int64_t> rows;
      while (true) {
        scores.assign(static_cast<size_t>(k), 0);
        rows.assign(static_cast<size_t>(k), -1);
        search_rows(query, 1, static_cast<int>(k), sel, scores.data(), rows.data());
        if (k >= size() || k >= INT32_MAX / 2 || rows[k - 1] < 0 || scores[k - 1] <= radius) break;
        k = std::min<int64_t>(k * 4, size());
      }
      auto& res = partial.new_result(q);
      for (int64_t j = 0; j < k; ++j) {
        if (rows[j] >= 0 && scores[j] > radius) res.add(scores[j], rows[j]);
      }
    }
    partial.finalize();
  }

 private:
  template <typename F>
  static void faiss_call(F&& f) {
    try {
      f();
    } catch (const faiss::FaissException& e) {
      throw Exception(ErrorCode::kInternal, std::string("FAISS: ") + e.what());
    }
  }
  // The tuned nprobe, or more for a large k (below).
  int64_t nprobe_for(const faiss::IndexIVF& ivf, int64_t k) const {
    const auto nlist = static_cast<int64_t>(ivf.nlist), n = std::max<int64_t>(size(), 1);
    const int64_t for_k = std::min(nlist, (nlist * 2 * k + n - 1) / n);
    return std::max(static_cast<int64_t>(ivf.nprobe), for_k);
  }
  // The search parameters stored in the snapshot (nprobe, efSearch), with the row selector. For k
  // results, an IVF probes at least the lists that should hold 2k vectors, and HNSW explores at
  // least k: the tuned values are for top 10, and a large k (-k 100 over a 72-photo IVF16 at nprobe
  // 4) otherwise found only what a few lists held (18).
  // A wrapper passes them on to the index it wraps (IndexIVF refuses any other kind: a wrapped IVF,
  // e.g. "PCA64,IVF,SQ8", failed every search).
  std::unique_ptr<faiss::SearchParameters> parameters(const faiss::IDSelector* sel, int64_t k = 0) const {
    std::unique_ptr<faiss::SearchParameters> p;
    if (const auto* ivf = find_in<faiss::IndexIVF>(index_.get())) {
      auto q = std::make_unique<faiss::SearchParametersIVF>();
      q->nprobe = static_cast<size_t>(nprobe_for(*ivf, k));
      q->max_codes = ivf->max_codes;
      p = std::move(q);
    } else if (const auto* hnsw = find_in<faiss::IndexHNSW>(index_.get())) {
      auto q = std::make_unique<faiss::SearchParametersHNSW>();
      q->efSearch = static_cast<int>(std::max<int64_t>(hnsw->hnsw.efSearch, std::min<int64_t>(k, INT32_MAX)));
      p = std::move(q);
    } else {
      p = std::make_unique<faiss::SearchParameters>();
    }
    p->sel = const_cast<faiss::IDSelector*>(sel);
    return p;
  }

  std::unique_ptr<faiss::Index> index_;
  std::vector<int64_t> ids_;
  std::string type_;
};

// A snapshot plus the changes committed after it (VectorIndex::with_delta).
class DeltaVectorIndex : public VectorIndex {
 public:
  DeltaVectorIndex(std::unique_ptr<VectorIndex> base, const std::vector<int64_t>& changed,
                   std::unique_ptr<VectorIndex> fresh)
      : base_(std::move(base)), fresh_(std::move(fresh)) {
    row_base_ = dynamic_cast<const RowIndex*>(base_.get());
    if (!row_base_) throw Exception(ErrorCode::kInternal, "a delta needs a snapshot as its base");
    const std::unordered_set<int64_t> masked(changed.begin(), changed.end());
    const int64_t n = base_->size();
    keep_.assign(static_cast<size_t>((n + 7) / 8), 0);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (masked.count(base_->ids()[i]) == 0) {
        keep_[static_cast<size_t>(i >> 3)] |= static_cast<uint8_t>(1u << (i & 7));
        ++kept;
      }
    }
    size_ = kept + fresh_->size();
    masks_rows_ = kept < n;
  }
  int dim() const override { return base_->dim(); }
  int64_t size() const override { return size_; }
  const int64_t* ids() const override { return nullptr; }
  const float* vectors() const override { return nullptr; }
  std::string type() const override { return base_->type(); }
  std::string search_parameter() const override { return base_->search_parameter(); }
  bool exact() const override { return base_->exact() && fresh_->exact(); }

  std::vector<std::vector<SearchHit>> search(const float* queries, int nq, int k,
                                             const std::function<bool(int64_t)>& allowed) const override {
    // Only a delta that changed or removed rows of the snapshot needs a selector: without one a lone
    // query's flat scan goes through BLAS.
    const RowSelection selection(base_->ids(), base_->size(), allowed, masks_rows_ ? &keep_ : nullptr);
    auto hits = row_base_->search_selected(queries, nq, k, selection.selector());
    auto more = fresh_->search(queries, nq, k, allowed);
    for (int q = 0; q < nq; ++q) {
      auto& h = hits[q];
      h.insert(h.end(), more[q].begin(), more[q].end());
      std::sort(h.begin(), h.end(), [](const SearchHit& a, const SearchHit& b) {
        return a.score != b.score ? a.score > b.score : a.id < b.id;
      });
      if (static_cast<int64_t>(h.size()) > k) h.resize(static_cast<size_t>(std::max(k, 0)));
    }
    return hits;
  }
  std::vector<std::vector<SearchHit>> range_search(const float* queries, int nq, float min_score,
                                                   const std::function<bool(int64_t)>& allowed) const override {
    const RowSelection selection(base_->ids(), base_->size(), allowed, masks_rows_ ? &keep_ : nullptr);
    auto hits = row_base_->range_selected(queries, nq, min_score, selection.selector());
    auto more = fresh_->range_search(queries, nq, min_score, allowed);
    for (int q = 0; q < nq; ++q) hits[q].insert(hits[q].end(), more[q].begin(), more[q].end());
    return hits;
  }

 private:
  std::unique_ptr<VectorIndex> base_;
  std::unique_ptr<VectorIndex> fresh_;
  const RowIndex* row_base_ = nullptr;
  std::vector<uint8_t> keep_;  // bit per base row: not changed since the snapshot
  bool masks_rows_ = false;    // some bit of keep_ is clear
  int64_t size_ = 0;
};

// FAISS's reader over a mapped file.
// FAISS's writer into an AtomicFileWriter, hashing what passes.
struct HashingWriter : faiss::IOWriter {
  AtomicFileWriter file;
  XXH3_state_t* hash = XXH3_createState();
  uint64_t bytes = 0;
  HashingWriter(const std::string& path, const std::string& access_of) : file(path, access_of) {
    if (!hash) throw Exception(ErrorCode::kInternal, "out of memory");
    XXH3_64bits_reset(hash);
  }
  ~HashingWriter() override { XXH3_freeState(hash); }
  size_t operator()(const void* ptr, size_t item, size_t count) override {
    file.write(ptr, item * count);
    XXH3_64bits_update(hash, ptr, item * count);
    bytes += item * count;
    return count;
  }
  void commit() {
    const uint64_t covered = bytes, digest = XXH3_64bits_digest(hash);
    file.write(kTrailerMagic, 8);
    file.write(&covered, 8);
    file.write(&digest, 8);
    file.commit();
  }
};

// The factory string FAISS builds for a resolved type.
std::string factory_string(const std::string& type) {
  if (type == "flat-fp16") return "SQfp16";
  if (type == "flat-sq8") return "SQ8";
  return type;
}

struct InterruptOnSignal : faiss::InterruptCallback {
  bool want_interrupt() override { return interrupt_requested(); }
};

// The reason at the end of a message that starts with where it comes from: FAISS's "Error in
// <function> at <file>:<line>: " (and an "Error: '<check>' failed: "), a file's "<path>: ".
std::string reason_of(std::string message) {
  const auto colon = message.rfind(": ");
  if (colon != std::string::npos) message = message.substr(colon + 2);
  while (!message.empty() && message.back() == ' ') message.pop_back();
  return message;
}

std::unique_ptr<faiss::Index> make_index(const std::string& type, int dim, const std::string& shown = "") {
  try {
    return std::unique_ptr<faiss::Index>(
        faiss::index_factory(dim, factory_string(type).c_str(), faiss::METRIC_INNER_PRODUCT));
  } catch (const faiss::FaissException& e) {
    // The reason quotes the string FAISS was given: the user's, not the one with a list count filled in.
    std::string why = reason_of(e.what());
    const std::string given = factory_string(type);
    if (!shown.empty() && shown != type) {
      for (auto at = why.find(given); at != std::string::npos; at = why.find(given, at + shown.size())) {
        why.replace(at, given.size(), shown);
      }
    }
    throw Exception(ErrorCode::kInvalidArgument, "--vectors: FAISS's index factory cannot build '" +
                                                     (shown.empty() ? type : shown) + "' (" + why + ")");
  }
}

// "IVF," (no list count) gets ivf_nlist(n).
std::string fill_nlist(const std::string& text, int64_t n) {
  static const std::regex bare_ivf("(^|,)IVF(,|$)");
  return std::regex_replace(text, bare_ivf, "$1IVF" + std::to_string(ivf_nlist(n)) + "$2");
}

// Queries for tuning: vectors of the index moved away from themselves, half to a cosine of 0.8
// (a similar photo as the query) and half to 0.5 (further out, as text queries are: Chinese-CLIP's
// text and image embeddings meet at cosines of ~0.3-0.5), so the tuning does not count on queries
// that sit on an indexed vector.
std::vector<float> tuning_queries(const std::vector<float>& sample, int dim, int count, std::mt19937& rng) {
  const int64_t ns = static_cast<int64_t>(sample.size()) / dim;
  std::normal_distribution<float> normal;
  std::vector<float> out(static_cast<size_t>(count) * dim);
  for (int q = 0; q < count; ++q) {
    const float* x = &sample[static_cast<size_t>(rng() % static_cast<uint64_t>(ns)) * dim];
    std::vector<float> noise(static_cast<size_t>(dim));
    double dot = 0, norm = 0;
    for (auto& v : noise) v = normal(rng);
    for (int d = 0; d < dim; ++d) dot += noise[d] * x[d];
    for (int d = 0; d < dim; ++d) noise[d] -= static_cast<float>(dot) * x[d];  // orthogonal to x
    for (float v : noise) norm += double{v} * v;
    const double cosine = q % 2 == 0 ? 0.8 : 0.5, r = std::sqrt(1 / (cosine * cosine) - 1);
    double total = 0;
    float* o = &out[static_cast<size_t>(q) * dim];
    for (int d = 0; d < dim; ++d)
      total += std::pow(o[d] = x[d] + static_cast<float>(r * noise[d] / std::sqrt(norm)), 2);
    for (int d = 0; d < dim; ++d) o[d] = static_cast<float>(o[d] / std::sqrt(total));
  }
  return out;
}

}  // namespace

int ivf_nlist(int64_t n) {
  const double root = std::sqrt(static_cast<double>(std::max<int64_t>(n, 1)));
  int nlist = 16;
  while (nlist < 65536 &&
         std::fabs(std::log2(nlist * 2.0) - std::log2(root)) < std::fabs(std::log2(nlist) - std::log2(root))) {
    nlist *= 2;
  }
  return nlist;
}

VectorSpec VectorSpec::parse(const std::string& text, int dim) {
  VectorSpec spec;
  spec.text = text;
  for (const char* keyword : {"auto", "flat", "flat-fp16", "flat-sq8", "ivf"}) {
    if (text == keyword) return spec;
  }
  if (text.empty()) throw Exception(ErrorCode::kInvalidArgument, "--vectors: the index type is empty");
  auto refuse = [&](const std::string& why) {
    return Exception(ErrorCode::kInvalidArgument, "--vectors " + text + ": " + why);
  };
  // What FAISS's factory accepts but cannot use: checked before it allocates (IVF1000000000 made
  // 24 GB of empty lists) or crashes later (IVF0 and HNSW0 at the first write, every write after).
  static const std::regex count_of("(IVF|HNSW|PQ[0-9]+x)([0-9]+)"), zero("(^|[^0-9.])0+([^0-9.]|$)");
  if (std::regex_search(text, zero)) throw refuse("a count of 0");
  for (std::sregex_iterator m(text.begin(), text.end(), count_of), end; m != end; ++m) {
    const std::string what = (*m)[1].str(), digits = (*m)[2].str();
    const bool ivf = what == "IVF", hnsw = what == "HNSW";
    const long long low = hnsw ? 2 : 1, high = ivf ? kMaxIvfLists : hnsw ? kMaxHnswNeighbours : kMaxPqBits;
    const std::string name = ivf ? "IVF's lists" : hnsw ? "HNSW's neighbours" : "PQ's bits";
    if (digits.size() > 9 || std::stoll(digits) > high || std::stoll(digits) < low) {
      throw refuse(name + " are " + std::to_string(low) + " to " + std::to_string(high) + ", not " + digits);
    }
  }
  // FAISS 1.7.3's NSG divides by zero below ~200 vectors (SIGFPE); an IDMap is cnclip's own job,
  // and so is re-scoring (a refinement also refuses the search parameters a filter needs).
  for (const std::string part : {"NSG", "IDMap", "RFlat", "Refine"}) {
    if (text.find(part) == std::string::npos) continue;
    if (part == "NSG") throw refuse("NSG is not supported (FAISS's crashes on small indexes)");
    if (part == "IDMap") throw refuse("cnclip keeps the ids itself (leave out IDMap)");
    throw refuse("cnclip re-scores candidates exactly itself (leave out " + part + ")");
  }
  const auto index = make_index(fill_nlist(text, 1'000'000), dim > 0 ? dim : 512, text);  // throws naming it
  // A PCA cannot give more dimensions than it has (PCA64 of 32-d vectors failed its training at
  // every size, so it would be retried for ever).
  if (const auto* t = dynamic_cast<const faiss::IndexPreTransform*>(index.get())) {
    for (const faiss::VectorTransform* vt : t->chain) {
      if (dynamic_cast<const faiss::PCAMatrix*>(vt) && vt->d_out > vt->d_in) {
        throw refuse("a PCA to " + std::to_string(vt->d_out) + " dimensions of " + std::to_string(vt->d_in) +
                     "-dimensional vectors");
      }
    }
  }
  return spec;
}

std::string VectorSpec::resolve(int64_t n) const {
  if (text == "flat" || text == "flat-fp16" || text == "flat-sq8") return text;
  if (text == "ivf" || (text == "auto" && n > kAutoApproximateAbove))
    return "IVF" + std::to_string(ivf_nlist(n)) + ",SQ8";
  if (text == "auto") return "flat";
  return fill_nlist(text, n);
}

namespace {
int64_t vectors_to_train(faiss::Index* index) {
  int64_t need = 0;
  if (auto* ivf = find_in<faiss::IndexIVF>(index)) need = static_cast<int64_t>(ivf->nlist);
  if (auto* p = find_in<faiss::IndexIVFPQ>(index)) need = std::max<int64_t>(need, p->pq.ksub);
  if (auto* p = find_in<faiss::IndexIVFPQFastScan>(index)) need = std::max<int64_t>(need, p->pq.ksub);
  if (auto* p = find_in<faiss::IndexPQ>(index)) need = std::max<int64_t>(need, p->pq.ksub);
  if (auto* p = find_in<faiss::IndexPQFastScan>(index)) need = std::max<int64_t>(need, p->pq.ksub);
  return need;
}
}  // namespace

int64_t vectors_needed_to_train(const std::string& type, int dim) {
  if (type == "flat") return 0;
  return vectors_to_train(make_index(type, dim).get());
}

std::string canonical_vector_type(const std::string& type, int dim) {
  if (type == "flat") return type;
  return describe(make_index(type, dim).get());
}

std::unique_ptr<VectorIndex> VectorIndex::from_vectors(int dim, std::vector<int64_t> ids, std::vector<float> vectors) {
  return std::make_unique<MemoryVectorIndex>(dim, std::move(ids), std::move(vectors));
}

std::unique_ptr<VectorIndex> VectorIndex::with_delta(std::unique_ptr<VectorIndex> base, std::vector<int64_t> changed,
                                                     std::unique_ptr<VectorIndex> fresh) {
  return std::make_unique<DeltaVectorIndex>(std::move(base), changed, std::move(fresh));
}

std::vector<std::vector<SearchHit>> VectorIndex::search(const float*, int nq, int,
                                                        const std::function<bool(int64_t)>&) const {
  return std::vector<std::vector<SearchHit>>(static_cast<size_t>(std::max(nq, 0)));
}

std::vector<std::vector<SearchHit>> VectorIndex::range_search(const float*, int nq, float,
                                                              const std::function<bool(int64_t)>&) const {
  return std::vector<std::vector<SearchHit>>(static_cast<size_t>(std::max(nq, 0)));
}

namespace {

// FAISS's reader over [0, end) of a file descriptor. pread copies into FAISS's own memory, and
// nothing of the file stays mapped: a mapped copy beside FAISS's doubled the peak RSS of opening a
// flat-fp16 snapshot (2035 MB for a 984 MB file at 1M vectors).
struct DescriptorReader : faiss::IOReader {
  int fd;
  uint64_t at = 0, end;
  DescriptorReader(int f, uint64_t e) : fd(f), end(e) {}
  size_t operator()(void* ptr, size_t item, size_t count) override {
    if (item == 0 || count == 0) return 0;
    const size_t fit = static_cast<size_t>(std::min<uint64_t>(count, (end - at) / item));
    if (!read_at(fd, at, ptr, fit * item)) return 0;
    at += fit * item;
    return fit;
  }
};

// A snapshot written by build_snapshot: the trailer and checksum checked (read in 8 MB pieces), then
// FAISS's reader over the file.
std::unique_ptr<VectorIndex> open_faiss_file(const std::string& path, int fd, size_t bytes) {
  auto corrupt = [&](const std::string& why) {
    return Exception(ErrorCode::kCorrupt, path + ": not a usable vector file (" + why + ")");
  };
  uint8_t trailer[kTrailerBytes];
  if (bytes < kTrailerBytes || !read_at(fd, bytes - kTrailerBytes, trailer, kTrailerBytes) ||
      std::memcmp(trailer, kTrailerMagic, 8) != 0) {
    throw corrupt("no checksum, or cut short or padded");
  }
  uint64_t covered = 0, stored = 0;
  std::memcpy(&covered, trailer + 8, 8);
  std::memcpy(&stored, trailer + 16, 8);
  if (covered != bytes - kTrailerBytes) throw corrupt("cut short or padded");
  {
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash(XXH3_createState(), &XXH3_freeState);
    if (!hash) throw Exception(ErrorCode::kInternal, "out of memory");
    XXH3_64bits_reset(hash.get());
    std::vector<uint8_t> piece(std::min<uint64_t>(covered, 8u << 20));
    for (uint64_t at = 0; at < covered;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(), covered - at));
      if (!read_at(fd, at, piece.data(), n)) {
        if (errno == 0) throw corrupt("cut short");
        throw Exception(errno_error(path, errno, "cannot read vector file"));
      }
      XXH3_64bits_update(hash.get(), piece.data(), n);
      at += n;
    }
    if (XXH3_64bits_digest(hash.get()) != stored) throw corrupt("checksum mismatch");
  }
  std::unique_ptr<faiss::Index> read;
  try {
    DescriptorReader reader(fd, covered);
    read.reset(faiss::read_index(&reader));
  } catch (const faiss::FaissException& e) {
    throw corrupt(std::string("FAISS cannot read it: ") + e.what());
  }
  auto* idmap = dynamic_cast<faiss::IndexIDMap*>(read.get());
  if (!idmap || !idmap->index) throw corrupt("not a FAISS IndexIDMap");
  std::unique_ptr<faiss::Index> inner(idmap->index);
  idmap->own_fields = false;
  if (inner->metric_type != faiss::METRIC_INNER_PRODUCT) {
    // FAISS 1.7.3's factory makes some types with the L2 metric whatever it is asked (HNSW over PQ):
    // their scores would be distances, not cosines.
    throw corrupt(std::string("FAISS made it with the ") + (inner->metric_type == faiss::METRIC_L2 ? "L2" : "another") +
                  " metric, not the inner product cnclip searches with");
  }
  if (inner->d <= 0 || static_cast<int64_t>(idmap->id_map.size()) != inner->ntotal || idmap->ntotal != inner->ntotal) {
    throw corrupt("inconsistent header");
  }
  std::vector<int64_t> ids(idmap->id_map.begin(), idmap->id_map.end());
  return std::make_unique<FaissVectorIndex>(std::move(inner), std::move(ids));
}

}  // namespace

std::unique_ptr<VectorIndex> VectorIndex::open_file(const std::string& path, bool require_checksum) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Exception(errno_error(path, errno, "cannot open vector file"));
  struct stat st {};
  ::fstat(fd, &st);
  const size_t bytes = static_cast<size_t>(st.st_size);
  auto corrupt = [&](const std::string& why) {
    return Exception(ErrorCode::kCorrupt, path + ": not a usable vector file (" + why + ")");
  };
  if (bytes < kVectorsOffset) {
    ::close(fd);
    throw corrupt("too short");
  }
  uint8_t head[4 + kHeaderBytes + 4];
  if (!read_at(fd, 0, head, sizeof head)) {
    const int e = errno;
    ::close(fd);
    if (e == 0) throw corrupt("too short");
    throw Exception(errno_error(path, e, "cannot read vector file"));
  }
  if (std::memcmp(head, "IxM2", 4) != 0 || std::memcmp(head + 4 + kHeaderBytes, "IxFI", 4) != 0) {
    // Another type: FAISS reads it into its own memory.
    try {
      auto index = open_faiss_file(path, fd, bytes);
      ::close(fd);
      return index;
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  // Flat: searched in place. MAP_POPULATE reads the whole file in now (callers open it while other
  // work goes on), so the search itself does not stop on page faults.
  void* base = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (base == MAP_FAILED) throw Exception(errno_error(path, errno, "cannot map vector file"));
  const auto* p = static_cast<const uint8_t*>(base);
  auto fail = [&](const std::string& why) {
    ::munmap(base, bytes);
    throw corrupt(why);
  };
  int32_t d = 0, d2 = 0, metric = 0;
  int64_t n = 0, n2 = 0;
  uint64_t nfloats = 0, nids = 0;
  std::memcpy(&d, p + 4, 4);
  std::memcpy(&n, p + 8, 8);
  std::memcpy(&d2, p + 4 + kHeaderBytes + 4, 4);
  std::memcpy(&n2, p + 4 + kHeaderBytes + 8, 8);
  std::memcpy(&metric, p + 4 + kHeaderBytes + 4 + 29, 4);
  std::memcpy(&nfloats, p + kVectorsOffset - 8, 8);
  if (d <= 0 || n < 0 || d != d2 || n != n2 || metric != faiss::METRIC_INNER_PRODUCT ||
      nfloats != static_cast<uint64_t>(n) * static_cast<uint64_t>(d)) {
    fail("inconsistent header");
  }
  const size_t ids_offset = kVectorsOffset + nfloats * 4;
  if (bytes < ids_offset + 8) fail("cut short");
  std::memcpy(&nids, p + ids_offset, 8);
  const size_t data_bytes = ids_offset + 8 + nids * 8;
  if (nids != static_cast<uint64_t>(n) || bytes < data_bytes) fail("cut short");
  if (bytes == data_bytes) {
    if (require_checksum) fail("no checksum");
  } else {
    uint64_t covered = 0, stored = 0;
    if (bytes != data_bytes + kTrailerBytes || std::memcmp(p + data_bytes, kTrailerMagic, 8) != 0) {
      fail("cut short or padded");
    }
    std::memcpy(&covered, p + data_bytes + 8, 8);
    std::memcpy(&stored, p + data_bytes + 16, 8);
    if (covered != data_bytes || XXH3_64bits(p, data_bytes) != stored) fail("checksum mismatch");
  }
  return std::make_unique<MappedVectorIndex>(base, bytes, d, n, reinterpret_cast<const float*>(p + kVectorsOffset),
                                             p + ids_offset + 8);
}

namespace {
SnapshotBuild build_snapshot_of(const std::string& path, const std::string& type, int dim, int64_t n,
                                const VectorSource& fill, std::string* report, double max_probe_share,
                                const std::string& access_of);
}  // namespace

SnapshotBuild build_snapshot(const std::string& path, const std::string& type, int dim, int64_t n,
                             const VectorSource& fill, std::string* report, double max_probe_share,
                             const std::string& access_of) {
  // Ctrl-C reaches FAISS's k-means, searches and adds through its interrupt callback (checked between
  // iterations), which throws its own exception.
  static std::once_flag callback_set;
  std::call_once(callback_set, [] { faiss::InterruptCallback::instance.reset(new InterruptOnSignal); });
  try {
    return build_snapshot_of(path, type, dim, n, fill, report, max_probe_share, access_of);
  } catch (const faiss::FaissException& e) {
    if (interrupt_requested()) throw Exception(ErrorCode::kInterrupted, "interrupted");
    // A type that passed VectorSpec::parse and still fails (a case parse does not know): said, and
    // not thrown, so that no later write fails over it (IndexStore writes flat instead).
    if (report) *report = type + " could not be built (FAISS: " + reason_of(e.what()) + ")";
    return SnapshotBuild::kFailed;
  } catch (const std::bad_alloc&) {
    if (report) *report = type + " could not be built (out of memory)";
    return SnapshotBuild::kFailed;
  }
}

namespace {
SnapshotBuild build_snapshot_of(const std::string& path, const std::string& type, int dim, int64_t n,
                                const VectorSource& fill, std::string* report, double max_probe_share,
                                const std::string& access_of) {
  std::unique_ptr<faiss::Index> index = make_index(type, dim);
  if (!index->is_trained && n == 0) {
    if (report) *report = type + " cannot be trained on 0 vectors";
    return SnapshotBuild::kTooFewVectors;
  }
  // Ctrl-C: this function's own loops check it too.
  auto stop_if_interrupted = [] {
    if (interrupt_requested()) throw Exception(ErrorCode::kInterrupted, "interrupted");
  };
  // Found through wrappers too (OPQ and PCA transforms, RFlat refinement, HNSW's storage), whose
  // settings and tuning are the wrapped index's.
  auto* ivf = find_in<faiss::IndexIVF>(index.get());
  auto* hnsw = find_in<faiss::IndexHNSW>(index.get());
  const bool tune = (ivf || hnsw) && n > 0;
  // The training sample: every (n / ns)-th vector in id order. IVF k-means gets 64 vectors per list
  // (FAISS's warning floor is 39), capped by n; other quantizers (SQ ranges, PQ codebooks) 65,536.
  std::vector<float> sample;
  std::mt19937 rng(20261129);
  int64_t ns =
      std::min<int64_t>(n, std::max<int64_t>(65'536, ivf ? int64_t{64} * static_cast<int64_t>(ivf->nlist) : 0));
  // Tuning queries are made from vectors outside the training sample (held out): queries made from
  // the vectors k-means was fitted to overrated recall (1M bench vectors, IVF1024,SQ8 at nprobe 128:
  // 0.970 on such queries, 0.926 on the bench's own).
  constexpr int kTuningQueries = 500, kTop = 10;
  const int nq = tune ? kTuningQueries : 0;
  std::vector<float> held_out;
  if ((!index->is_trained || tune) && n > 0) {
    sample.reserve(static_cast<size_t>(ns) * dim);
    int64_t i = 0, taken = 0, held = 0;
    fill([&](int64_t, const float* v) {
      if (i % 4096 == 0) stop_if_interrupted();
      if (taken < ns && i * ns / n == taken) {
        sample.insert(sample.end(), v, v + dim);
        ++taken;
      } else if (held < nq && i >= (2 * held + 1) * n / (2 * nq)) {  // spread over the ids
        held_out.insert(held_out.end(), v, v + dim);
        ++held;
      }
      ++i;
    });
    ns = taken;
    if (!index->is_trained) {
      // FAISS's factory default for PQ codes ("PQ4", "IVF16,PQ4"; not "PQ4np") also trains polysemous
      // codes, for Hamming pre-filtering, which cnclip's searches do not use: 49 s for 600 16-d
      // vectors against 0.1 s without.
      if (auto* pq = find_in<faiss::IndexPQ>(index.get())) {
        pq->do_polysemous_training = false;
        pq->pq.cp.min_points_per_centroid = 1;
      }
      if (auto* ivfpq = find_in<faiss::IndexIVFPQ>(index.get())) {
        ivfpq->do_polysemous_training = false;
        ivfpq->pq.cp.min_points_per_centroid = 1;
      }
      if (auto* fast = find_in<faiss::IndexPQFastScan>(index.get())) fast->pq.cp.min_points_per_centroid = 1;
      if (auto* fast = find_in<faiss::IndexIVFPQFastScan>(index.get())) fast->pq.cp.min_points_per_centroid = 1;
      if (ivf) {
        ivf->cp.niter = 10;  // k-means iterations: FAISS's default 25 costs 2.5x for little (README "Scale")
        ivf->cp.max_points_per_centroid = 1 << 30;  // the sample above is the training set as it is
        ivf->cp.min_points_per_centroid = 1;        // a small index is trained as it is, without FAISS's warning
        ivf->cp.seed = 1234;
      }
      try {
        index->train(ns, sample.data());
      } catch (const faiss::FaissException& e) {
        stop_if_interrupted();
        // Parsed at a million vectors (VectorSpec::parse), so what fails here is the count.
        if (report)
          *report = type + " cannot be trained on " + std::to_string(ns) + " vectors (" + reason_of(e.what()) + ")";
        return SnapshotBuild::kTooFewVectors;
      }
    }
  }
  // Ground truth for tuning, gathered while adding: the exact top 10 of each tuning query. An index
  // small enough to be its own training sample has no held-out vectors: its queries come from the
  // sample.
  const bool from_held_out = static_cast<int64_t>(held_out.size()) / dim >= nq / 2;
  const std::vector<float> queries =
      tune ? tuning_queries(from_held_out ? held_out : sample, dim, nq, rng) : std::vector<float>{};
  held_out.clear();
  held_out.shrink_to_fit();
  sample.clear();
  sample.shrink_to_fit();
  std::vector<float> truth_scores(static_cast<size_t>(nq) * kTop, -2.0f);
  std::vector<int64_t> truth_rows(static_cast<size_t>(nq) * kTop, -1);
  faiss::IndexIDMap idmap(index.get());
  // Codes held whole in memory (flat types, HNSW's storage, a refinement's) get their final size at
  // once: grown by add(), their vector doubled, and the copy held the old and the new buffer at
  // once (flat-fp16 at 10M: 10.2 GB of codes, 19.9 GB peak RSS).
  idmap.id_map.reserve(static_cast<size_t>(n));
  for (faiss::Index* i = index.get(); i; i = wrapped(i)) {
    auto reserve = [n](faiss::Index* holder) {
      if (auto* flat = dynamic_cast<faiss::IndexFlatCodes*>(holder))
        flat->codes.reserve(static_cast<size_t>(n) * flat->code_size);
    };
    reserve(i);
    if (auto* r = dynamic_cast<faiss::IndexRefine*>(i)) reserve(r->refine_index);
  }
  std::vector<float> batch;
  std::vector<faiss::Index::idx_t> batch_ids;
  int64_t added = 0;
  constexpr int64_t kBatch = 65'536;
  auto flush = [&] {
    const auto count = static_cast<int64_t>(batch_ids.size());
    if (count == 0) return;
    if (tune) {
      std::vector<float> s(static_cast<size_t>(nq) * kTop);
      std::vector<int64_t> r(static_cast<size_t>(nq) * kTop);
      use_blas_for_single_queries();
      faiss::knn_inner_product(queries.data(), batch.data(), static_cast<size_t>(dim), static_cast<size_t>(nq),
                               static_cast<size_t>(count), kTop, s.data(), r.data());
      for (int q = 0; q < nq; ++q) {
        std::vector<std::pair<float, int64_t>> merged;
        for (int j = 0; j < kTop; ++j) {
          const size_t at = static_cast<size_t>(q) * kTop + j;
          if (truth_rows[at] >= 0) merged.emplace_back(truth_scores[at], truth_rows[at]);
          if (r[at] >= 0) merged.emplace_back(s[at], added + r[at]);
        }
        std::partial_sort(merged.begin(), merged.begin() + std::min<size_t>(kTop, merged.size()), merged.end(),
                          [](const auto& a, const auto& b) { return a.first > b.first; });
        for (int j = 0; j < kTop && j < static_cast<int>(merged.size()); ++j) {
          truth_scores[static_cast<size_t>(q) * kTop + j] = merged[j].first;
          truth_rows[static_cast<size_t>(q) * kTop + j] = merged[j].second;
        }
      }
    }
    stop_if_interrupted();
    idmap.add_with_ids(count, batch.data(), batch_ids.data());
    added += count;
    batch.clear();
    batch_ids.clear();
  };
  fill([&](int64_t id, const float* v) {
    for (int d = 0; d < dim; ++d) {
      if (!std::isfinite(v[d])) {
        throw Exception(ErrorCode::kCorrupt, path + ": vector of id " + std::to_string(id) + " is not finite");
      }
    }
    batch.insert(batch.end(), v, v + dim);
    batch_ids.push_back(id);
    if (static_cast<int64_t>(batch_ids.size()) == kBatch) flush();
  });
  flush();
  if (added != n)
    throw Exception(ErrorCode::kInternal, path + ": " + std::to_string(added) + " vectors, not " + std::to_string(n));
  if (tune) {
    // The smallest search parameter whose recall@10 (the share of the exact top 10 among the
    // candidates that cnclip re-scores exactly) reaches the target.
    const int k = static_cast<int>(std::min<int64_t>(candidates_for(kTop), n));
    std::vector<float> s(static_cast<size_t>(nq) * k);
    std::vector<faiss::Index::idx_t> r(static_cast<size_t>(nq) * k);
    auto recall = [&] {
      stop_if_interrupted();
      // The scan searches will use (sq_scan.h), a chunk of queries at a time so Ctrl-C is seen.
      if (sq_scan_serves(index.get())) {
        for (int at = 0; at < nq; at += 50) {
          stop_if_interrupted();
          const int count = std::min(50, nq - at);
          sq_search(*index, count, queries.data() + static_cast<size_t>(at) * dim, k,
                    ivf ? static_cast<int64_t>(ivf->nprobe) : 0, nullptr, s.data() + static_cast<size_t>(at) * k,
                    r.data() + static_cast<size_t>(at) * k);
        }
      } else {
        index->search(nq, queries.data(), k, s.data(), r.data());
      }
      int64_t found = 0, total = 0;
      for (int q = 0; q < nq; ++q) {
        const std::unordered_set<int64_t> got(r.begin() + static_cast<ptrdiff_t>(q) * k,
                                              r.begin() + static_cast<ptrdiff_t>(q + 1) * k);
        for (int j = 0; j < kTop; ++j) {
          const int64_t want = truth_rows[static_cast<size_t>(q) * kTop + j];
          if (want < 0) continue;
          ++total;
          found += got.count(want);
        }
      }
      return total ? static_cast<double>(found) / static_cast<double>(total) : 1.0;
    };
    // A margin over the target: the recall of 500 queries is itself a sample.
    const double target = VectorSpec::kTargetRecall + 0.01;
    double got = 0;
    std::string name;
    int64_t value = 0;
    bool pays_off = true;
    if (ivf) {
      name = "nprobe";
      const auto nlist = static_cast<int64_t>(ivf->nlist);
      const auto most = static_cast<int64_t>(static_cast<double>(nlist) * max_probe_share);
      auto recall_at = [&](int64_t probes) {
        ivf->nprobe = static_cast<size_t>(std::min(probes, nlist));
        return recall();
      };
      // Doubling to the first value that reaches the target, then two halvings of the last step
      // (e.g. 256 -> 512, then 384, then 320 or 448): the scan costs in proportion to nprobe.
      int64_t low = 0;
      for (value = 1;; value *= 2) {
        if (value > most) {  // searched no further: IVF would scan more than it may
          pays_off = false;
          break;
        }
        got = recall_at(value);
        if (got >= target || value >= nlist) break;
        low = value;
      }
      value = std::min(value, nlist);
      for (int step = 0; step < 2 && pays_off && got >= target && value - low > 1; ++step) {
        const int64_t mid = (low + value) / 2;
        const double at_mid = recall_at(mid);
        if (at_mid >= target) {
          value = mid;
          got = at_mid;
        } else {
          low = mid;
        }
      }
      if (value > most) pays_off = false;
      ivf->nprobe = static_cast<size_t>(value);
      if (!pays_off) {
        if (report) {
          char line[256];
          std::snprintf(line, sizeof line,
                        "%s: recall@10 %.3f at nprobe %lld of %lld lists, short of %.2f within %.0f%% of them: no "
                        "faster than flat on these vectors",
                        describe(index.get()).c_str(), got, static_cast<long long>(low), static_cast<long long>(nlist),
                        target, max_probe_share * 100);
          *report = line;
        }
        return SnapshotBuild::kNotFaster;
      }
    } else {
      name = "efSearch";
      for (value = 16;; value *= 2) {
        hnsw->hnsw.efSearch = static_cast<int>(std::max<int64_t>(value, k));
        got = recall();
        if (got >= target || value >= 4096) break;
      }
      value = hnsw->hnsw.efSearch;
    }
    if (report) {
      char line[256];
      std::snprintf(line, sizeof line, "%s: %s %lld, recall@10 %.3f against flat on %d queries made from %s",
                    describe(index.get()).c_str(), name.c_str(), static_cast<long long>(value), got, nq,
                    from_held_out ? "vectors outside its training sample" : "its vectors");
      *report = line;
    }
  }
  HashingWriter out(path, access_of);
  try {
    faiss::write_index(&idmap, &out);
  } catch (const faiss::FaissException& e) {
    throw Exception(ErrorCode::kIoError, out.file.temp_path() + ": cannot write the snapshot (" + e.what() + ")");
  }
  out.commit();
  // The built index is let go before the check below reads the file back: held together, a
  // flat-fp16 snapshot was twice in memory.
  idmap.index = nullptr;
  std::vector<faiss::Index::idx_t>().swap(idmap.id_map);
  index.reset();
  // Kept only if cnclip can open it and search it as filters and deltas do (with a row selector):
  // FAISS's factory builds types whose searches refuse any parameters (PQ, fast-scan, additive
  // quantizers) or that it makes with the L2 metric (HNSW over PQ), and each failed every search.
  try {
    std::vector<float> query(static_cast<size_t>(dim), 0.0f);
    query[0] = 1.0f;
    VectorIndex::open_file(path)->search(query.data(), 1, 1, [](int64_t) { return true; });
  } catch (const Exception& e) {
    ::unlink(path.c_str());
    if (report) *report = type + " is not a type cnclip can search (" + reason_of(e.what()) + ")";
    return SnapshotBuild::kUnusable;
  }
  return SnapshotBuild::kWritten;
}
}  // namespace

struct VectorFileWriter::Impl {
  AtomicFileWriter file;
  int dim;
  int64_t expected, added = 0;
  std::vector<int64_t> ids;
  XXH3_state_t* hash = XXH3_createState();
  uint64_t bytes = 0;
  Impl(const std::string& path, int d, int64_t count, const std::string& access_of)
      : file(path, access_of), dim(d), expected(count) {
    if (!hash) throw Exception(ErrorCode::kInternal, "out of memory");
    XXH3_64bits_reset(hash);
  }
  ~Impl() { XXH3_freeState(hash); }
  void write(const void* data, size_t size) {
    file.write(data, size);
    XXH3_64bits_update(hash, data, size);
    bytes += size;
  }
};

VectorFileWriter::VectorFileWriter(const std::string& path, int dim, int64_t count, const std::string& access_of)
    : impl_(std::make_unique<Impl>(path, dim, count, access_of)) {
  std::string head;
  put_header(head, "IxM2", dim, count);
  put_header(head, "IxFI", dim, count);
  const uint64_t nfloats = static_cast<uint64_t>(count) * static_cast<uint64_t>(dim);
  head.append(reinterpret_cast<const char*>(&nfloats), 8);
  impl_->write(head.data(), head.size());
  impl_->ids.reserve(static_cast<size_t>(count));
}

VectorFileWriter::~VectorFileWriter() = default;

void VectorFileWriter::add(int64_t id, const float* vector) {
  if (impl_->added == impl_->expected) {
    throw Exception(ErrorCode::kInternal, impl_->file.temp_path() + ": more vectors than announced");
  }
  for (int d = 0; d < impl_->dim; ++d) {
    if (!std::isfinite(vector[d])) {
      throw Exception(ErrorCode::kCorrupt,
                      impl_->file.temp_path() + ": vector of id " + std::to_string(id) + " is not finite");
    }
  }
  impl_->write(vector, static_cast<size_t>(impl_->dim) * sizeof(float));
  impl_->ids.push_back(id);
  ++impl_->added;
}

void VectorFileWriter::commit() {
  if (impl_->added != impl_->expected) {
    throw Exception(ErrorCode::kInternal, impl_->file.temp_path() + ": fewer vectors than announced");
  }
  const uint64_t n = impl_->ids.size();
  impl_->write(&n, 8);
  impl_->write(impl_->ids.data(), n * 8);
  const uint64_t covered = impl_->bytes, digest = XXH3_64bits_digest(impl_->hash);
  impl_->file.write(kTrailerMagic, 8);
  impl_->file.write(&covered, 8);
  impl_->file.write(&digest, 8);
  impl_->file.commit();
}

}  // namespace cnclip
