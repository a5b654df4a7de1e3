#include "cnclip/tokenizer.h"

#include <utf8proc.h>

#include <fstream>
#include <sstream>

#include "cnclip/error.h"

namespace cnclip {
namespace {

constexpr size_t kMaxCharsPerWord = 200;  // Chinese-CLIP's WordpieceTokenizer limit

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

// Python's str.isspace(): what str.split()/strip() treat as whitespace.
bool is_python_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85) return true;
  auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

// BERT's _is_whitespace (used while cleaning): space, \t, \n, \r and category Zs.
bool is_bert_whitespace(char32_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}

// BERT's _is_control: Cc or Cf, except \t, \n, \r (which are whitespace).
bool is_bert_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF;
}

// BERT's _is_punctuation: the ASCII symbol ranges and every Unicode P* category.
bool is_bert_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) {
    return true;
  }
  auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

// BERT's _is_chinese_char: the CJK Unified Ideograph blocks (not kana, hangul, radicals or 〇).
bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Unicode "Cased" and "Case_Ignorable", as CPython's str.lower() uses them for the final-sigma rule.
bool is_cased(char32_t c) {
  auto cat = category(c);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return true;
  auto ci = static_cast<utf8proc_int32_t>(c);
  return utf8proc_tolower(ci) != ci || utf8proc_toupper(ci) != ci;
}
bool is_case_ignorable(char32_t c) {
  switch (c) {  // Word_Break = MidLetter, MidNumLet or Single_Quote
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A: return true;
    default: break;
  }
  auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
         cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

// Python's str.lower(): full lower-casing (İ -> i + U+0307) with the final-sigma context rule.
std::u32string python_lower(const std::u32string& word) {
  std::u32string out;
  out.reserve(word.size() + 1);
  for (size_t i = 0; i < word.size(); ++i) {
    char32_t c = word[i];
    if (c == 0x130) {
      out += U"i\u0307";
    } else if (c == 0x3A3) {
      size_t j = i;
      while (j > 0 && is_case_ignorable(word[j - 1])) --j;
      bool final_sigma = j > 0 && is_cased(word[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < word.size() && is_case_ignorable(word[k])) ++k;
        final_sigma = k == word.size() || !is_cased(word[k]);
      }
      out += final_sigma ? char32_t{0x3C2} : char32_t{0x3C3};
    } else {
      out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  utf8proc_uint8_t buf[4];
  auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

std::string to_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size() * 3);
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// NFD, then drop every Mn (BERT's _run_strip_accents).
std::u32string strip_accents(const std::u32string& word) {
  std::string utf8 = to_utf8(word);
  std::vector<utf8proc_int32_t> buf(word.size() * 4 + 8);
  for (;;) {
    auto n = utf8proc_decompose(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                                static_cast<utf8proc_ssize_t>(utf8.size()), buf.data(),
                                static_cast<utf8proc_ssize_t>(buf.size()), UTF8PROC_DECOMPOSE);
    if (n < 0) throw Exception(ErrorCode::kInternal, std::string("utf8proc: ") + utf8proc_errmsg(n));
    if (static_cast<size_t>(n) > buf.size()) {
      buf.resize(static_cast<size_t>(n));
      continue;
    }
    std::u32string out;
    out.reserve(static_cast<size_t>(n));
    for (utf8proc_ssize_t i = 0; i < n; ++i) {
      if (utf8proc_category(buf[i]) != UTF8PROC_CATEGORY_MN) out += static_cast<char32_t>(buf[i]);
    }
    return out;
  }
}

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  auto p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    utf8proc_int32_t c;
    auto n = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(text.size() - i), &c);
    if (n <= 0) {
      throw Exception(ErrorCode::kInvalidArgument,
                      "text is not valid UTF-8 (bad byte at offset " + std::to_string(i) + ")");
    }
    out += static_cast<char32_t>(c);
    i += static_cast<size_t>(n);
  }
  return out;
}

}  // namespace

std::optional<size_t> find_invalid_utf8(std::string_view text) {
  auto p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    utf8proc_int32_t c;
    auto n = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(text.size() - i), &c);
    if (n <= 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::nullopt;
}

