// Combined queries: one query that mixes weighted text and image terms and subtracts unwanted ones,
// e.g. `2:海边 + ./pool.jpg - 人群` (rclip's + and - with weights). Used by `search-text` and by
// `serve`'s GET /api/v1/search?q=, so both read the same syntax.
//
// Syntax (README "Combined queries"):
//   - A query is combined only when it holds an operator: a '+' or '-' with whitespace on both sides
//     (outside double quotes). Anything else is a plain text query, as before: "C++", "4:3 照片",
//     "黑-白", "-5度" and "一 -" stay plain text. (search-text --plain / serve's plain=1 switch the
//     syntax off for a text that holds " + " or " - ".)
//   - Terms are the text between operators, spaces around them trimmed. The first term counts
//     positive; each later one has the sign of the operator before it.
//   - A term may start with a weight, NUMBER: (digits with an optional decimal part, > 0), e.g.
//     "2:海边" or "0.5:./a.jpg"; default 1.
//   - A term that starts with '/', './', '../' or '~/' is an image (a path); any other term is text.
//   - A term in double quotes ("..." after the optional weight) is taken as it is: its operators,
//     its leading digits and colon are not syntax ("10:30 的日落" is then text, and a path with
//     " - " in it stays one path). An unbalanced quote is an error.
// The query vector is the normalized weighted sum of the terms' normalized embeddings.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cnclip/catalog.h"
#include "cnclip/error.h"
#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip {

struct QueryTerm {
  enum class Kind { kText, kImage };
  Kind kind = Kind::kText;
  std::string value;  // the text, or the image path as written (weight and quotes removed)
  double weight = 1;  // signed: negative for a term after '-'
};

// The terms of a combined query, or an empty vector for a plain query (no operator). Throws
// Exception(kInvalidArgument) naming the term for a malformed combined query: an empty term (two
// operators in a row), a weight that is 0 or not a finite number, an unbalanced quote.
std::vector<QueryTerm> parse_combined_query(std::string_view query);

// "term 2 '人群'": how messages name a term (1-based).
std::string term_name(size_t index, const QueryTerm& term);

// The normalized sum of weight_i * e_i / |e_i| over the terms, `embeddings` holding terms.size() *
// dim floats. Computed in double precision. Throws Exception(kInvalidArgument) when the sum is
// (nearly) zero, i.e. the terms cancel out ("海边 - 海边"): no direction is left to search.
std::vector<float> combine_term_embeddings(const std::vector<QueryTerm>& terms, const std::vector<float>& embeddings,
                                           int dim);

// Embedding of an image term: the path as written in the query; returns model.dim() floats, or
// throws Exception naming the path.
using ImageTermEmbedder = std::function<std::vector<float>(const std::string& path)>;

// The embedding (model.dim() unit floats) of one query: a plain query is encoded as one text; a
// combined one (parse_combined_query) has its text terms encoded in one batch and its image terms
// through `image_term` (when empty, an image term is refused with kInvalidArgument). Throws
// Exception(kInvalidArgument) naming the term when a text term is not valid UTF-8 or blank.
std::vector<float> encode_query(Model& model, const std::string& query, const ImageTermEmbedder& image_term);

// An image file's embedding as `search-image` gets it: the catalog's stored one when the file is
// indexed (by canonical path) and its size and mtime are unchanged, so no decoding and no image
// tower; otherwise the file decoded with `decode` and run through the image tower. `catalog` may
// be null (no index). Errors name the path: missing, unreadable, not an image, ...
Result<std::vector<float>> image_file_embedding(Model& model, Catalog* catalog, const std::string& path,
                                                const DecodeOptions& decode);

}  // namespace cnclip
