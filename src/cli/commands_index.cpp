// index, info, remove
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"
#include "cnclip/import.h"
#include "cnclip/indexer.h"
#include "cnclip/info.h"
#include "cnclip/output.h"
#include "cnclip/remove.h"
#include "cnclip/runtime.h"
#include "cnclip/video.h"
#include "options.h"
#include "progress.h"

namespace cnclip::cli {
namespace {

// Progress bar and per-file errors on stderr.
class TerminalObserver : public IndexObserver {
 public:
  TerminalObserver(bool bar, bool quiet) : bar_(bar), quiet_(quiet) {}
  ~TerminalObserver() override { end_bar(); }

  void on_plan(int64_t to_encode, int64_t unchanged, int64_t gone) override {
    if (!quiet_ && (to_encode > 0 || gone > 0)) {
      std::cerr << "cnclip: " << to_encode << " to index, " << unchanged << " unchanged, " << gone << " gone\n";
    }
    bar_.restart();
  }
  void on_progress(int64_t done, int64_t total) override { bar_.update(done, total); }
  void on_file_error(const Error& e) override {
    end_bar();
    std::cerr << "cnclip: skipped: " << terminal_safe(e.message) << '\n';
  }
  void on_notice(const std::string& message) override {
    end_bar();
    print_warning(message);
  }
  // Moves past the progress bar so that the next message starts on a line of its own.
  void end_bar() { bar_.end(); }