std::unique_ptr<WordPieceTokenizer> WordPieceTokenizer::from_vocab_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Exception(errno_error(path, errno, "cannot read vocabulary"));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  if (auto bad = find_invalid_utf8(data)) {
    throw Exception(ErrorCode::kCorrupt,
                    path + ": vocabulary is not valid UTF-8 (offset " + std::to_string(*bad) + ")");
  }
  // Python's text-mode readline (universal newlines: \n, \r\n, \r) then str.strip(); a later
  // duplicate of a token wins, as in Chinese-CLIP's load_vocab.
  std::unordered_map<std::string, int64_t> vocab;
  int64_t id = 0;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t end = data.find_first_of("\r\n", pos);
    if (end == std::string::npos) end = data.size();
    std::u32string line = decode_utf8(std::string_view(data).substr(pos, end - pos));
    size_t b = 0, e = line.size();
    while (b < e && is_python_space(line[b])) ++b;
    while (e > b && is_python_space(line[e - 1])) --e;
    vocab[to_utf8(line.substr(b, e - b))] = id++;
    pos = end;
    if (pos < data.size() && data[pos] == '\r') {
      ++pos;
      if (pos < data.size() && data[pos] == '\n') ++pos;
    } else if (pos < data.size()) {
      ++pos;  // '\n'
    }
  }
  for (const char* special : {"[CLS]", "[SEP]", "[UNK]"}) {
    if (!vocab.count(special)) {
      throw Exception(ErrorCode::kCorrupt, path + ": vocabulary has no " + special + " token");
    }
  }
  return std::make_unique<WordPieceTokenizer>(std::move(vocab));
}

WordPieceTokenizer::WordPieceTokenizer(std::unordered_map<std::string, int64_t> vocab)
    : vocab_(std::move(vocab)), cls_id_(vocab_.at("[CLS]")), sep_id_(vocab_.at("[SEP]")), unk_id_(vocab_.at("[UNK]")) {}

void WordPieceTokenizer::wordpiece(const std::u32string& word, std::vector<std::string>& out) const {
  if (word.size() > kMaxCharsPerWord) {
    out.emplace_back("[UNK]");
    return;
  }
  std::string utf8;
  std::vector<size_t> offset;  // byte offset of each code point, plus the end
  for (char32_t c : word) {
    offset.push_back(utf8.size());
    append_utf8(utf8, c);
  }
  offset.push_back(utf8.size());
  const size_t first_piece = out.size();
  size_t start = 0;
  std::string candidate;
  while (start < word.size()) {
    size_t end = word.size();
    bool found = false;
    for (; end > start; --end) {
      candidate.assign(start > 0 ? "##" : "");
      candidate.append(utf8, offset[start], offset[end] - offset[start]);
      if (vocab_.count(candidate)) {
        found = true;
        break;
      }
    }
    if (!found) {
      out.resize(first_piece);
      out.emplace_back("[UNK]");
      return;
    }
    out.push_back(candidate);
    start = end;
  }
}

std::vector<std::string> WordPieceTokenizer::tokenize(std::string_view text) const {
  const std::u32string input = decode_utf8(text);
  // Cleaning and CJK splitting in one pass; words are separated by U+0020 afterwards.
  std::u32string cleaned;
  cleaned.reserve(input.size() * 2);
  for (char32_t c : input) {
    if (c == 0 || c == 0xFFFD || is_bert_control(c)) continue;
    if (is_bert_whitespace(c)) {
      cleaned += U' ';
    } else if (is_cjk_ideograph(c)) {
      cleaned += U' ';
      cleaned += c;
      cleaned += U' ';
    } else {
      cleaned += c;
    }
  }
  std::vector<std::string> pieces;
  size_t i = 0;
  while (i < cleaned.size()) {
    while (i < cleaned.size() && is_python_space(cleaned[i])) ++i;
    size_t j = i;
    while (j < cleaned.size() && !is_python_space(cleaned[j])) ++j;
    if (j == i) break;
    const std::u32string word = strip_accents(python_lower(cleaned.substr(i, j - i)));
    // Punctuation splits the word; each punctuation character is a word of its own.
    std::u32string part;
    for (char32_t c : word) {
      if (is_bert_punctuation(c)) {
        if (!part.empty()) wordpiece(part, pieces);
        part.clear();
        wordpiece(std::u32string(1, c), pieces);
      } else {
        part += c;
      }
    }
    if (!part.empty()) wordpiece(part, pieces);
    i = j;
  }
  return pieces;
}

size_t WordPieceTokenizer::count_pieces(std::string_view text) const {
  if (auto bad = find_invalid_utf8(text)) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "text is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
  }
  return tokenize(text).size();
}

std::vector<int64_t> WordPieceTokenizer::encode(std::string_view text, int context_length) const {
  if (context_length < 2) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "context length must be at least 2, got " + std::to_string(context_length));
  }
  if (auto bad = find_invalid_utf8(text)) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "text is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
  }
  std::vector<std::string> pieces = tokenize(text);
  std::vector<int64_t> ids(static_cast<size_t>(context_length), 0);
  ids[0] = cls_id_;
  size_t n = std::min(pieces.size(), static_cast<size_t>(context_length - 2));
  for (size_t k = 0; k < n; ++k) {
    auto it = vocab_.find(pieces[k]);
    ids[k + 1] = it == vocab_.end() ? unk_id_ : it->second;
  }
  ids[n + 1] = sep_id_;
  return ids;
}

}  // namespace cnclip
