#include "cnclip/query.h"

#include <cmath>
#include <cstdlib>

#include "cnclip/file_walk.h"
#include "cnclip/image.h"

namespace cnclip {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// The length of a leading "NUMBER:" weight (digits with an optional decimal part), or 0.
size_t weight_prefix(std::string_view s) {
  size_t i = 0, digits = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i, ++digits;
  }
  if (digits == 0 || i >= s.size() || s[i] != ':') return 0;
  return i + 1;
}

}  // namespace

std::string term_name(size_t index, const QueryTerm& term) {
  return "term " + std::to_string(index + 1) + " '" + term.value + "'";
}

std::vector<QueryTerm> parse_combined_query(std::string_view query) {
  // Operator positions: '+' or '-' with whitespace on both sides, outside double quotes.
  // With an unbalanced '"' the quoting is unknown: an operator anywhere makes it an error (whichever
  // side the missing quote is on), none leaves it a plain query ('5" 相框' is text).
  std::vector<size_t> ops;
  bool quoted = false, any_operator = false;
  for (size_t i = 0; i < query.size(); ++i) {
    const char c = query[i];
    if (c == '"') {
      quoted = !quoted;
    } else if ((c == '+' || c == '-') && i > 0 && i + 1 < query.size() && is_space(query[i - 1]) &&
               is_space(query[i + 1])) {
      any_operator = true;
      if (!quoted) ops.push_back(i);
    }
  }
  if (!any_operator) return {};
  if (quoted) {
    throw Exception(ErrorCode::kInvalidArgument, "the combined query has an unbalanced '\"'");
  }
  if (ops.empty()) return {};  // every operator quoted: one plain term
  std::vector<QueryTerm> terms;
  size_t start = 0;
  for (size_t k = 0; k <= ops.size(); ++k) {
    const size_t end = k < ops.size() ? ops[k] : query.size();
    std::string_view raw = trim(query.substr(start, end - start));
    QueryTerm term;
    const double sign = k == 0 || query[ops[k - 1]] == '+' ? 1.0 : -1.0;
    const std::string where = "term " + std::to_string(k + 1) + " of the combined query";
    if (raw.empty()) {
      throw Exception(ErrorCode::kInvalidArgument, where + " is empty (two operators in a row, or one at an end?)");
    }
    if (const size_t w = weight_prefix(raw)) {
      const std::string number(raw.substr(0, w - 1));
      const double weight = std::strtod(number.c_str(), nullptr);
      if (!std::isfinite(weight) || !(weight > 0)) {
        throw Exception(ErrorCode::kInvalidArgument,
                        where + " has the weight " + number + ": a weight must be a number greater than 0");
      }
      term.weight = weight;
      raw = trim(raw.substr(w));
    }
    if (raw.size() >= 2 && raw.front() == '"' && raw.back() == '"') {
      raw = raw.substr(1, raw.size() - 2);
    } else if (raw.size() == 1 && raw.front() == '"') {
      throw Exception(ErrorCode::kInvalidArgument, where + " has an unbalanced '\"'");
    }
    if (trim(raw).empty()) throw Exception(ErrorCode::kInvalidArgument, where + " is empty");
    term.value = std::string(raw);
    term.weight *= sign;
    term.kind = starts_with(raw, "/") || starts_with(raw, "./") || starts_with(raw, "../") || starts_with(raw, "~/")
                    ? QueryTerm::Kind::kImage
                    : QueryTerm::Kind::kText;
    terms.push_back(std::move(term));
    start = end + 1;
  }
  return terms;
}