 private:
  ProgressBar bar_;
  bool quiet_;
};

struct IndexCommand {
  std::vector<std::string> paths;
  std::vector<std::string> excludes;
  std::string extensions;
  bool hidden = false, reindex = false, wait = false, retry_failed = false, no_video = false, confirm_removal = false;
  double frame_interval = kDefaultFrameInterval;
  CLI::Option *hidden_opt = nullptr, *exclude_opt = nullptr, *ext_opt = nullptr, *no_video_opt = nullptr;
  int batch_size = 4, jobs = 0;
  std::string vectors;  // --vectors TYPE (when vectors_opt is given; else the index's setting is kept)
  CLI::Option* vectors_opt = nullptr;
  bool vectors_given() const { return vectors_opt->count() > 0; }
};

struct ImportCommand {
  std::vector<std::string> files;
  std::string npy, paths_file;
  std::vector<std::string> maps;
  bool wait = false;
};

struct RemoveCommand {
  std::vector<std::string> paths;
  bool wait = false;
};

// `index --vectors TYPE` without paths: only the vector snapshot is rebuilt, as TYPE, from the
// catalog's vectors (no model needed).
int rebuild_snapshot(const CommonOptions& o, const IndexCommand& c, const std::string& dir) {
  auto store = IndexStore::open(dir, IndexAccess::kWrite, c.wait);
  store->set_vector_spec(VectorSpec::parse(c.vectors, store->embedding_dim()), /*ask_again=*/true);
  const auto start = std::chrono::steady_clock::now();
  store->write_snapshot();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string type = store->wanted_vector_type();
  if (o.format == "json") {
    nlohmann::ordered_json j;
    j["vectors"] = c.vectors;
    j["type"] = type;
    j["count"] = store->catalog().count();                // files
    j["vector_count"] = store->catalog().vector_count();  // files and video frames
    j["seconds"] = secs;
    j["tuning"] = store->snapshot_report();
    std::cout << j.dump() << std::endl;
  } else if (!o.quiet) {
    std::ostringstream line;
    line.precision(1);
    line << std::fixed << "cnclip: vector snapshot rebuilt as " << type << " (" << store->catalog().vector_count()
         << " vectors, " << secs << " s)";
    if (!store->snapshot_report().empty()) line << "; " << store->snapshot_report();
    std::cerr << line.str() << '\n';
  }
  return 0;
}

// The walk options the command line gives, or nullopt when it gives none (each root keeps its own).
std::optional<WalkOptions> walk_options(const IndexCommand& c) {
  std::optional<WalkOptions> walk;
  if (c.hidden_opt->count() + c.exclude_opt->count() + c.ext_opt->count() + c.no_video_opt->count() > 0) {
    walk = WalkOptions{};
    walk->include_hidden = c.hidden;
    walk->excludes = c.excludes;
  }
  if (walk && !c.extensions.empty()) walk->extensions = parse_extension_list(c.extensions);
  if (walk && c.no_video) {
    auto& exts = walk->extensions;
    exts.erase(std::remove_if(exts.begin(), exts.end(), [](const std::string& e) { return is_video_path("." + e); }),
               exts.end());
    if (exts.empty()) throw Exception(ErrorCode::kInvalidArgument, "--no-video: --ext names only videos");
  }
  return walk;
}

// The run's summary: JSON on stdout with --format json, the line for people on stderr; the exit
// status (interrupted_status() for an interrupted run).
int print_index_summary(const CommonOptions& o, const std::string& dir, const IndexSummary& s) {
  if (o.format == "json") {
    nlohmann::ordered_json j;
    set_string_field(j, "index", canonical_or_absolute(dir));  // index_bytes when the name is not UTF-8
    j.update(nlohmann::ordered_json{{"added", s.added},
                                    {"updated", s.updated},
                                    {"removed", s.removed},
                                    {"moved", s.moved},
                                    {"unchanged", s.unchanged},
                                    {"failed", s.failed},
                                    {"failed_before", s.failed_before},
                                    {"excluded", s.excluded},
                                    {"missing", s.missing},
                                    {"unreadable_folders", s.unreadable_folders},
                                    {"links", s.links},
                                    {"paired", s.paired},
                                    {"video_frames", s.video_frames},
                                    {"interrupted", s.interrupted},
                                    {"seconds", std::round(s.seconds * 1000) / 1000}});
    std::cout << dump_json(j) << std::endl;
  }
  char line[256];
  std::snprintf(line, sizeof(line),
                "%lld added, %lld updated, %lld removed, %lld moved, %lld unchanged, %lld failed in %.1f s",
                static_cast<long long>(s.added), static_cast<long long>(s.updated),
                static_cast<long long>(s.removed + s.excluded), static_cast<long long>(s.moved),
                static_cast<long long>(s.unchanged), static_cast<long long>(s.failed), s.seconds);
  if (s.interrupted) {
    std::cerr << "cnclip: interrupted; kept what was committed (" << line
              << "); run the same command again to finish\n";
    return interrupted_status();
  }
  if (!o.quiet) std::cerr << "cnclip: indexed: " << line << '\n';
  if (!o.quiet && s.paired > 0) {
    std::cerr << "cnclip: " << s.paired
              << " RAW file(s) next to a JPEG of the same name were left out (a RAW+JPEG pair is indexed as "
                 "its JPEG)\n";
  }
  if (!o.quiet && s.failed_before > 0) {
    std::cerr << "cnclip: " << s.failed_before
              << " unchanged file(s) that failed before were not tried again (--retry-failed)\n";
  }
  return 0;
}

int run_index_command(const CommonOptions& o, const IndexCommand& c) {
  install_interrupt_handlers();  // before the index exists, so Ctrl-C never finds it half-set-up
  IndexOptions opts;
  opts.paths = expand_stdin(c.paths, o.null_input);
  if (!c.paths.empty() && opts.paths.empty()) throw Exception(ErrorCode::kInvalidArgument, "no paths on stdin");
  const std::string dir = resolve_index_dir(o.index);
  std::error_code no_catalog;
  if (opts.paths.empty() && !std::filesystem::exists(dir + "/catalog.sqlite3", no_catalog) && !no_catalog) {
    // Before anything is created: a mistyped --index must not leave an empty index behind.
    throw Exception(ErrorCode::kInvalidArgument,
                    "nothing to index: " + dir + " holds no index yet; give folders or files (cnclip index PATH...)");
  }
  // Only the snapshot: from the catalog's vectors, whatever filled it (index or import).
  if (opts.paths.empty() && c.vectors_given()) return rebuild_snapshot(o, c, dir);
  opts.walk = walk_options(c);
  opts.frame_interval = c.frame_interval;
  if (opts.walk) check_walk_options(*opts.walk);  // before the model loads: a usage error is quick
  opts.confirm_removal = c.confirm_removal;
  opts.reindex = c.reindex;
  opts.retry_failed = c.retry_failed;
  opts.allow_mixed_precision = o.mixed_precision;
  opts.encode.batch_size = c.batch_size;
  opts.encode.decode_threads = c.jobs;
  auto model = open_model(o, /*many_calls=*/true);
  opts.decode = decode_options(o, model->manifest().image.size);
  // Before the index is opened: a refused type must not leave a new, empty index behind.
  std::optional<VectorSpec> spec;
  if (c.vectors_given()) spec = VectorSpec::parse(c.vectors, model->dim());
  auto store = IndexStore::open(dir, IndexAccess::kWrite, c.wait);
  if (opts.paths.empty() && store->catalog().roots().empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "nothing to index: give folders or files (cnclip index PATH...)");
  }
  // Built by the run's last step (IndexStore::ensure_snapshot).
  if (spec) store->set_vector_spec(*spec);
  TerminalObserver observer(stderr_is_terminal() && !o.quiet, o.quiet);
  const IndexSummary s = run_index(*store, *model, opts, observer);
  observer.end_bar();
  return print_index_summary(o, dir, s);
}

// What the command line alone can tell: the inputs given make sense together.
void check_import_usage(const CommonOptions& o, const ImportCommand& c) {
  if (c.files.empty() && c.npy.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "import: give a JSONL file, or --npy with --paths");
  }
  if (!c.npy.empty() && c.paths_file.empty())
    throw Exception(ErrorCode::kInvalidArgument, "import: --npy needs --paths");
  if (c.npy.empty() && !c.paths_file.empty())
    throw Exception(ErrorCode::kInvalidArgument, "import: --paths goes with --npy");
  if (std::count(c.files.begin(), c.files.end(), "-") + (c.paths_file == "-") > 1) {
    throw Exception(ErrorCode::kInvalidArgument, "import: '-' (stdin) can be given once");
  }
  if (o.null_input && c.paths_file.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "import: -0 goes with --paths (JSONL input is one object per line)");
  }
}

