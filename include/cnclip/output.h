// How results are printed: machine formats (JSON, JSONL, paths) on stdout, stable and documented in
// the README; a table for people at a terminal.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "cnclip/search.h"

namespace cnclip {

enum class OutputFormat { kTable, kJson, kJsonl, kPaths };

// "table", "json", "jsonl", "paths", or "auto"/"" (table on a terminal, jsonl otherwise).
// Throws Exception(kInvalidArgument) for anything else.
OutputFormat parse_output_format(const std::string& name, bool stdout_is_terminal);

// json: one array of {"query","rank","path","score"} for the whole call; jsonl: one such object per
// line; paths: one path per line; table: a block per query.
void print_results(std::ostream& out, const std::vector<QueryResult>& results, OutputFormat format);

// Compact JSON text; invalid UTF-8 (possible in file names) becomes U+FFFD instead of an error.
// Objects printed for users and scripts are ordered_json, so fields come in the documented order.
std::string dump_json(const nlohmann::ordered_json& value);

}  // namespace cnclip
