// libFuzzer target: any bytes as a query. The tokenizer must either return exactly
// `context_length` ids that are all valid vocabulary ids (framed by [CLS] ... [SEP], then 0-padding),
// or reject invalid UTF-8 with Exception(kInvalidArgument). Anything else is a bug.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "cnclip/error.h"
#include "cnclip/tokenizer.h"
#include "fuzz_util.h"

namespace {
const cnclip::WordPieceTokenizer& tokenizer() {
  static const auto tok = cnclip::WordPieceTokenizer::from_vocab_file(cnclip_fuzz::vocab_path());
  return *tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto& tok = tokenizer();
  const bool valid = !cnclip::find_invalid_utf8(text).has_value();
  // A context length from 2 to 77 (the model's maximum positions), taken from the input's size so
  // that the bytes stay a plain query.
  const int context_length = 2 + static_cast<int>(size % 76);
  try {
    const auto ids = tok.encode(text, context_length);
    if (!valid) cnclip_fuzz::fail("invalid UTF-8 accepted");
    if (static_cast<int>(ids.size()) != context_length) cnclip_fuzz::fail("wrong number of ids");
    if (ids.front() == 0) cnclip_fuzz::fail("no [CLS] first");
    bool padding = false;
    for (int64_t id : ids) {
      if (id < 0 || id >= static_cast<int64_t>(tok.vocab_size())) cnclip_fuzz::fail("id outside the vocabulary");
      if (padding && id != 0) cnclip_fuzz::fail("id after the padding");
      if (id == 0) padding = true;
    }
  } catch (const cnclip::Exception& e) {
    if (valid || e.code() != cnclip::ErrorCode::kInvalidArgument) throw;
  }
  if (valid) (void)tok.tokenize(text);
  return 0;
}