int run_import(const CommonOptions& o, const ImportCommand& c) {
  check_import_usage(o, c);
  std::vector<PrefixMap> maps;
  for (const auto& m : c.maps) maps.push_back(parse_prefix_map(m));
  std::vector<int64_t> mapped(maps.size(), 0);
  install_interrupt_handlers();
  const BundleManifest bundle = load_bundle_manifest(resolve_model_dir(o.model));
  // What each input is, and the cheap checks (files there, manifests of the same model) for all
  // of them before anything is written.
  struct Input {
    std::string jsonl;
    NpyImportFiles npy;
    bool null_separated_paths = false;  // --paths with -0 (a PREFIX.paths is one per line)
  };
  std::vector<Input> inputs;
  for (const auto& f : c.files) {
    if (f.size() > 4 && f.compare(f.size() - 4, 4, ".npy") == 0) {
      inputs.push_back(Input{"", npy_import_files(f)});
    } else {
      inputs.push_back(Input{f, {}});
    }
  }
  if (!c.npy.empty()) inputs.push_back(Input{"", NpyImportFiles{c.npy, c.paths_file, ""}, o.null_input});
  for (const auto& in : inputs) {
    if (!in.jsonl.empty()) {
      if (in.jsonl != "-") require_input_file(in.jsonl, "a JSONL file");
      continue;
    }
    require_input_file(in.npy.npy, "an .npy file");
    if (in.npy.paths != "-") require_input_file(in.npy.paths, "a file of paths");
    if (!in.npy.manifest.empty()) check_shard_manifest(in.npy.manifest, bundle, o.mixed_precision);
  }
  // Each file is read and checked whole before its rows are written: a bad line changes
  // nothing of that file, and the files before it stay imported (importing them again is a
  // no-op, so the same command can simply be run again once the bad file is fixed).
  std::unique_ptr<IndexStore> store;
  ImportSummary total;
  for (const auto& in : inputs) {
    const std::string name = in.jsonl.empty() ? in.npy.npy : in.jsonl;
    ImportRows rows = !in.jsonl.empty() ? read_embeddings_jsonl_file(in.jsonl, bundle.embedding_dim)
                                        : read_embeddings_npy(in.npy.npy, in.npy.paths, bundle.embedding_dim,
                                                              in.null_separated_paths);
    if (!in.npy.manifest.empty()) {
      check_shard_manifest(in.npy.manifest, bundle, o.mixed_precision, static_cast<int64_t>(rows.paths.size()));
    }
    const auto counts = map_path_prefixes(rows.paths, maps);
    for (size_t m = 0; m < maps.size(); ++m) mapped[m] += counts[m];
    if (!store) store = IndexStore::open(resolve_index_dir(o.index), IndexAccess::kWrite, c.wait);
    const ImportSummary s = import_embeddings(*store, bundle, rows.paths, rows.embeddings, o.mixed_precision,
                                              /*update_snapshot=*/false);
    total.added += s.added;
    total.updated += s.updated;
    total.unchanged += s.unchanged;
    if (inputs.size() > 1) {
      std::cerr << "cnclip: " << terminal_safe(name) << ": " << s.added << " new, " << s.updated << " updated, "
                << s.unchanged << " unchanged\n";
    }
    if (s.interrupted || (interrupt_requested() && &in != &inputs.back())) {
      throw Exception(ErrorCode::kInterrupted,
                      "import interrupted: " + std::to_string(total.added + total.updated) +
                          " embeddings written so far are kept; run the same command again to finish (what is "
                          "there already is skipped)");
    }
  }
  for (size_t m = 0; m < maps.size(); ++m) {
    if (mapped[m] == 0) print_warning("--map-prefix " + c.maps[m] + ": no imported path is below " + maps[m].from);
  }
  if (total.added + total.updated > 0) {
    store->write_snapshot();
  } else {
    store->ensure_snapshot();
  }
  std::cerr << "cnclip: imported " << total.added << " new and " << total.updated << " updated embeddings"
            << (total.unchanged ? ", " + std::to_string(total.unchanged) + " unchanged (already there)" : "") << '\n';
  return 0;
}

