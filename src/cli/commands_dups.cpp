// dups
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cnclip/dups.h"
#include "cnclip/file_walk.h"
#include "cnclip/output.h"
#include "options.h"

namespace cnclip::cli {
namespace {

struct DupsCommand {
  double threshold = 0.95;
  std::string under;
  bool null_separated = false;
};

std::string six_decimals(float score) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6f", static_cast<double>(score));
  return buf;
}

// {"group":N,"exact":B,"paths":[...],"scores":[...]}, scores with six decimals as in search output;
// "paths_bytes" (hex of every path, parallel to "paths") only when some path is not UTF-8.
std::string group_json(size_t number, const DupGroup& g) {
  std::string paths, scores, bytes;
  bool any_bytes = false;
  for (size_t i = 0; i < g.paths.size(); ++i) {
    nlohmann::ordered_json one;
    set_string_field(one, "p", g.paths[i]);
    any_bytes = any_bytes || one.contains("p_bytes");
    paths += (i ? "," : "") + dump_json(one["p"]);
    bytes += std::string(i ? "," : "") + "\"" + hex_encode(g.paths[i]) + "\"";
    scores += (i ? "," : "") + six_decimals(g.scores[i]);
  }
  std::string s = "{\"group\":" + std::to_string(number) + ",\"exact\":" + (g.exact ? "true" : "false") +
                  ",\"paths\":[" + paths + "]";
  if (any_bytes) s += ",\"paths_bytes\":[" + bytes + "]";
  return s + ",\"scores\":[" + scores + "]}";
}

int run_dups(const CommonOptions& o, const DupsCommand& c) {
  const bool terminal = stdout_is_terminal();
  const OutputFormat format = parse_output_format(o.format, terminal);
  DupsOptions options;
  options.threshold = static_cast<float>(c.threshold);
  if (!c.under.empty()) options.under = canonical_path(c.under).value();
  auto store = IndexStore::open(resolve_index_dir(o.index), IndexAccess::kRead);
  const auto groups = find_duplicates(*store, options);
  const char end = c.null_separated ? '\0' : '\n';
  std::ostream& out = std::cout;
  size_t number = 0;
  for (const auto& g : groups) {
    ++number;
    switch (format) {
      case OutputFormat::kJsonl: out << group_json(number, g) << '\n'; break;
      case OutputFormat::kJson: out << (number == 1 ? "[" : ",") << group_json(number, g); break;
      case OutputFormat::kPaths:
        if (number > 1) out << end;  // an empty line (record) between groups
        for (const auto& p : g.paths) out << (terminal ? terminal_safe(p) : p) << end;
        break;
      case OutputFormat::kTable:
        if (number > 1) out << '\n';
        out << "group " << number << ": " << g.paths.size()
            << (g.exact ? " identical files (same bytes)" : " near duplicates (cosine to the first)") << '\n';
        for (size_t i = 0; i < g.paths.size(); ++i) {
          out << "  " << six_decimals(g.scores[i]) << "  " << terminal_safe(g.paths[i]) << '\n';
        }
        break;
    }
    check_stdout();
  }
  if (format == OutputFormat::kJson) out << (groups.empty() ? "[]" : "]") << '\n';
  if (format == OutputFormat::kTable && groups.empty()) {
    out << "(no duplicates at threshold " << six_decimals(options.threshold) << ")\n";
  }
  flush_stdout();
  return 0;
}

}  // namespace

void register_dups_command(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<DupsCommand>();
  DupsCommand& c = *cp;
  auto* sub = app.add_subcommand(
      "dups", "Groups of identical and near-duplicate indexed photos, from the stored embeddings (no model needed)");
  real_number(sub->add_option("--threshold", c.threshold,
                              "Cosine similarity from which two photos are near duplicates (every member of a "
                              "group is within it of the group's first)")
                  ->capture_default_str(),
              0, 1, /*min_exclusive=*/true);
  sub->add_option("--under", c.under, "Only files below this folder (or only this file)");
  one_of(
      sub->add_option("--format", o.format, "table, json, jsonl or paths (default: table on a terminal, else jsonl)"),
      {"table", "json", "jsonl", "paths", "auto"});
  sub->add_flag("-0,--null", c.null_separated, "With --format paths: end each path with NUL instead of a newline");
  add_index_option(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_dups(o, *cp); }; });
}

}  // namespace cnclip::cli
