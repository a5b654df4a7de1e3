// The private protocol between `cnclip search-*` and `cnclip serve` over INDEX/serve.sock (see
// include/cnclip/route.h): HTTP/1.1 on a Unix socket, JSON bodies. Not a public API: both ends are
// the same build (the hello answer carries the protocol number, and a client of another one does not
// route).
//   GET  /route/v1/hello         -> {"protocol", "index", "model_fingerprint", "model_precision", "device", "pid"}
//   POST /route/v1/check         {"options", "mixed_precision"} -> {}
//   POST /route/v1/search-text   {"queries": [...], "options", "mixed_precision"} -> {"results": [...]}
//   POST /route/v1/search-image  one JSON line {"label", "exclude", "options", "mixed_precision", "has_bytes",
//                                and "path", "size", "mtime_ns" or "name", "decode"}, '\n', the image's bytes
//                                -> {"results": [one]} | {"need_bytes": true} | {"image_error": {...}}
// Any other answer (an error status with {"error": {"code", "message"}}) means: answer locally.
// Strings that may not be UTF-8 (paths, queries) travel as set_string_field writes them (+ "_bytes"),
// scores as the exact float (a JSON double prints the shortest text that reads back the same).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "cnclip/image.h"
#include "cnclip/output.h"
#include "cnclip/search.h"
#include "json_number.h"

namespace cnclip::route {

constexpr int kProtocol = 1;

// Every field of SearchOptions must travel, or a routed query would silently ignore an option: a
// new field must be added to options_json / options_from_json below (and this size updated).
// The same for the fields of a hit (results_json / results_from_json).
static_assert(sizeof(RankedHit) == 152,
              "RankedHit changed: send the new field in src/server/route_protocol.h "
              "(results_json and results_from_json), then update this size");
static_assert(sizeof(SearchOptions) == 128,
              "SearchOptions changed: send the new field in src/server/route_protocol.h (options_json and "
              "options_from_json), then update this size");

inline nlohmann::ordered_json options_json(const SearchOptions& o) {
  nlohmann::ordered_json j;
  j["top_k"] = o.top_k;
  if (o.threshold) j["threshold"] = static_cast<double>(*o.threshold);
  set_string_field(j, "under", o.under);
  if (o.after) j["after"] = *o.after;
  if (o.before) j["before"] = *o.before;
  j["sort"] = o.sort == SortOrder::kDate ? "date" : "score";
  j["offset"] = o.offset;
  // --not vectors travel too (floats as JSON doubles round-trip exactly), though the CLI does not
  // route a search with --not: it would need the model to encode the texts.
  if (!o.not_like.empty()) {
    j["not_like"] = o.not_like;
    j["not_threshold"] = static_cast<double>(o.not_threshold);
  }
  return j;
}

inline SearchOptions options_from_json(const nlohmann::json& j) {
  SearchOptions o;
  o.top_k = detail::json_integer<int>(j.at("top_k"), "top_k");
  if (j.contains("threshold")) o.threshold = detail::json_float(j.at("threshold"), "threshold");
  o.under = get_string_field(j, "under");
  if (j.contains("after")) o.after = detail::json_integer<int64_t>(j.at("after"), "after");
  if (j.contains("before")) o.before = detail::json_integer<int64_t>(j.at("before"), "before");
  o.sort = j.at("sort").get<std::string>() == "date" ? SortOrder::kDate : SortOrder::kScore;
  o.offset = detail::json_integer<int64_t>(j.at("offset"), "offset");
  if (j.contains("not_like")) {
    for (const auto& e : j.at("not_like")) o.not_like.push_back(detail::json_floats(e, "not_like"));
    o.not_threshold = detail::json_float(j.at("not_threshold"), "not_threshold");
  }
  return o;
}

inline nlohmann::ordered_json decode_json(const DecodeOptions& d) {
  return {{"apply_exif_orientation", d.apply_exif_orientation},
          {"max_pixels", d.max_pixels},
          {"reduced_decode_min_side", d.reduced_decode_min_side}};
}

inline DecodeOptions decode_from_json(const nlohmann::json& j) {
  DecodeOptions d;
  d.apply_exif_orientation = j.at("apply_exif_orientation").get<bool>();
  d.max_pixels = detail::json_integer<int64_t>(j.at("max_pixels"), "max_pixels");
  d.reduced_decode_min_side = detail::json_integer<int>(j.at("reduced_decode_min_side"), "reduced_decode_min_side");
  return d;
}

// Text that may hold any bytes, as a JSON value (string, plus its hex when not UTF-8).
inline nlohmann::ordered_json bytes_field(const std::string& value) {
  nlohmann::ordered_json j;
  set_string_field(j, "s", value);
  return j;
}
inline std::string from_bytes_field(const nlohmann::json& j) { return get_string_field(j, "s"); }

inline nlohmann::ordered_json results_json(const std::vector<QueryResult>& results) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& r : results) {
    nlohmann::ordered_json q;
    q["query"] = bytes_field(r.query);
    q["hits"] = nlohmann::ordered_json::array();
    for (const auto& h : r.hits) {
      nlohmann::ordered_json hit;
      hit["rank"] = h.rank;
      hit["path"] = bytes_field(h.path);
      hit["score"] = static_cast<double>(h.score);
      hit["id"] = h.id;
      // What the printers show of a photo besides path and score (photo_meta.h).
      if (h.taken_at) hit["taken_at"] = *h.taken_at;
      hit["meta"] = {{"taken_at", h.meta.taken_at},
                     {"source", static_cast<int>(h.meta.source)},
                     {"width", h.meta.width},
                     {"height", h.meta.height}};
      if (h.meta.offset_minutes) hit["meta"]["offset_minutes"] = *h.meta.offset_minutes;
      // A video's moment (seconds) and merged range.
      if (h.time)
        hit["video"] = {{"time", *h.time}, {"start", h.start.value_or(*h.time)}, {"end", h.end.value_or(*h.time)}};
      q["hits"].push_back(std::move(hit));
    }
    out.push_back(std::move(q));
  }
  return out;
}