// What `cnclip info` says after the vector count: "(IVF1024,SQ8 snapshot, nprobe 128, 12 changed
// since; --vectors ivf)", "(flat snapshot; --vectors ivf: <why flat>)", "(no snapshot: ...)".
std::string snapshot_summary(const IndexInfo& info) {
  if (info.files == 0 && info.snapshot_type.empty()) return "";
  std::string s = " (";
  if (info.snapshot_type.empty()) {
    s += "no usable vector snapshot";
    if (!info.snapshot_problem.empty()) s += " (" + info.snapshot_problem + ")";
    s += ": searches read the catalog's vectors";
  } else {
    s += info.snapshot_type + " snapshot";
    if (!info.snapshot_search_parameter.empty()) s += ", " + info.snapshot_search_parameter;
    if (info.snapshot_changed_since > 0) {
      s += ", " + std::to_string(info.snapshot_changed_since) + " changed since (read from the catalog)";
    }
  }
  // The setting when it says more than the snapshot's type ("ivf", "auto", or a type not built).
  std::string setting = info.vectors_setting, type = info.snapshot_type;
  for (auto* t : {&setting, &type}) std::transform(t->begin(), t->end(), t->begin(), ::tolower);
  if (setting != type && !(setting == "flat" && type.empty())) s += "; --vectors " + info.vectors_setting;
  if (!info.snapshot_note.empty()) s += ": " + info.snapshot_note;
  return s + ")";
}

