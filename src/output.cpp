#include "cnclip/output.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace cnclip {
namespace {

// Six decimals are far below the model's own noise and keep the output readable.
double rounded_score(float s) { return std::round(static_cast<double>(s) * 1e6) / 1e6; }

nlohmann::ordered_json hit_json(const QueryResult& r, const RankedHit& h) {
  return nlohmann::ordered_json{{"query", r.query}, {"rank", h.rank}, {"path", h.path}, {"score", rounded_score(h.score)}};
}

}  // namespace

std::string dump_json(const nlohmann::ordered_json& value) {
  return value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

OutputFormat parse_output_format(const std::string& name, bool stdout_is_terminal) {
  if (name.empty() || name == "auto") return stdout_is_terminal ? OutputFormat::kTable : OutputFormat::kJsonl;
  if (name == "table") return OutputFormat::kTable;
  if (name == "json") return OutputFormat::kJson;
  if (name == "jsonl") return OutputFormat::kJsonl;
  if (name == "paths") return OutputFormat::kPaths;
  throw Exception(ErrorCode::kInvalidArgument, "unknown format '" + name + "' (table, json, jsonl, paths)");
}

void print_results(std::ostream& out, const std::vector<QueryResult>& results, OutputFormat format) {
  switch (format) {
    case OutputFormat::kJson: {
      nlohmann::ordered_json all = nlohmann::ordered_json::array();
      for (const auto& r : results) {
        for (const auto& h : r.hits) all.push_back(hit_json(r, h));
      }
      out << dump_json(all) << '\n';
      break;
    }
    case OutputFormat::kJsonl:
      for (const auto& r : results) {
        for (const auto& h : r.hits) out << dump_json(hit_json(r, h)) << '\n';
      }
      break;
    case OutputFormat::kPaths:
      for (const auto& r : results) {
        for (const auto& h : r.hits) out << h.path << '\n';
      }
      break;
    case OutputFormat::kTable:
      for (size_t i = 0; i < results.size(); ++i) {
        const auto& r = results[i];
        if (i) out << '\n';
        out << "query: " << r.query << '\n';
        if (r.hits.empty()) out << "  (no results)\n";
        for (const auto& h : r.hits) {
          char head[48];
          std::snprintf(head, sizeof(head), "%4d  %.4f  ", h.rank, h.score);
          out << head << h.path << '\n';
        }
      }
      break;
  }
  out.flush();
}

}  // namespace cnclip
