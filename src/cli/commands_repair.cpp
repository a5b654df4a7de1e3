// repair
#include <iostream>
#include <nlohmann/json.hpp>

#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"
#include "cnclip/index_store.h"
#include "cnclip/output.h"
#include "cnclip/repair.h"
#include "options.h"

namespace cnclip::cli {
namespace {

struct RepairCommand {
  bool wait = false;
};

int run_repair(const CommonOptions& o, const RepairCommand& c) {
  const RepairReport r = repair_index(resolve_index_dir(o.index), c.wait);
  auto count = [](const std::map<std::string, int64_t>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? int64_t{0} : it->second;
  };
  if (o.format == "json") {
    nlohmann::ordered_json j;
    set_string_field(j, "index", canonical_or_absolute(r.index_dir));  // index_bytes when the name is not UTF-8
    j.update(nlohmann::ordered_json{{"damaged", r.damaged},
                                    {"problems", r.problems},
                                    {"damaged_copy", r.damaged_copy},
                                    {"kept", r.kept},
                                    {"unreadable", r.unreadable},
                                    {"files_invalid", r.files_invalid},
                                    {"files_lost_known", r.files_lost_known},
                                    {"snapshot_rewritten", r.snapshot_rewritten},
                                    {"header_restored", r.header_restored},
                                    {"roots_lost", r.roots_lost},
                                    {"page_bytes", r.page_bytes},
                                    {"pages_enlarged", r.pages_enlarged}});
    std::cout << dump_json(j) << '\n';
  }
  if (!r.damaged) {
    std::cerr << "cnclip: " << r.index_dir << ": the catalog is sound (" << count(r.kept, "files") << " files); "
              << (r.pages_enlarged
                      ? "rewritten from " + std::to_string(r.page_bytes / 1024) + " KiB pages into " +
                            std::to_string(kCatalogPageBytes / 1024) + " KiB ones, the format cnclip now makes"
                      : "nothing to repair")
              << (r.snapshot_rewritten ? "; vector snapshot rewritten" : "") << '\n';
    if (!r.pages_enlarged && r.page_bytes > 0 && r.page_bytes < kCatalogPageBytes) {
      std::cerr << "cnclip: its " << r.page_bytes / 1024
                << " KiB pages were kept: another process was reading the catalog; run 'cnclip repair' again when "
                   "none is ('cnclip serve' and searches)\n";
    }
    return 0;
  }
  std::cerr << "cnclip: " << r.index_dir << ": repaired the damaged catalog (" << r.problems.front()
            << (r.problems.size() > 1 ? ", ..." : "") << ")\n";
  std::cerr << "cnclip: kept " << count(r.kept, "files") << " files with their embeddings, " << count(r.kept, "roots")
            << " folders, " << count(r.kept, "failures") << " remembered failures, " << count(r.kept, "meta")
            << " settings\n";
  int64_t unreadable = 0;
  for (const auto& [t, n] : r.unreadable) unreadable += n;
  std::cerr << "cnclip: lost: " << r.files_lost_known << " files known to the vector snapshot, " << unreadable
            << " unreadable row position(s), " << r.files_invalid << " damaged embedding(s); "
            << (r.roots_lost ? "the list of indexed folders was lost too: give the folders again "
                               "('cnclip index FOLDER...', with their options) to re-encode what was lost\n"
                             : "the next 'cnclip index' re-encodes what was lost\n");
  std::cerr << "cnclip: the damaged catalog is kept as " << r.damaged_copy << '\n';
  return 0;
}

}  // namespace

void register_repair_commands(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<RepairCommand>();
  auto* sub = app.add_subcommand(
      "repair",
      "Rebuild a damaged index: keep every readable entry, set the damaged catalog aside, rewrite the vectors");
  sub->add_flag("--wait", cp->wait, "Wait for a running index instead of failing");
  sub->add_option("--format", o.format, "Report format: text (stderr) or json (stdout)")
      ->check(CLI::IsMember({"text", "json"}));
  add_index_option(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_repair(o, *cp); }; });
}

}  // namespace cnclip::cli