int run_info(const CommonOptions& o) {
  const IndexInfo info = read_index_info(resolve_index_dir(o.index));
  if (o.format == "json") {
    std::cout << dump_json(index_info_json(info)) << '\n';
    return 0;
  }
  std::cout << "index:    " << terminal_safe(info.index) << '\n'
            << "model:    "
            << (info.model_fingerprint.empty()
                    ? std::string("none yet (nothing indexed)")
                    : info.model_architecture + ' ' + info.model_precision + " (fingerprint " +
                          info.model_fingerprint.substr(0, 16) + ", dim " + std::to_string(info.embedding_dim) + ")")
            << '\n'
            << "files:    " << info.files << '\n'
            << "vectors:  " << info.vectors << snapshot_summary(info) << '\n'
            << "size:     " << info.disk_bytes / 1024 << " KiB"
            << (info.catalog_page_bytes > 0 && info.catalog_page_bytes < kCatalogPageBytes
                    ? " (the catalog is in the " + std::to_string(info.catalog_page_bytes / 1024) +
                          " KiB pages of an older cnclip: 'cnclip repair' rewrites it in " +
                          std::to_string(kCatalogPageBytes / 1024) +
                          " KiB ones, about half the size with ViT-B-16 embeddings and faster to scan)"
                    : "")
            << '\n'
            << "updated:  " << (info.updated_at.empty() ? "never" : info.updated_at) << '\n';
  for (size_t i = 0; i < info.folders.size(); ++i) {
    std::cout << (info.folder_is_file[i] ? "file:     " : "folder:   ") << terminal_safe(info.folders[i]) << '\n';
  }
  return 0;
}

int run_remove(const CommonOptions& o, const RemoveCommand& c) {
  const std::vector<std::string> given = expand_stdin(c.paths, o.null_input);
  check_remove_paths(given);
  const std::string dir = resolve_index_dir(o.index);
  IndexStore::open(dir, IndexAccess::kRead);  // no index there: say so rather than create one
  auto store = IndexStore::open(dir, IndexAccess::kWrite, c.wait);
  const RemoveSummary summary = remove_paths(*store, given);
  for (const auto& p : summary.not_found) print_warning(p + ": not in the index");
  const int64_t removed = summary.removed;
  std::cerr << "cnclip: removed " << removed << " file(s) from the index\n";
  return 0;
}