inline std::vector<QueryResult> results_from_json(const nlohmann::json& j) {
  std::vector<QueryResult> out;
  for (const auto& q : j) {
    QueryResult r;
    r.query = from_bytes_field(q.at("query"));
    for (const auto& h : q.at("hits")) {
      RankedHit hit;
      hit.rank = detail::json_integer<int>(h.at("rank"), "rank");
      hit.path = from_bytes_field(h.at("path"));
      hit.score = detail::json_float(h.at("score"), "score");
      hit.id = detail::json_integer<int64_t>(h.at("id"), "id");
      if (h.contains("taken_at")) hit.taken_at = detail::json_integer<int64_t>(h.at("taken_at"), "taken_at");
      const auto& m = h.at("meta");
      hit.meta.taken_at = detail::json_integer<int64_t>(m.at("taken_at"), "taken_at");
      hit.meta.source = static_cast<TimeSource>(detail::json_integer<int>(m.at("source"), "source"));
      hit.meta.width = detail::json_integer<int>(m.at("width"), "width");
      hit.meta.height = detail::json_integer<int>(m.at("height"), "height");
      if (m.contains("offset_minutes"))
        hit.meta.offset_minutes = detail::json_integer<int>(m.at("offset_minutes"), "offset_minutes");
      if (h.contains("video")) {
        const auto& v = h.at("video");
        hit.time = detail::json_double(v.at("time"), "time");
        hit.start = detail::json_double(v.at("start"), "start");
        hit.end = detail::json_double(v.at("end"), "end");
      }
      r.hits.push_back(std::move(hit));
    }
    out.push_back(std::move(r));
  }
  return out;
}

inline nlohmann::ordered_json error_json(const Error& e) {
  nlohmann::ordered_json j;
  j["code"] = error_code_name(e.code);
  j["message"] = bytes_field(e.message);
  return j;
}

inline Error error_from_json(const nlohmann::json& j) {
  Error e;
  const std::string name = j.at("code").get<std::string>();
  e.code = ErrorCode::kInternal;
  for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
    if (name == error_code_name(static_cast<ErrorCode>(c))) e.code = static_cast<ErrorCode>(c);
  }
  e.message = from_bytes_field(j.at("message"));
  return e;
}

}  // namespace cnclip::route
