// index, info, remove
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>


#include "cnclip/import.h"
#include "cnclip/info.h"
#include "cnclip/file_walk.h"
#include "cnclip/remove.h"
#include "cnclip/indexer.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "options.h"
#include "progress.h"

namespace cnclip::cli {
namespace {

// Progress bar and per-file errors on stderr.
class TerminalObserver : public IndexObserver {
 public:
  TerminalObserver(bool bar, bool quiet) : bar_(bar), quiet_(quiet), start_(std::chrono::steady_clock::now()) {}
  ~TerminalObserver() override { end_bar(); }

  void on_plan(int64_t to_encode, int64_t unchanged, int64_t gone) override {
    if (!quiet_ && (to_encode > 0 || gone > 0)) {
      std::cerr << "cnclip: " << to_encode << " to index, " << unchanged << " unchanged, " << gone << " gone\n";
    }
    start_ = std::chrono::steady_clock::now();
  }
  void on_progress(int64_t done, int64_t total) override {
    if (!bar_ || total == 0) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = secs > 0 ? done / secs : 0;
    // Asked on every update, so a resized window is followed; erase-to-end-of-line clears what a
    // wider line left behind.
    std::cerr << '\r' << progress_line(done, total, rate, terminal_columns(user_stderr_fd())) << "\x1b[K" << std::flush;
    bar_shown_ = true;
  }
  void on_file_error(const Error& e) override {
    end_bar();
    std::cerr << "cnclip: skipped: " << terminal_safe(e.message) << '\n';
  }
  void on_notice(const std::string& message) override {
    end_bar();
    print_warning(message);
  }
  // Moves past the progress bar so that the next message starts on a line of its own.
  void end_bar() {
    if (bar_shown_) std::cerr << '\n';
    bar_shown_ = false;
  }

