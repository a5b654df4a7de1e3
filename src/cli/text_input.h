// Checks on the texts given to search-text, embed-text and tokenize.
#pragma once

#include <string>

#include "cnclip/tokenizer.h"

namespace cnclip::cli {

// `what` names the text in messages ("query", "text"). Throws Exception(kInvalidArgument) when the
// text is not valid UTF-8, or, with require_words, when it has no word pieces at all (empty, blank,
// or only characters the tokenizer drops): searching for nothing ranks photos by noise. Prints a
// warning on stderr when the text has more word pieces than fit in `context_length` ids, saying how
// many were kept.
void check_text(const Tokenizer& tokenizer, const std::string& text, int context_length, const std::string& what,
                bool require_words);

// The text for a message: quoted, cut to about 40 characters.
std::string quote_text(const std::string& text);

}  // namespace cnclip::cli
