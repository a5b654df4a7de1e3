#include "cnclip/vector_index.h"

#include <faiss/MetricType.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/utils/distances.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <mutex>

#include "atomic_file.h"
#include "cnclip/error.h"

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

// A single query is still fastest through BLAS (multi-threaded sgemm) on large indexes. FAISS keeps
// this threshold in a global: set it once, so concurrent searches do not write it (a data race).
void use_blas_for_single_queries() {
  static std::once_flag blas_threshold_set;
  std::call_once(blas_threshold_set, [] { faiss::distance_compute_blas_threshold = 1; });
}

class MemoryVectorIndex : public VectorIndex {
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

class MappedVectorIndex : public VectorIndex {
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

// The rows whose ids `allowed` accepts, as FAISS's ID selector (over row positions); no selector
// (every row) when `allowed` is empty.
class RowSelection {
 public:
  RowSelection(const int64_t* ids, int64_t n, const std::function<bool(int64_t)>& allowed) {
    if (!allowed) return;
    bitmap_.assign(static_cast<size_t>((n + 7) / 8), 0);
    for (int64_t i = 0; i < n; ++i) {
      if (allowed(ids[i])) bitmap_[static_cast<size_t>(i >> 3)] |= static_cast<uint8_t>(1u << (i & 7));
    }
    selector_ = std::make_unique<faiss::IDSelectorBitmap>(bitmap_.size(), bitmap_.data());
  }
  const faiss::IDSelector* selector() const { return selector_.get(); }

 private:
  std::vector<uint8_t> bitmap_;
  std::unique_ptr<faiss::IDSelectorBitmap> selector_;
};

}  // namespace

std::unique_ptr<VectorIndex> VectorIndex::from_vectors(int dim, std::vector<int64_t> ids, std::vector<float> vectors) {
  return std::make_unique<MemoryVectorIndex>(dim, std::move(ids), std::move(vectors));
}

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
  // MAP_POPULATE reads the whole file in now (callers open it while other work goes on), so the
  // search itself does not stop on page faults.
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
  if (std::memcmp(p, "IxM2", 4) != 0 || std::memcmp(p + 4 + kHeaderBytes, "IxFI", 4) != 0) {
    fail("not a FAISS IndexIDMap2 over IndexFlatIP");
  }
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

std::vector<std::vector<SearchHit>> VectorIndex::search(const float* queries, int nq, int k,
                                                        const std::function<bool(int64_t)>& allowed) const {
  std::vector<std::vector<SearchHit>> out(static_cast<size_t>(nq));
  const int64_t n = size();
  if (nq <= 0 || k <= 0 || n == 0) return out;
  k = static_cast<int>(std::min<int64_t>(k, n));
  std::vector<float> scores(static_cast<size_t>(nq) * k);
  std::vector<int64_t> positions(static_cast<size_t>(nq) * k, -1);
  use_blas_for_single_queries();
  const RowSelection selection(ids(), n, allowed);
  faiss::knn_inner_product(queries, vectors(), static_cast<size_t>(dim()), static_cast<size_t>(nq),
                           static_cast<size_t>(n), static_cast<size_t>(k), scores.data(), positions.data(),
                           selection.selector());
  for (int q = 0; q < nq; ++q) {
    for (int j = 0; j < k; ++j) {
      const int64_t pos = positions[static_cast<size_t>(q) * k + j];
      if (pos < 0 || pos >= n) continue;
      float score = scores[static_cast<size_t>(q) * k + j];
      // Unit vectors give cosines in [-1, 1] up to float rounding; anything else is damage (of the
      // vectors or of the query), never a result.
      if (!std::isfinite(score) || std::fabs(score) > 1.0f + kScoreSlack) {
        throw Exception(ErrorCode::kCorrupt, "vector of id " + std::to_string(ids()[pos]) + " gives score " +
                                                 std::to_string(score) +
                                                 ": the vectors or the query are damaged (not unit length)");
      }
      score = std::clamp(score, -1.0f, 1.0f);
      out[q].push_back(SearchHit{ids()[pos], score});
    }
  }
  return out;
}

std::vector<std::vector<SearchHit>> VectorIndex::range_search(const float* queries, int nq, float min_score,
                                                              const std::function<bool(int64_t)>& allowed) const {
  std::vector<std::vector<SearchHit>> out(static_cast<size_t>(nq));
  const int64_t n = size();
  if (nq <= 0 || n == 0) return out;
  use_blas_for_single_queries();
  const RowSelection selection(ids(), n, allowed);
  // FAISS keeps inner products strictly above the radius.
  const float radius = std::nextafter(std::max(min_score, -2.0f), -3.0f);
  faiss::RangeSearchResult result(static_cast<size_t>(nq));
  faiss::range_search_inner_product(queries, vectors(), static_cast<size_t>(dim()), static_cast<size_t>(nq),
                                    static_cast<size_t>(n), radius, &result, selection.selector());
  for (int q = 0; q < nq; ++q) {
    for (size_t j = result.lims[q]; j < result.lims[q + 1]; ++j) {
      const int64_t pos = result.labels[j];
      if (pos < 0 || pos >= n) continue;
      float score = result.distances[j];
      if (!std::isfinite(score) || std::fabs(score) > 1.0f + kScoreSlack) {
        throw Exception(ErrorCode::kCorrupt, "vector of id " + std::to_string(ids()[pos]) + " gives score " +
                                                 std::to_string(score) +
                                                 ": the vectors or the query are damaged (not unit length)");
      }
      score = std::clamp(score, -1.0f, 1.0f);
      if (score < min_score) continue;
      out[q].push_back(SearchHit{ids()[pos], score});
    }
  }
  return out;
}

struct VectorFileWriter::Impl {
  AtomicFileWriter file;
  int dim;
  int64_t expected, added = 0;
  std::vector<int64_t> ids;
  XXH3_state_t* hash = XXH3_createState();
  uint64_t bytes = 0;
  Impl(const std::string& path, int d, int64_t count) : file(path), dim(d), expected(count) {
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

VectorFileWriter::VectorFileWriter(const std::string& path, int dim, int64_t count)
    : impl_(std::make_unique<Impl>(path, dim, count)) {
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
      throw Exception(ErrorCode::kCorrupt, impl_->file.temp_path() + ": vector of id " + std::to_string(id) +
                                               " is not finite");
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
