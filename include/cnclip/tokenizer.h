// Text -> token ids, exactly as Chinese-CLIP's BERT "FullTokenizer" produces them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

// Turns one text into `context_length` token ids ([CLS] pieces... [SEP] then 0-padding).
// Implementations are immutable after construction and safe to share between threads.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Throws Exception(kInvalidArgument) when `utf8` is not valid UTF-8 (queries are rejected, not
  // silently altered: a replaced byte would search for something the user did not type).
  virtual std::vector<int64_t> encode(std::string_view utf8, int context_length) const = 0;
  // How many word pieces `utf8` has before truncation: encode keeps the first context_length - 2
  // of them, so a text with more was cut (callers warn about that), and one with none is blank.
  // Throws like encode for invalid UTF-8.
  virtual size_t count_pieces(std::string_view utf8) const = 0;
};

// BERT WordPiece over a vocab.txt (one token per line, id = 0-based line number), lower-casing on.
// Steps: cleaning (NUL, U+FFFD, Cc/Cf dropped; whitespace -> space), CJK ideographs split apart,
// per word full lower-casing + NFD + combining marks (Mn) removed, punctuation split off, greedy
// longest-match WordPiece with "##" continuations; a word that cannot be fully matched, or is longer
// than 200 code points, becomes one [UNK]. Unicode data comes from utf8proc.
class WordPieceTokenizer : public Tokenizer {
 public:
  // Throws Exception naming the file when it cannot be read or lacks [CLS]/[SEP]/[UNK].
  static std::unique_ptr<WordPieceTokenizer> from_vocab_file(const std::string& path);
  explicit WordPieceTokenizer(std::unordered_map<std::string, int64_t> vocab);

  std::vector<int64_t> encode(std::string_view utf8, int context_length) const override;
  size_t count_pieces(std::string_view utf8) const override;
  // The word pieces (before [CLS]/[SEP], truncation and id lookup); for tests and debugging.
  std::vector<std::string> tokenize(std::string_view utf8) const;
  size_t vocab_size() const { return vocab_.size(); }

 private:
  void wordpiece(const std::u32string& word, std::vector<std::string>& out) const;

  std::unordered_map<std::string, int64_t> vocab_;
  int64_t cls_id_, sep_id_, unk_id_;
};

// Offset of the first byte that makes `text` invalid UTF-8, or nullopt when it is valid.
std::optional<size_t> find_invalid_utf8(std::string_view text);

}  // namespace cnclip
