#include "sq_scan.h"

#include <cpuid.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/utils/fp16-inl.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {
namespace {

using Sq = faiss::ScalarQuantizer;

enum class ScanMode { kFaiss, kScalar, kAvx2 };

ScanMode scan_mode() {
  static const ScanMode mode = [] {
    const char* env = std::getenv("CNCLIP_SQ_SCAN");
    if (env && std::strcmp(env, "faiss") == 0) return ScanMode::kFaiss;
    if (env && std::strcmp(env, "scalar") == 0) return ScanMode::kScalar;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? ScanMode::kAvx2 : ScanMode::kScalar;
  }();
  return mode;
}

// CPUID leaf 1, ECX bit 29: clang 14's __builtin_cpu_supports does not know "f16c" (the fuzz build
// failed on it). The scan uses F16C only where AVX2 is usable, so the OS saves the AVX state.
bool has_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
  }();
  return yes;
}

const Sq* quantizer_of(const faiss::Index* index) {
  if (!index || index->metric_type != faiss::METRIC_INNER_PRODUCT) return nullptr;
  const Sq* sq = nullptr;
  if (const auto* ivf = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(index)) {
    if (!ivf->invlists || ivf->max_codes != 0 || !dynamic_cast<const faiss::ArrayInvertedLists*>(ivf->invlists))
      return nullptr;
    sq = &ivf->sq;
  } else if (const auto* flat = dynamic_cast<const faiss::IndexScalarQuantizer*>(index)) {
    sq = &flat->sq;
  }
  if (!sq) return nullptr;
  switch (sq->qtype) {
    case Sq::QT_8bit: return sq->code_size == sq->d && sq->trained.size() == 2 * sq->d ? sq : nullptr;
    case Sq::QT_8bit_uniform: return sq->code_size == sq->d && sq->trained.size() == 2 ? sq : nullptr;
    case Sq::QT_fp16: return sq->code_size == 2 * sq->d && scan_mode() == ScanMode::kAvx2 && has_f16c() ? sq : nullptr;
    default: return nullptr;
  }
}

// Sum of w[i] * c[i] over d dimensions.
float dot_scalar(const float* w, const uint8_t* c, size_t d) {
  float a[8] = {};
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    for (size_t j = 0; j < 8; ++j) a[j] += w[i + j] * static_cast<float>(c[i + j]);
  }
  for (; i < d; ++i) a[0] += w[i] * static_cast<float>(c[i]);
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// The 8 bytes at c as floats.
__attribute__((target("avx2,fma"))) inline __m256 widen8(const uint8_t* c) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))));
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* w, const uint8_t* c, size_t d) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), widen8(c + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), widen8(c + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), widen8(c + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), widen8(c + i + 24), a3);
  }
  for (; i + 8 <= d; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), widen8(c + i), a0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float out = _mm_cvtss_f32(h);
  for (; i < d; ++i) out += w[i] * static_cast<float>(c[i]);
  return out;
}

// Sum of w[i] * x[i] over the d fp16 values at c.
__attribute__((target("avx2,fma,f16c"))) float dot_fp16_avx2(const float* w, const uint8_t* c, size_t d) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  auto halves = [c](size_t i) __attribute__((target("avx2,fma,f16c"))) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 2 * i)));
  };
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), halves(i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), halves(i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), halves(i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), halves(i + 24), a3);
  }
  for (; i + 8 <= d; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), halves(i), a0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float out = _mm_cvtss_f32(h);
  for (; i < d; ++i) {
    uint16_t half;
    std::memcpy(&half, c + 2 * i, 2);
    out += w[i] * faiss::decode_fp16(half);
  }
  return out;
}

using DotFn = float (*)(const float*, const uint8_t*, size_t);

// The k best (score, label) pairs seen, worst on top; "better" is a higher score, or the same score
// and a lower label, so the kept set does not depend on the order rows are seen in.
class TopK {
 public:
  explicit TopK(size_t k) : k_(k) { heap_.reserve(k); }
  static bool better(const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  }
  // Whether a score could enter (cheap test before the label is looked at).
  bool wants(float score) const { return heap_.size() < k_ || score >= heap_.front().first; }
  void push(float score, int64_t label) {
    const std::pair<float, int64_t> item{score, label};
    if (heap_.size() < k_) {
      heap_.push_back(item);
      std::push_heap(heap_.begin(), heap_.end(), better);
    } else if (better(item, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), better);
      heap_.back() = item;
      std::push_heap(heap_.begin(), heap_.end(), better);
    }
  }
  void merge(const TopK& other) {
    for (const auto& item : other.heap_) push(item.first, item.second);
  }
  void write(float* scores, int64_t* labels) {
    std::sort(heap_.begin(), heap_.end(), better);
    for (size_t j = 0; j < k_; ++j) {
      scores[j] = j < heap_.size() ? heap_[j].first : -std::numeric_limits<float>::infinity();
      labels[j] = j < heap_.size() ? heap_[j].second : -1;
    }
  }

 private:
  size_t k_;
  std::vector<std::pair<float, int64_t>> heap_;
};

