#include "text_input.h"

#include "cnclip/error.h"
#include "options.h"

namespace cnclip::cli {

std::string quote_text(const std::string& text) {
  constexpr size_t kMaxBytes = 60;  // about 20 Chinese characters or 60 Latin ones
  if (text.size() <= kMaxBytes) return "'" + text + "'";
  size_t cut = kMaxBytes;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // a whole character
  return "'" + text.substr(0, cut) + "…'";
}

void check_text(const Tokenizer& tokenizer, const std::string& text, int context_length, const std::string& what,
                bool require_words) {
  if (auto bad = find_invalid_utf8(text)) {
    throw Exception(ErrorCode::kInvalidArgument,
                    what + " is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
  }
  const size_t pieces = tokenizer.count_pieces(text);
  if (require_words && pieces == 0) {
    throw Exception(
        ErrorCode::kInvalidArgument,
        what + (text.empty() ? " is empty" : " " + quote_text(text) + " is blank") + ": give some words to search for");
  }
  const size_t room = context_length > 2 ? static_cast<size_t>(context_length - 2) : 0;
  if (pieces > room) {
    print_warning(what + " " + quote_text(text) + " was cut to fit the model's " + std::to_string(context_length) +
                  " tokens: its first " + std::to_string(room) + " of " + std::to_string(pieces) + " tokens were kept");
  }
}

}  // namespace cnclip::cli
