// Inner-product search over L2-normalized embeddings (so scores are cosine similarities), in one of
// several snapshot types (VectorSpec below). The default, exact type is "flat": on disk a FAISS index
// file, IndexIDMap2 over IndexFlatIP (ids = catalog ids), which faiss::read_index reads like any
// other; cnclip memory-maps it instead, because FAISS 1.7.3 copies a flat index into memory on load
// (about 1.5 s for a million vectors) and cannot map it. Every other type is whatever
// faiss::index_factory builds from its factory string ("SQfp16", "IVF1024,SQ8", "HNSW32", ...),
// written by faiss::write_index as an IndexIDMap over it (ids = catalog ids) and read back with
// faiss::read_index (a copy: 0.5 GB at a million vectors for IVF,SQ8; see the README's scale table).
//
// Integrity: every snapshot carries a 24-byte trailer after the FAISS data ("CNCLIPX3", the number
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

#include <algorithm>
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
  // A snapshot of another type, or a snapshot with a delta (with_delta), has no contiguous float
  // rows: vectors() and ids() are then null.
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
  // "flat" (exact fp32), "flat-fp16", "flat-sq8", or the FAISS factory string of an approximate
  // type ("IVF1024,SQ8", "HNSW32", ...), as VectorSpec names them.
  virtual std::string type() const { return "flat"; }
  // The tuned search parameter of an approximate type as stored in the snapshot ("nprobe 128",
  // "efSearch 64"), "" for types without one (flat, flat-fp16, flat-sq8).
  virtual std::string search_parameter() const { return ""; }
  // Whether search() ranks by exact fp32 cosines (flat, and flat with a flat delta). Other types
  // return approximate scores: callers re-score their candidates from the catalog (search.h).
  virtual bool exact() const { return true; }

  // The snapshot `base` with its newer changes: every id of `changed` (added, re-encoded or removed
  // since the snapshot was written) is masked out of `base`, and `fresh` holds the current vectors
  // of those still present. Searches merge both. exact() when both parts are exact.
  static std::unique_ptr<VectorIndex> with_delta(std::unique_ptr<VectorIndex> base, std::vector<int64_t> changed,
                                                 std::unique_ptr<VectorIndex> fresh);

  // For each of the nq queries (nq * dim floats), up to k hits, best first. When `allowed` is given,
  // only ids it accepts are considered. Scores are cosines of unit vectors, always within [-1, 1]:
  // rounding past the bounds is clamped, and a score that is not finite or lies further out (a vector
  // or query that is not unit length: damage) throws Exception(kCorrupt) instead of being returned.
  // Approximate types may return fewer than k hits when the probed part of the index holds fewer
  // allowed vectors, and their scores are within ~1e-2 (SQ8) of the exact cosine.
  virtual std::vector<std::vector<SearchHit>> search(const float* queries, int nq, int k,
                                                     const std::function<bool(int64_t)>& allowed = nullptr) const;
  // For each query, every hit with score >= min_score (FAISS range search), in no particular order;
  // the same checks and clamping as search().
  virtual std::vector<std::vector<SearchHit>> range_search(const float* queries, int nq, float min_score,
                                                           const std::function<bool(int64_t)>& allowed = nullptr) const;
};