// One query's form over the codes: score = bias + dot(weight, code) (+ the centroid's score). For
// 8-bit codes, the affine form of the header; for fp16 codes, the query itself.
struct QueryForm {
  std::vector<float> weight;
  float bias = 0;
  QueryForm(const Sq& sq, const float* q) : weight(q, q + sq.d) {
    const size_t d = sq.d;
    if (sq.qtype != Sq::QT_fp16) {
      const bool uniform = sq.qtype == Sq::QT_8bit_uniform;
      double b = 0;
      for (size_t i = 0; i < d; ++i) {
        const float vmin = uniform ? sq.trained[0] : sq.trained[i];
        const float vdiff = uniform ? sq.trained[1] : sq.trained[d + i];
        weight[i] = q[i] * vdiff / 255.0f;
        b += static_cast<double>(q[i]) * (static_cast<double>(vmin) + 0.5 * static_cast<double>(vdiff) / 255.0);
      }
      bias = static_cast<float>(b);
    }
    // A score that is not finite cannot be ranked (and would break the heap's order): the query or
    // the snapshot's ranges are damaged, which the search reports as it reports any damaged score.
    bool finite = std::isfinite(bias);
    for (size_t i = 0; i < d; ++i) finite = finite && std::isfinite(weight[i]);
    if (!finite) {
      throw Exception(
          ErrorCode::kCorrupt,
          "the query or the snapshot's quantizer ranges are not finite: the vectors or the query are damaged");
    }
  }
};

// Every score above a radius (a range search), in the order seen.
class Above {
 public:
  explicit Above(float radius) : radius_(radius) {}
  bool wants(float score) const { return score > radius_; }
  void push(float score, int64_t label) { items.emplace_back(score, label); }
  void merge(const Above& other) { items.insert(items.end(), other.items.begin(), other.items.end()); }
  std::vector<std::pair<float, int64_t>> items;

 private:
  float radius_;
};

// Scores `count` codes (rows first_label.. or labels[j]) into `sink` (TopK or Above).
template <typename Sink>
void scan_codes(DotFn dot, const QueryForm& form, float offset, const uint8_t* codes, size_t code_size, size_t count,
                const faiss::Index::idx_t* labels, int64_t first_label, const faiss::IDSelector* sel, Sink& sink) {
  const float bias = form.bias + offset;
  for (size_t j = 0; j < count; ++j) {
    const int64_t label = labels ? labels[j] : first_label + static_cast<int64_t>(j);
    if (sel && !sel->is_member(label)) continue;
    const float score = bias + dot(form.weight.data(), codes + j * code_size, form.weight.size());
    if (sink.wants(score)) sink.push(score, label);
  }
}