 private:
  bool bar_, quiet_, bar_shown_ = false;
  std::chrono::steady_clock::time_point start_;
};

struct IndexCommand {
  std::vector<std::string> paths;
  std::vector<std::string> excludes;
  std::string extensions;
  bool hidden = false, reindex = false, wait = false, retry_failed = false;
  CLI::Option *hidden_opt = nullptr, *exclude_opt = nullptr, *ext_opt = nullptr;
  int batch_size = 4, jobs = 0;
  std::string vectors;  // --vectors TYPE ("" = keep the index's setting)
};


}  // namespace

void register_index_commands(CLI::App& app, CommonOptions& o, Action& action) {
  {
    auto cp = std::make_shared<IndexCommand>();
    IndexCommand& c = *cp;
    auto* sub = app.add_subcommand("index", "Add photos in folders (recursively) or single files to the index");
    sub->add_option("path", c.paths,
                    "Folders or image files; '-' reads paths from stdin; none = update every folder and file indexed before");
    // Walk options: stored with each given root; any of them given replaces all of a root's options.
    c.hidden_opt = sub->add_flag("--hidden,!--no-hidden", c.hidden,
                                 "Also index hidden files and folders (names starting with '.')");
    c.exclude_opt = sub->add_option("--exclude", c.excludes, "Skip names or paths matching this glob (repeatable: one glob per --exclude)")
                        ->expected(1)
                        ->allow_extra_args(false)  // `--exclude GLOB PATH`: PATH is a path
                        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    std::string default_ext;
    for (const auto& e : WalkOptions::default_extensions()) default_ext += (default_ext.empty() ? "" : ",") + e;
    c.ext_opt = sub->add_option("--ext", c.extensions,
                                "Comma-separated extensions to index (default: every format cnclip reads: " + default_ext + ")");
    sub->add_flag("--reindex", c.reindex, "Encode again every file of the given paths (none: of every root); with another model, the whole index");
    sub->add_flag("--retry-failed", c.retry_failed, "Try again files that failed before, even if unchanged");
    whole_number(sub->add_option("--batch-size", c.batch_size, "Images per model call and per commit")->capture_default_str(), 1, 1024);
    whole_number(sub->add_option("-j,--jobs", c.jobs, "Decoding threads (0 = number of cores)")->capture_default_str(), 0, kMaxThreads);
    sub->add_flag("--wait", c.wait, "Wait for another index run on the same index instead of failing");
    add_null_input_option(sub, o, "paths");
    sub->add_option("--vectors", c.vectors,
                    "Snapshot type kept for searches: flat (exact, the default), flat-fp16, flat-sq8, ivf, auto (flat up "
                    "to 500,000 vectors, then ivf) or a FAISS factory string (IVF4096,SQ8, HNSW32...); remembered. "
                    "Without paths: only rebuild the snapshot (no model needed)");
    one_of(sub->add_option("--format", o.format, "Summary format: text (stderr) or json (stdout)"), {"text", "json"});
    sub->add_flag("-q,--quiet", o.quiet, "No progress output");
    add_model_options(sub, o);
    add_index_option(sub, o);
    add_mixed_precision_option(sub, o);
    add_decode_options(sub, o);
    sub->callback([&o, &action, cp] {
      action = [&o, cp] {
        IndexCommand& c = *cp;
        install_interrupt_handlers();  // before the index exists, so Ctrl-C never finds it half-set-up
        IndexOptions opts;
        opts.paths = expand_stdin(c.paths, o.null_input);
        if (!c.paths.empty() && opts.paths.empty()) throw Exception(ErrorCode::kInvalidArgument, "no paths on stdin");
        const std::string dir = resolve_index_dir(o.index);
        std::error_code no_catalog;
        if (opts.paths.empty() && !std::filesystem::exists(dir + "/catalog.sqlite3", no_catalog) && !no_catalog) {
          // Before anything is created: a mistyped --index must not leave an empty index behind.
          throw Exception(ErrorCode::kInvalidArgument, "nothing to index: " + dir +
                                                           " holds no index yet; give folders or files (cnclip index PATH...)");
        }
        if (opts.paths.empty() && !c.vectors.empty()) {
          // Only the snapshot: from the catalog's vectors, whatever filled it (index or import).
          auto store = IndexStore::open(dir, IndexAccess::kWrite, c.wait);
          store->set_vector_spec(VectorSpec::parse(c.vectors, store->embedding_dim()));
          const auto start = std::chrono::steady_clock::now();
          store->write_snapshot();
          const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          const std::string type = store->wanted_vector_type();
          if (o.format == "json") {
            nlohmann::ordered_json j;
            j["vectors"] = c.vectors;
            j["type"] = type;
            j["count"] = store->catalog().count();
            j["seconds"] = secs;
            j["tuning"] = store->snapshot_report();
            std::cout << j.dump() << std::endl;
          } else if (!o.quiet) {
            std::ostringstream line;
            line.precision(1);
            line << std::fixed << "cnclip: vector snapshot rebuilt as " << type << " (" << store->catalog().count()
                 << " vectors, " << secs << " s)";
            if (!store->snapshot_report().empty()) line << "; " << store->snapshot_report();
            std::cerr << line.str() << '\n';
          }
          return 0;
        }
        if (c.hidden_opt->count() + c.exclude_opt->count() + c.ext_opt->count() > 0) {
          opts.walk = WalkOptions{};
          opts.walk->include_hidden = c.hidden;
          opts.walk->excludes = c.excludes;
        }
        if (opts.walk && !c.extensions.empty()) opts.walk->extensions = parse_extension_list(c.extensions);
        opts.reindex = c.reindex;
        opts.retry_failed = c.retry_failed;
        opts.allow_mixed_precision = o.mixed_precision;
        opts.encode.batch_size = c.batch_size;
        opts.encode.decode_threads = c.jobs;
        auto model = open_model(o, /*many_calls=*/true);
        opts.decode = decode_options(o, model->manifest().image.size);
        auto store = IndexStore::open(dir, IndexAccess::kWrite, c.wait);
        if (opts.paths.empty() && store->catalog().roots().empty()) {
          throw Exception(ErrorCode::kInvalidArgument, "nothing to index: give folders or files (cnclip index PATH...)");
        }
        // Built by the run's last step (IndexStore::ensure_snapshot).
        if (!c.vectors.empty()) store->set_vector_spec(VectorSpec::parse(c.vectors, model->dim()));
        TerminalObserver observer(stderr_is_terminal() && !o.quiet, o.quiet);
        const IndexSummary s = run_index(*store, *model, opts, observer);
        observer.end_bar();
        if (o.format == "json") {
          nlohmann::ordered_json j;
          set_string_field(j, "index", dir);  // index_bytes when the folder's name is not UTF-8
          j.update(nlohmann::ordered_json{{"added", s.added},     {"updated", s.updated},
                           {"removed", s.removed},  {"moved", s.moved},     {"unchanged", s.unchanged},
                           {"failed", s.failed},    {"failed_before", s.failed_before},
                           {"excluded", s.excluded}, {"missing", s.missing},
                           {"unreadable_folders", s.unreadable_folders}, {"links", s.links},
                           {"paired", s.paired}, {"interrupted", s.interrupted},
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
          return 130;
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
      };
    });
  }
  {
    struct ImportArgs {
      std::string jsonl, npy, paths_file;
      bool wait = false;
    };
    auto a = std::make_shared<ImportArgs>();
    auto& [jsonl, npy, paths_file, wait] = *a;
    auto* sub = app.add_subcommand("import", "Add embeddings computed elsewhere (JSONL as embed-image prints, or .npy + paths)");
    sub->add_option("file", jsonl, "JSONL file of {\"path\": ..., \"embedding\": [...]} ('-' = stdin)");
    sub->add_option("--npy", npy, "float32 [N,D] matrix of embeddings");
    sub->add_option("--paths", paths_file, "Text file with the N paths of --npy, one per line");
    sub->add_flag("--wait", wait, "Wait for a running index instead of failing");
    add_model_options(sub, o);
    add_index_option(sub, o);
    add_mixed_precision_option(sub, o);
    sub->callback([&o, &action, a] {
      action = [&o, a] {
        auto& [jsonl, npy, paths_file, wait] = *a;
        if (jsonl.empty() == npy.empty()) {
          throw Exception(ErrorCode::kInvalidArgument, "import: give a JSONL file, or --npy with --paths");
        }
        if (!npy.empty() && paths_file.empty()) throw Exception(ErrorCode::kInvalidArgument, "import: --npy needs --paths");
        if (npy.empty() && !paths_file.empty()) throw Exception(ErrorCode::kInvalidArgument, "import: --paths goes with --npy");
        const BundleManifest bundle = load_bundle_manifest(resolve_model_dir(o.model));
        // Everything is read and checked before the index is opened: a bad line changes nothing.
        const ImportRows rows = npy.empty() ? read_embeddings_jsonl_file(jsonl, bundle.embedding_dim)
                                            : read_embeddings_npy(npy, paths_file, bundle.embedding_dim);
        auto store = IndexStore::open(resolve_index_dir(o.index), IndexAccess::kWrite, wait);
        const ImportSummary s = import_embeddings(*store, bundle, rows.paths, rows.embeddings, o.mixed_precision);
        std::cerr << "cnclip: imported " << s.added << " new and " << s.updated << " updated embeddings\n";
        return 0;
      };
    });
  }
  {
    auto* sub = app.add_subcommand("info", "Show where the index is, its model and what it holds");
    one_of(sub->add_option("--format", o.format, "text or json"), {"text", "json"});
    add_index_option(sub, o);
    sub->callback([&] {
      action = [&] {
        const IndexInfo info = read_index_info(resolve_index_dir(o.index));
        if (o.format == "json") {
          std::cout << dump_json(index_info_json(info)) << '\n';
          return 0;
        }
        std::cout << "index:    " << terminal_safe(info.index) << '\n'
                  << "model:    " << info.model_architecture << ' ' << info.model_precision << " (fingerprint "
                  << info.model_fingerprint.substr(0, 16) << ", dim " << info.embedding_dim << ")\n"
                  << "files:    " << info.files << '\n'
                  << "vectors:  " << info.vectors << '\n'
                  << "size:     " << info.disk_bytes / 1024 << " KiB\n"
                  << "updated:  " << info.updated_at << '\n';
        for (const auto& r : info.folders) std::cout << "folder:   " << terminal_safe(r) << '\n';
        return 0;
      };
    });
  }
  {
    struct RemoveCommand {
      std::vector<std::string> paths;
      bool wait = false;
    };
    auto a = std::make_shared<RemoveCommand>();
    auto* sub = app.add_subcommand("remove", "Drop files or whole folders from the index (the photos are not touched)");
    sub->add_option("path", a->paths, "Files or folders; '-' reads paths from stdin")->required();
    sub->add_flag("--wait", a->wait, "Wait for a running index instead of failing");
    add_null_input_option(sub, o, "paths");
    add_index_option(sub, o);
    sub->callback([&o, &action, a] {
      action = [&o, a] {
        const std::vector<std::string> given = expand_stdin(a->paths, o.null_input);
        check_remove_paths(given);
        const std::string dir = resolve_index_dir(o.index);
        IndexStore::open(dir, IndexAccess::kRead);  // no index there: say so rather than create one
        auto store = IndexStore::open(dir, IndexAccess::kWrite, a->wait);
        const RemoveSummary summary = remove_paths(*store, given);
        for (const auto& p : summary.not_found) print_warning(p + ": not in the index");
        const int64_t removed = summary.removed;
        std::cerr << "cnclip: removed " << removed << " file(s) from the index\n";
        return 0;
      };
    });
  }
}

}  // namespace cnclip::cli
