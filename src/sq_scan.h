// Top-k inner-product searches over scalar-quantized codes: 8-bit ("IVF{nlist},SQ8", the `ivf` type,
// and "SQ8", `flat-sq8`) and fp16 (`flat-fp16`, "IVF{nlist},SQfp16"), scanned with AVX2 where the
// CPU has it.
//
// Why not FAISS's own scan: Debian's FAISS 1.7.3 is built for generic x86-64, so its scalar quantizer
// decodes and multiplies one dimension at a time, ~1 GB/s of codes per core, where flat's BLAS reads
// 20 GB in 0.9 s on the same 2 cores (README "Scale", 10M): at 1M, flat-fp16 took 299 ms a query
// against flat's 112, and IVF1024,SQ8 197 ms at the nprobe its recall needed. Everything but the scan
// stays FAISS's: the trained ranges, the coarse quantizer that picks the lists, the inverted lists,
// the row selector. The answers are FAISS's (same rows, scores within rounding: SqScan.* in
// tests/scale_test.cpp).
//
// FAISS decodes dimension i of an 8-bit code c as x_i = vmin_i + (c_i + 0.5) / 255 * vdiff_i (one vmin
// and vdiff for all dimensions in QT_8bit_uniform), and an IVF that encodes residuals adds the list's
// centroid, whose inner product with the query is the coarse quantizer's score. So a code's score is
//   [q . centroid] + sum_i q_i (vmin_i + vdiff_i / 510) + sum_i (q_i vdiff_i / 255) c_i,
// one AVX2 multiply-add per 8 bytes. An fp16 code is the vector in IEEE half precision (F16C converts
// 8 values per instruction).
#pragma once

#include <cstdint>

namespace faiss {
struct Index;
struct IDSelector;
struct RangeSearchResult;
}  // namespace faiss

namespace cnclip {

// Whether sq_search serves `index`: an IndexIVFScalarQuantizer or IndexScalarQuantizer with 8-bit
// codes (QT_8bit, QT_8bit_uniform) or, on a CPU with AVX2 and F16C, fp16 codes; the inner-product
// metric; an IVF's lists in memory (as faiss::read_index reads them) and no max_codes limit.
// CNCLIP_SQ_SCAN=faiss turns it off (FAISS's own scan, for comparisons); CNCLIP_SQ_SCAN=scalar keeps
// to the loop a CPU without AVX2 runs (8-bit codes only).
bool sq_scan_serves(const faiss::Index* index);

// For each of nq queries, the k best rows (labels as the index stores them) accepted by `sel` (null:
// all), best first: a higher score, or the same score and a lower label. Rows past those found are
// -1 with score -inf. An IVF probes `nprobe` lists (clamped to [1, nlist]); a flat index ignores it.
// Queries run in parallel on the calling thread's OpenMP threads; fewer queries than threads share
// out each query's lists (or rows) instead. The result does not depend on the thread count.
// Throws Exception(kCorrupt) for a query (or trained range) that is not finite. `index` must be one
// sq_scan_serves accepts. Thread-safe for concurrent calls on one index.
void sq_search(const faiss::Index& index, int64_t nq, const float* queries, int64_t k, int64_t nprobe,
               const faiss::IDSelector* sel, float* scores, int64_t* labels);

// Every row (of every list) accepted by `sel` whose score is above `radius`, per query, in no
// particular order, into `result` (made for nq queries, as FAISS's range_search fills it). Threads,
// errors and requirements as sq_search.
void sq_range_search(const faiss::Index& index, int64_t nq, const float* queries, float radius,
                     const faiss::IDSelector* sel, faiss::RangeSearchResult* result);

// "avx2" or "scalar": the loop sq_search uses on this CPU.
const char* sq_scan_isa();

}  // namespace cnclip