// Runs body(i) for i in [0, count) on `threads` OpenMP threads (dynamically); the first exception
// thrown in a body is rethrown here once all have run.
template <typename Body>
void parallel_for(int64_t count, int threads, Body&& body) {
  std::exception_ptr failure;
  std::mutex mutex;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < count; ++i) {
    try {
      body(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

// Scans, for each of nq queries, the lists it probes (an IVF: `nprobe` of them, the coarse
// quantizer's choice, as FAISS's search makes it) or every row (flat) into a sink made by
// make_sink(), then hands it to finish(q, sink). Many queries run one per thread; fewer queries than
// threads share out each query's lists (or row ranges), each thread into its own sink, merged.
template <typename MakeSink, typename Finish>
void scan_queries(const faiss::Index& index, int64_t nq, const float* queries, int64_t nprobe,
                  const faiss::IDSelector* sel, MakeSink&& make_sink, Finish&& finish) {
  const Sq* sq = quantizer_of(&index);
  if (!sq) throw std::logic_error("sq_scan: not an index of codes it scans");
  if (nq <= 0) return;
  const DotFn dot = sq->qtype == Sq::QT_fp16 ? dot_fp16_avx2 : scan_mode() == ScanMode::kAvx2 ? dot_avx2 : dot_scalar;
  const size_t d = sq->d, code_size = sq->code_size;
  const int threads = std::max(1, omp_get_max_threads());
  const auto* ivf = dynamic_cast<const faiss::IndexIVFScalarQuantizer*>(&index);

  const int64_t probes = ivf ? std::clamp<int64_t>(nprobe, 1, static_cast<int64_t>(ivf->nlist)) : 0;
  std::vector<float> coarse_scores(static_cast<size_t>(nq * probes));
  std::vector<faiss::Index::idx_t> lists(static_cast<size_t>(nq * probes), -1);
  if (ivf) ivf->quantizer->search(nq, queries, probes, coarse_scores.data(), lists.data());

  // A query's parts: its probed lists (IVF), or ranges of rows (flat, a range per 16,384 rows when
  // shared out, which pays past 65,536).
  constexpr int64_t kRowsPerPart = 16'384;
  auto one_query = [&](int64_t q, int parts_threads) {
    const QueryForm form(*sq, queries + static_cast<size_t>(q) * d);
    auto sink = make_sink();
    int64_t parts = probes;
    const auto* flat = ivf ? nullptr : static_cast<const faiss::IndexScalarQuantizer*>(&index);
    const int64_t n = flat ? flat->ntotal : 0;
    if (flat) parts = parts_threads > 1 && n >= 4 * kRowsPerPart ? (n + kRowsPerPart - 1) / kRowsPerPart : 1;
    auto part = [&](int64_t p, decltype(sink)& into) {
      if (flat) {
        const int64_t lo = n * p / parts, hi = n * (p + 1) / parts;
        scan_codes(dot, form, 0.0f, flat->codes.data() + static_cast<size_t>(lo) * code_size, code_size,
                   static_cast<size_t>(hi - lo), nullptr, lo, sel, into);
        return;
      }
      const faiss::Index::idx_t list = lists[static_cast<size_t>(q * probes + p)];
      if (list < 0) return;
      const auto l = static_cast<size_t>(list);
      const size_t size = ivf->invlists->list_size(l);
      if (size == 0) return;
      const float offset = ivf->by_residual ? coarse_scores[static_cast<size_t>(q * probes + p)] : 0.0f;
      scan_codes(dot, form, offset, ivf->invlists->get_codes(l), code_size, size, ivf->invlists->get_ids(l), 0, sel,
                 into);
    };
    if (parts_threads > 1 && parts > 1) {
      std::vector<decltype(sink)> mine(static_cast<size_t>(parts_threads), sink);
      std::exception_ptr failure;
      std::mutex mutex;
#pragma omp parallel num_threads(parts_threads)
      {
        auto& own = mine[static_cast<size_t>(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < parts; ++p) {
          try {
            part(p, own);
          } catch (...) {
            std::lock_guard<std::mutex> lock(mutex);
            if (!failure) failure = std::current_exception();
          }
        }
      }
      if (failure) std::rethrow_exception(failure);
      for (const auto& own : mine) sink.merge(own);
    } else {
      for (int64_t p = 0; p < parts; ++p) part(p, sink);
    }
    finish(q, sink);
  };
  if (nq < threads) {
    for (int64_t q = 0; q < nq; ++q) one_query(q, threads);
  } else {
    parallel_for(nq, threads, [&](int64_t q) { one_query(q, 1); });
  }
}

}  // namespace

bool sq_scan_serves(const faiss::Index* index) { return scan_mode() != ScanMode::kFaiss && quantizer_of(index); }

const char* sq_scan_isa() { return scan_mode() == ScanMode::kAvx2 ? "avx2" : "scalar"; }

void sq_search(const faiss::Index& index, int64_t nq, const float* queries, int64_t k, int64_t nprobe,
               const faiss::IDSelector* sel, float* scores, int64_t* labels) {
  if (k <= 0) return;
  const auto kk = static_cast<size_t>(k);
  scan_queries(
      index, nq, queries, nprobe, sel, [kk] { return TopK(kk); },
      [&](int64_t q, TopK& top) {
        top.write(scores + static_cast<size_t>(q) * kk, labels + static_cast<size_t>(q) * kk);
      });
}

void sq_range_search(const faiss::Index& index, int64_t nq, const float* queries, float radius,
                     const faiss::IDSelector* sel, faiss::RangeSearchResult* result) {
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(&index);
  std::vector<std::vector<std::pair<float, int64_t>>> found(static_cast<size_t>(std::max<int64_t>(nq, 0)));
  scan_queries(
      index, nq, queries, ivf ? static_cast<int64_t>(ivf->nlist) : 0, sel, [radius] { return Above(radius); },
      [&](int64_t q, Above& above) { found[static_cast<size_t>(q)] = std::move(above.items); });
  for (int64_t q = 0; q < nq; ++q) result->lims[q] = found[static_cast<size_t>(q)].size();
  result->do_allocation();
  for (int64_t q = 0; q < nq; ++q) {
    size_t at = result->lims[q];
    for (const auto& [score, label] : found[static_cast<size_t>(q)]) {
      result->distances[at] = score;
      result->labels[at] = label;
      ++at;
    }
  }
}

}  // namespace cnclip