// Which snapshot type an index keeps (`cnclip index --vectors SPEC`, stored in the catalog).
//   flat        exact fp32 (the default): 4 bytes per dimension, mapped, no training.
//   flat-fp16   FAISS "SQfp16": half the memory and bandwidth; scores within ~1e-3.
//   flat-sq8    FAISS "SQ8": a quarter; scores within ~1e-2.
//   ivf         "IVF{nlist},SQ8" with nlist = ivf_nlist(n): the approximate type (README "Scale").
//   auto        flat below kAutoApproximateAbove vectors, else ivf where it pays off: when the
//               tuning needs more than kAutoMaxProbeShare of the lists for kTargetRecall (vectors
//               with little structure), flat is kept until the index doubles (README "Scale").
//   anything else: a FAISS factory string (inner-product metric), e.g. "HNSW32", "IVF4096,PQ64";
//   "IVF," without a list count gets ivf_nlist(n).
// Approximate types are trained from the catalog's vectors, and their search parameter (nprobe,
// efSearch) is tuned when the snapshot is built: the smallest value whose recall@10 against flat,
// with cnclip's re-scoring of kCandidates(10) candidates, is at least kTargetRecall on queries made
// from the index's own vectors outside the training sample (see build_snapshot).
struct VectorSpec {
  // auto tries IVF above this size: a flat scan of 500,000 512-d vectors reads 1 GB. Measured by
  // `scripts/bench.sh --scale 1000000` (README "Scale"): flat 87-158 ms warm at 1M on 2 cores (a lone
  // query's rows split across threads); IVF1024,SQ8 11 ms at the nprobe 384 its recall@10 of 0.95
  // took on those generated vectors (cnclip's AVX2 scan of its codes, sq_scan.h).
  static constexpr int64_t kAutoApproximateAbove = 500'000;
  // The same 1M IVF1024,SQ8 on AVX2 (2026-12-01, a fill running beside it): 13 ms at nprobe 512, 27
  // ms at every list, against flat's 87-158 ms, since its codes are a quarter of flat's bytes. Up to
  // half its lists, IVF answers ~7x faster than flat; beyond that it reads nearly all the codes,
  // with no structure left to exploit (vectors with none: uniform ones need 80 of 128 lists), and
  // auto keeps exact flat. (With FAISS 1.7.3's own scan, ~1 GB/s, the limit was an eighth.)
  static constexpr double kAutoMaxProbeShare = 1.0 / 2;
  static constexpr double kTargetRecall = 0.95;
  // Counts parse() refuses (FAISS's factory takes any): an IVF's lists beyond ivf_nlist's 65,536 pay
  // only past ~1e9 vectors, and its factory allocates every empty list at once; HNSW's neighbours
  // per node are 16-64 in FAISS's own recipes.
  // A PQ's bits per code past 16 make 2^bits centroids per sub-quantizer (PQ1x24: 32 GB at 512-d).
  static constexpr long long kMaxIvfLists = 1 << 20, kMaxHnswNeighbours = 512, kMaxPqBits = 16;
  // Kept as given ("auto", "flat", "IVF,SQ8", ...). Throws kInvalidArgument naming it when FAISS's
  // factory cannot build it (checked at dimension `dim`), or builds what cnclip cannot use: a count
  // of 0, HNSW with 1 neighbour, counts past the limits above, NSG, an IDMap, a refinement.
  static VectorSpec parse(const std::string& text, int dim);
  // The concrete type for an index of n vectors: "flat", or a factory string with counts filled in.
  std::string resolve(int64_t n) const;
  std::string text = "flat";
};
// The fewest vectors FAISS can train a resolved type on, as its structure says (an IVF's lists, a
// PQ's 2^bits centroids), or 0 when it needs no training or does not say.
int64_t vectors_needed_to_train(const std::string& type, int dim);
// The canonical name of a resolved type, as VectorIndex::type() gives it for a snapshot of it
// ("SQfp16" and "flat-fp16" are both "flat-fp16"); kInvalidArgument as VectorSpec::parse.
std::string canonical_vector_type(const std::string& type, int dim);
// Lists of an IVF for n vectors: the power of two nearest to sqrt(n), within [16, 65536]
// (k-means cost grows with lists x sample, and the sample with the lists: README "Scale").
int ivf_nlist(int64_t n);
// How many candidates an approximate search takes for `want` results before re-scoring.
inline int64_t candidates_for(int64_t want) { return want + std::max<int64_t>(want, 32); }

// Builds a snapshot of `type` (VectorSpec::resolve's output; not "flat") from the n vectors that
// `fill` passes to its callback in id order, possibly twice (once to sample the training set, once
// to add), and writes it atomically to `path` with the checksum trailer. `report`, when given,
// receives one line on the tuning (search parameter and measured recall), or on why nothing was
// kept. The result:
//   kWritten       written, and opened and searched once with a row selector, as filters do.
//   kTooFewVectors FAISS cannot train the type on these vectors (an IVF needs one per list, a PQ
//                  2^bits); nothing written.
//   kNotFaster     with `max_probe_share` below 1, an IVF whose tuning needs more than that share of
//                  its lists (auto's test of whether IVF pays off, IndexStore); nothing written.
//   kFailed        FAISS failed otherwise (a type VectorSpec::parse does not know to refuse, memory).
//   kUnusable      written, but cnclip cannot open or search it that way; deleted again.
// Throws like VectorFileWriter, kInvalidArgument for a type FAISS cannot build, and kInterrupted on
// Ctrl-C (interrupt_requested, runtime.h), also inside FAISS's training and searches: the first call
// installs FAISS's process-wide InterruptCallback on that flag, which stays (every later FAISS
// computation of the process stops once the flag is set). Not to be called while FAISS runs in
// another thread.
enum class SnapshotBuild { kWritten, kTooFewVectors, kNotFaster, kFailed, kUnusable };
using VectorSource = std::function<void(const std::function<void(int64_t, const float*)>&)>;
// `access_of`: a file whose permissions and owner the snapshot takes from its creation (AtomicFileWriter).
SnapshotBuild build_snapshot(const std::string& path, const std::string& type, int dim, int64_t n,
                             const VectorSource& fill, std::string* report = nullptr, double max_probe_share = 1.0,
                             const std::string& access_of = "");

// Writes a vector file atomically, with its checksum trailer; `count` vectors must be added before
// commit(). add() refuses a vector that is not finite (kCorrupt). `access_of` as build_snapshot's.
class VectorFileWriter {
 public:
  VectorFileWriter(const std::string& path, int dim, int64_t count, const std::string& access_of = "");
  ~VectorFileWriter();
  void add(int64_t id, const float* vector);
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cnclip