void register_index(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<IndexCommand>();
  IndexCommand& c = *cp;
  auto* sub = app.add_subcommand("index", "Add photos in folders (recursively) or single files to the index");
  sub->add_option(
      "path", c.paths,
      "Folders or image files; '-' reads paths from stdin; none = update every folder and file indexed before");
  // Walk options: stored with each given root; any of them given replaces all of a root's options.
  c.hidden_opt =
      sub->add_flag("--hidden,!--no-hidden", c.hidden, "Also index hidden files and folders (names starting with '.')");
  c.exclude_opt = sub->add_option("--exclude", c.excludes,
                                  "Skip names or paths matching this glob (repeatable: one glob per --exclude)")
                      ->expected(1)
                      ->allow_extra_args(false)  // `--exclude GLOB PATH`: PATH is a path
                      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  std::string default_ext;
  for (const auto& e : WalkOptions::default_extensions()) default_ext += (default_ext.empty() ? "" : ",") + e;
  c.ext_opt =
      sub->add_option("--ext", c.extensions,
                      "Comma-separated extensions to index (default: every format cnclip reads: " + default_ext + ")");
  c.no_video_opt = sub->add_flag(
      "--no-video", c.no_video, "Leave videos (" + [] {
        std::string v;
        for (const auto& e : video_extensions()) v += (v.empty() ? "" : ",") + e;
        return v;
      }() + ") out: stored with the folder like --ext");
  sub->add_option("--frame-interval", c.frame_interval,
                  "Videos: seconds between indexed frames (scene changes are indexed too)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_flag("--confirm-removal", c.confirm_removal,
                "Let new walk options remove all of a folder's indexed files, or more than half of 10 or more "
                "(refused otherwise)");
  sub->add_flag(
      "--reindex", c.reindex,
      "Encode again every file of the given paths (none: of every root); with another model, the whole index");
  sub->add_flag("--retry-failed", c.retry_failed, "Try again files that failed before, even if unchanged");
  whole_number(
      sub->add_option("--batch-size", c.batch_size, "Images per model call and per commit")->capture_default_str(), 1,
      1024);
  whole_number(sub->add_option("-j,--jobs", c.jobs, "Decoding threads (0 = number of cores)")->capture_default_str(), 0,
               kMaxThreads);
  sub->add_flag("--wait", c.wait, "Wait for another index run on the same index instead of failing");
  add_null_input_option(sub, o, "paths");
  c.vectors_opt = sub->add_option(
      "--vectors", c.vectors,
      "Snapshot type kept for searches: flat (exact, the default), flat-fp16, flat-sq8, ivf, auto (flat up "
      "to 500,000 vectors, then ivf) or a FAISS factory string (IVF4096,SQ8, HNSW32...); remembered. "
      "Without paths: only rebuild the snapshot (no model needed)");
  one_of(sub->add_option("--format", o.format, "Summary format: text (stderr) or json (stdout)"), {"text", "json"});
  sub->add_flag("-q,--quiet", o.quiet, "No progress output");
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_index_command(o, *cp); }; });
}

void register_import(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<ImportCommand>();
  ImportCommand& c = *cp;
  auto* sub =
      app.add_subcommand("import", "Add embeddings computed elsewhere (JSONL as embed-image prints, or .npy + paths)");
  sub->add_option("file", c.files,
                  "JSONL files of {\"path\": ..., \"embedding\": [...]} ('-' = stdin), or PREFIX.npy files with "
                  "PREFIX.paths (and PREFIX.json) beside them, as embed-image --out PREFIX writes");
  sub->add_option("--npy", c.npy, "float32 [N,D] matrix of embeddings");
  sub->add_option("--paths", c.paths_file,
                  "Text file with the N paths of --npy, one per line ('-' = stdin; -0: NUL-terminated)");
  sub->add_flag("-0,--null", o.null_input,
                "The paths of --paths end with NUL, not newline (find -print0; names may hold newlines)");
  sub->add_option("--map-prefix", c.maps,
                  "FROM=TO: store paths below FROM (where the rows were embedded) below TO (where the photos are "
                  "here) instead; repeatable, the first that matches wins")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_flag("--wait", c.wait, "Wait for a running index instead of failing");
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_import(o, *cp); }; });
}

void register_info(CLI::App& app, CommonOptions& o, Action& action) {
  auto* sub = app.add_subcommand("info", "Show where the index is, its model and what it holds");
  one_of(sub->add_option("--format", o.format, "text or json"), {"text", "json"});
  add_index_option(sub, o);
  sub->callback([&o, &action] { action = [&o] { return run_info(o); }; });
}

void register_remove(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<RemoveCommand>();
  RemoveCommand& c = *cp;
  auto* sub = app.add_subcommand("remove", "Drop files or whole folders from the index (the photos are not touched)");
  sub->add_option("path", c.paths, "Files or folders; '-' reads paths from stdin")->required();
  sub->add_flag("--wait", c.wait, "Wait for a running index instead of failing");
  add_null_input_option(sub, o, "paths");
  add_index_option(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_remove(o, *cp); }; });
}

}  // namespace

void register_index_commands(CLI::App& app, CommonOptions& o, Action& action) {
  register_index(app, o, action);
  register_import(app, o, action);
  register_info(app, o, action);
  register_remove(app, o, action);
}

}  // namespace cnclip::cli