std::vector<float> combine_term_embeddings(const std::vector<QueryTerm>& terms, const std::vector<float>& embeddings,
                                           int dim) {
  const size_t d = static_cast<size_t>(dim);
  if (embeddings.size() != terms.size() * d) {
    throw Exception(ErrorCode::kInternal, "combined query: embeddings do not match the terms");
  }
  std::vector<double> sum(d, 0.0);
  for (size_t t = 0; t < terms.size(); ++t) {
    const float* e = &embeddings[t * d];
    double norm = 0;
    for (size_t i = 0; i < d; ++i) norm += static_cast<double>(e[i]) * e[i];
    norm = std::sqrt(norm);
    if (!(norm > 0) || !std::isfinite(norm)) {
      throw Exception(ErrorCode::kCorrupt, term_name(t, terms[t]) + ": its embedding is not a usable vector");
    }
    for (size_t i = 0; i < d; ++i) sum[i] += terms[t].weight * e[i] / norm;
  }
  double norm = 0;
  for (double v : sum) norm += v * v;
  norm = std::sqrt(norm);
  // Unit vectors summed with weights of 1 or more: a length this small means they cancel out.
  if (!(norm > 1e-6)) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "the terms of the combined query cancel out: nothing is left to search for");
  }
  std::vector<float> out(d);
  for (size_t i = 0; i < d; ++i) out[i] = static_cast<float>(sum[i] / norm);
  return out;
}

std::vector<float> encode_query(Model& model, const std::string& query, const ImageTermEmbedder& image_term) {
  const auto terms = parse_combined_query(query);
  if (terms.empty()) return model.encode_texts({query});
  const size_t dim = static_cast<size_t>(model.dim());
  std::vector<std::string> texts;
  std::vector<size_t> text_terms;
  for (size_t t = 0; t < terms.size(); ++t) {
    if (terms[t].kind != QueryTerm::Kind::kText) continue;
    if (auto bad = find_invalid_utf8(terms[t].value)) {
      throw Exception(
          ErrorCode::kInvalidArgument,
          "term " + std::to_string(t + 1) + " is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
    }
    if (model.tokenizer().count_pieces(terms[t].value) == 0) {
      throw Exception(ErrorCode::kInvalidArgument, term_name(t, terms[t]) + " of the query is blank: it has no words");
    }
    texts.push_back(terms[t].value);
    text_terms.push_back(t);
  }
  std::vector<float> embeddings(terms.size() * dim);
  for (size_t t = 0; t < terms.size(); ++t) {
    if (terms[t].kind != QueryTerm::Kind::kImage) continue;
    if (!image_term) {
      throw Exception(ErrorCode::kInvalidArgument, term_name(t, terms[t]) + " is an image, which is not taken here");
    }
    const auto e = image_term(terms[t].value);
    if (e.size() != dim) {
      throw Exception(ErrorCode::kMismatch, term_name(t, terms[t]) + ": its embedding has dimension " +
                                                std::to_string(e.size()) + ", the model's is " + std::to_string(dim));
    }
    std::copy(e.begin(), e.end(), embeddings.begin() + static_cast<std::ptrdiff_t>(t * dim));
  }
  if (!texts.empty()) {
    const auto e = model.encode_texts(texts);
    for (size_t i = 0; i < text_terms.size(); ++i) {
      std::copy(e.begin() + static_cast<std::ptrdiff_t>(i * dim),
                e.begin() + static_cast<std::ptrdiff_t>((i + 1) * dim),
                embeddings.begin() + static_cast<std::ptrdiff_t>(text_terms[i] * dim));
    }
  }
  return combine_term_embeddings(terms, embeddings, model.dim());
}

Result<std::vector<float>> image_file_embedding(Model& model, Catalog* catalog, const std::string& path,
                                                const DecodeOptions& decode) {
  auto canonical = canonical_path(path);
  if (!canonical) return canonical.error();
  auto found = stat_file(canonical.value());
  if (!found) return found.error();
  const size_t dim = static_cast<size_t>(model.dim());
  // An indexed, unchanged file already has its embedding: no need to load the image tower.
  if (catalog) {
    if (auto rec = catalog->find(canonical.value());
        rec && rec->size == found.value().size && rec->mtime_ns == found.value().mtime_ns) {
      auto e = catalog->embedding(rec->id);
      if (e.size() == dim) return e;
    }
  }
  const Normalization& norm = model.manifest().image;
  std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
  auto ok = preprocess_image_file(path, norm, decode, pixels.data());
  if (!ok) return ok.error();
  return model.encode_images(pixels.data(), 1);
}

}  // namespace cnclip
