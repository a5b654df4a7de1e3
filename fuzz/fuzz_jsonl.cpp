// libFuzzer target: any bytes as a JSONL file for `cnclip import` (read_embeddings_jsonl, import.h).
// It must throw cnclip::Exception (kCorrupt, kMismatch or kIoError; never a JSON library exception,
// never crash), or return rows that import_embeddings can take: one non-empty path per row and
// `dim` finite values per row, not all zero. The model dimension is 4, as in the seeds.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "cnclip/error.h"
#include "cnclip/import.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr int kDim = 4;
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    const cnclip::ImportRows rows = cnclip::read_embeddings_jsonl(in, "fuzz.jsonl", kDim);
    if (rows.embeddings.size() != rows.paths.size() * kDim) cnclip_fuzz::fail("rows and embeddings disagree");
    for (size_t r = 0; r < rows.paths.size(); ++r) {
      if (rows.paths[r].empty()) cnclip_fuzz::fail("empty path accepted");
      bool nonzero = false;
      for (int d = 0; d < kDim; ++d) {
        const float v = rows.embeddings[r * kDim + d];
        if (!std::isfinite(v)) cnclip_fuzz::fail("non-finite embedding accepted");
        nonzero = nonzero || v != 0.0f;
      }
      if (!nonzero) cnclip_fuzz::fail("all-zero embedding accepted");
    }
  } catch (const cnclip::Exception& e) {
    const auto c = e.code();
    if (c != cnclip::ErrorCode::kCorrupt && c != cnclip::ErrorCode::kMismatch && c != cnclip::ErrorCode::kIoError) {
      cnclip_fuzz::fail("unexpected error code");
    }
    if (std::string(e.what()).rfind("fuzz.jsonl", 0) != 0) cnclip_fuzz::fail("error does not name the file");
  }
  return 0;
}
