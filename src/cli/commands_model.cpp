// model-info, tokenize, embed-text, embed-image, preprocess
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cnclip/embed_files.h"
#include "cnclip/image.h"
#include "cnclip/npy.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "cnclip/shard.h"
#include "cnclip/tokenizer.h"
#include "options.h"
#include "progress.h"
#include "text_input.h"

namespace cnclip::cli {
namespace {

// One JSON line; a path that is not valid UTF-8 gets "path_bytes" (see set_string_field). Stops the
// command early when stdout has already failed.
void print_embedding(const char* key, const std::string& value, const float* e, int dim) {
  nlohmann::ordered_json j;
  set_string_field(j, key, value);
  j["embedding"] = std::vector<float>(e, e + dim);
  std::cout << dump_json(j) << '\n';
  check_stdout();
}

// A folder the command line names: exists and is a folder, else a usage error naming it.
void require_folder(const std::string& dir, const std::string& what) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    throw Exception(ErrorCode::kInvalidArgument, what + ": no folder " + dir + " (" + std::strerror(errno) + ")");
  }
  if (!S_ISDIR(st.st_mode)) throw Exception(ErrorCode::kInvalidArgument, what + ": " + dir + " is not a folder");
}

// Chinese-CLIP text towers are BERT models with 512 positions; bundles use 52 of them.
constexpr int kMaxTextPositions = 512;

// Reads stdin lines that are each one JSON string (so any text, newlines and NUL included, can be given).
std::vector<std::string> read_json_strings() {
  std::vector<std::string> out;
  std::string line;
  int n = 0;
  while (std::getline(std::cin, line)) {
    ++n;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Exception(ErrorCode::kInvalidArgument, "stdin line " + std::to_string(n) + ": not JSON (" + e.what() + ")");
    }
    if (j.is_string()) {
      out.push_back(j.get<std::string>());
    } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
      out.push_back(j["text"].get<std::string>());
    } else {
      throw Exception(ErrorCode::kInvalidArgument,
                      "stdin line " + std::to_string(n) + ": expected a JSON string (or an object with \"text\")");
    }
  }
  return out;
}

// embed-image --out's progress on a terminal: the bar of `index`.
class ShardProgress : public ShardObserver {
 public:
  explicit ShardProgress(bool bar) : bar_(bar) {}
  void on_start(int64_t to_encode, int64_t reused) override {
    if (reused > 0) {
      end_bar();
      std::cerr << "cnclip: " << reused << " embeddings saved by an interrupted run are used again; " << to_encode
                << " to embed\n";
    }
    bar_.restart();
  }
  void on_progress(int64_t done, int64_t total) override { bar_.update(done, total); }
  void on_file_error(const Error& e) override {
    end_bar();
    print_error(e.message);
  }
  void end_bar() { bar_.end(); }

 private:
  ProgressBar bar_;
};

// --out PREFIX: its folder must exist, and PREFIX must name files in it (not end in '/').
void check_output_prefix(const std::string& prefix) {
  if (prefix.back() == '/') {
    throw Exception(ErrorCode::kInvalidArgument, "--out " + prefix + ": give a prefix for the file names (e.g. " +
                                                     prefix + "shard-1), not a folder");
  }
  const auto slash = prefix.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : prefix.substr(0, slash);
  require_folder(dir, "--out " + prefix);
}

struct ModelInfoCommand {
  bool verify = false;
};

struct TokenizeCommand {
  std::vector<std::string> texts;
  bool json_input = false;
  int context_length = 0;
  CLI::Option* context_length_option = nullptr;
  std::string vocab;
};

struct EmbedTextCommand {
  std::vector<std::string> texts;
};

struct EmbedImageCommand {
  std::vector<std::string> files, excludes;
  std::string shard, root, out, extensions;
  double save_every = 30;
  bool hidden = false;
  int batch_size = 4, jobs = 0;
  CLI::Option *save_every_opt = nullptr, *shard_opt = nullptr;
};

struct PreprocessCommand {
  std::string image, npy;
};

int run_model_info(const CommonOptions& o, const ModelInfoCommand& c) {
  auto bundle = load_bundle_manifest(resolve_model_dir(o.model));
  auto j = nlohmann::json::parse(bundle.json);
  j["path"] = bundle.dir;
  // Where the checkpoint came from, as scripts/setup.sh recorded it (informational: a bad
  // record is a warning, the bundle itself is fine).
  std::optional<Error> origin_problem;
  try {
    if (auto origin = read_bundle_origin(bundle)) j["origin"] = nlohmann::json::parse(*origin);
  } catch (const Exception& e) {
    origin_problem = e.error();
  }
  std::cout << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  // Sizes always (cheap); contents only when asked (reads every byte: seconds for ViT-B-16).
  if (origin_problem) print_warning(origin_problem->message);
  const auto problems = verify_bundle_files(bundle, c.verify);
  for (const auto& p : problems) {
    if (c.verify) print_error(p.message);
    else print_warning(p.message);
  }
  if (c.verify && problems.empty()) {
    std::cerr << "cnclip: " << bundle.dir << ": all " << bundle.files.size()
              << " files match bundle.json (size and sha256)" << std::endl;
  }
  return c.verify && !problems.empty() ? 1 : 0;
}

int run_tokenize(const CommonOptions& o, const TokenizeCommand& c) {
  std::unique_ptr<Tokenizer> tokenizer;
  int length = 52, max_length = kMaxTextPositions;
  std::string limit = "the text tower's positions";
  if (!c.vocab.empty()) {
    tokenizer = WordPieceTokenizer::from_vocab_file(c.vocab);
  } else {
    auto bundle = load_bundle_manifest(resolve_model_dir(o.model));
    tokenizer = WordPieceTokenizer::from_vocab_file(bundle.path_of("vocab.txt"));
    length = max_length = bundle.context_length;
    limit = "the context length of the model " + bundle.dir;
  }
  if (c.context_length_option->count() > 0) {
    // [CLS] and [SEP] take two ids; the tower has no position for more than its maximum.
    if (c.context_length < 2 || c.context_length > max_length) {
      throw Exception(ErrorCode::kInvalidArgument, "--context-length " + std::to_string(c.context_length) +
                                                       ": must be from 2 to " + std::to_string(max_length) + " (" +
                                                       limit + ")");
    }
    length = c.context_length;
  }
  std::vector<std::string> inputs = c.json_input ? read_json_strings() : expand_stdin(c.texts, o.null_input);
  if (inputs.empty()) throw Exception(ErrorCode::kInvalidArgument, "tokenize: no text given");
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& t = inputs[i];
    check_text(*tokenizer, t, length, "text " + std::to_string(i + 1), false);
    nlohmann::ordered_json j;
    j["text"] = t;
    j["ids"] = tokenizer->encode(t, length);
    std::cout << dump_json(j) << '\n';
    check_stdout();
  }
  return 0;
}

int run_embed_text(const CommonOptions& o, const EmbedTextCommand& c) {
  const auto inputs = expand_stdin(c.texts, o.null_input);
  auto model = open_model(o, inputs.size() > 256);
  const int dim = model->dim();
  for (size_t i = 0; i < inputs.size(); ++i) {
    check_text(model->tokenizer(), inputs[i], model->manifest().context_length, "text " + std::to_string(i + 1), false);
  }
  constexpr size_t kBatch = 64;
  int failed = 0;
  for (size_t i = 0; i < inputs.size(); i += kBatch) {
    std::vector<std::string> chunk(inputs.begin() + i, inputs.begin() + std::min(inputs.size(), i + kBatch));
    RowErrors row_errors;
    const auto e = model->encode_texts(chunk, &row_errors);
    for (size_t k = 0; k < chunk.size(); ++k) {
      if (row_errors[k]) {
        // The text goes through JSON quoting, so any text names itself on one line.
        print_error("text " + std::to_string(i + k + 1) + " " + dump_json(nlohmann::ordered_json(chunk[k])) + ": " +
                    row_errors[k]->message);
        ++failed;
      } else {
        print_embedding("text", chunk[k], &e[k * dim], dim);
      }
    }
  }
  return failed ? 1 : 0;
}

// Without --out: one JSON line per image on stdout, in input order; problems of the selection and
// images that fail are reported on stderr (exit 1).
int print_image_embeddings(const CommonOptions& o, const ShardSelection& selection, EmbedFilesOptions options) {
  int failed = 0;
  for (const auto& e : selection.problems) {
    print_error(e.message);
    ++failed;
  }
  if (selection.files.empty()) return failed ? 1 : 0;
  std::vector<std::string> inputs;
  for (const auto& f : selection.files) inputs.push_back(f.path);
  auto model = open_model(o, inputs.size() > 16);
  const int dim = model->dim();
  options.decode = decode_options(o, model->manifest().image.size);
  embed_image_files(*model, inputs, options, [&](size_t i, const float* embedding, const Error* error) {
    if (error) {
      print_error(error->message);
      ++failed;
    } else {
      print_embedding("path", inputs[i], embedding, dim);
    }
  });
  return failed ? 1 : 0;
}

// With --out PREFIX: the selection's embeddings written for `cnclip import` (resumable).
int write_shard(const CommonOptions& o, const EmbedImageCommand& c, const ShardSelection& selection,
                const ShardSpec& shard, EmbedFilesOptions options) {
  for (const auto& e : selection.problems) print_warning(e.message);
  auto model = open_model(o, /*many_calls=*/true);
  options.decode = decode_options(o, model->manifest().image.size);
  ShardRunOptions run;
  run.embed = options;
  run.save_every_seconds = c.save_every;
  ShardProgress progress(stderr_is_terminal() && !o.quiet);
  const ShardRunSummary s = run_shard(*model, selection, shard, c.out, run, progress);
  progress.end_bar();
  const ShardOutputPaths out(c.out);
  if (s.interrupted) {
    throw Exception(ErrorCode::kInterrupted, "interrupted: the finished embeddings are saved in " + out.partial +
                                                 "; run the same command again to continue");
  }
  if (!o.quiet) {
    if (s.already_complete) {
      std::cerr << "cnclip: " << terminal_safe(out.npy) << ": already complete (" << s.embedded << " embeddings, "
                << s.failed << " failed); nothing to do\n";
    } else {
      std::cerr << "cnclip: wrote " << s.embedded << " embeddings to " << terminal_safe(out.npy) << " (" << s.reused
                << " saved by an earlier run), " << s.failed << " failed"
                << (s.failed ? " (listed in " + terminal_safe(out.json) + ")" : std::string()) << '\n';
    }
  }
  return 0;
}

int run_embed_image(const CommonOptions& o, const EmbedImageCommand& c) {
  // Everything the command line says is checked before the model is loaded.
  const bool sharded = c.shard_opt->count() > 0;
  const ShardSpec shard = sharded ? parse_shard_spec(c.shard) : ShardSpec{};
  if (c.save_every_opt->count() > 0 && c.out.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "--save-every goes with --out (only written shards are resumed)");
  }
  if (!c.out.empty()) check_output_prefix(c.out);
  if (!c.root.empty()) require_folder(c.root, "--root");
  WalkOptions walk;
  walk.include_hidden = c.hidden;
  walk.excludes = c.excludes;
  if (!c.extensions.empty()) walk.extensions = parse_extension_list(c.extensions);
  const auto given = expand_stdin(c.files, o.null_input);
  if (given.empty()) throw Exception(ErrorCode::kInvalidArgument, "embed-image: no paths on stdin");
  // Folders are walked for a collection (--shard, --out); a folder among images to print is
  // a mistake, as in the other commands that take images (options.h: image_files).
  if (!sharded && c.out.empty()) {
    for (const auto& path : given) {
      const std::string folder = folder_given_as_image(path);
      if (!folder.empty()) {
        throw Exception(ErrorCode::kInvalidArgument, "image: " + folder + " (see 'cnclip embed-image --help')");
      }
    }
  }
  if (!c.out.empty()) install_interrupt_handlers();
  const ShardSelection selection = select_shard(given, shard, c.root, walk);
  if (sharded && !o.quiet) {
    std::cerr << "cnclip: shard " << shard.to_string() << ": " << selection.files.size() << " of " << selection.total
              << " files\n";
  }
  EmbedFilesOptions options;
  options.encode.batch_size = c.batch_size;
  options.encode.decode_threads = c.jobs;
  if (c.out.empty()) return print_image_embeddings(o, selection, options);
  return write_shard(o, c, selection, shard, options);
}

int run_preprocess(const CommonOptions& o, const PreprocessCommand& c) {
  Normalization norm;  // Chinese-CLIP's 224 / mean / std unless a bundle says otherwise
  if (!o.model.empty() || std::getenv("CNCLIP_MODEL")) norm = load_bundle_manifest(resolve_model_dir(o.model)).image;
  std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
  preprocess_image_file(c.image, norm, decode_options(o, norm.size), pixels.data()).check();
  if (c.npy == "-") {
    if (stdout_is_terminal()) {
      throw Exception(ErrorCode::kInvalidArgument, "--npy -: not writing binary data to a terminal");
    }
    std::cout << npy_bytes(pixels.data(), {3, norm.size, norm.size});
    flush_stdout();
  } else {
    write_npy(c.npy, pixels.data(), {3, norm.size, norm.size});
  }
  return 0;
}

void register_model_info(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<ModelInfoCommand>();
  ModelInfoCommand& c = *cp;
  auto* sub = app.add_subcommand("model-info", "Print the model bundle's manifest as JSON");
  sub->add_flag("--verify", c.verify,
                "Also check every bundle file's sha256 against the manifest (one error line per bad file, exit 1)");
  add_model_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_model_info(o, *cp); }; });
}

void register_tokenize(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<TokenizeCommand>();
  TokenizeCommand& c = *cp;
  auto* sub = app.add_subcommand("tokenize", "Print Chinese-CLIP token ids of each text as JSON lines");
  sub->add_option("text", c.texts, "Texts; '-' reads one text per line from stdin");
  sub->add_flag("--json-input", c.json_input, "Read one JSON string per stdin line (any text, newlines included)");
  add_null_input_option(sub, o, "texts");
  c.context_length_option =
      sub->add_option("--context-length", c.context_length,
                      "Number of ids per text: 2 up to the bundle's context length (default: that, 52); up to " +
                          std::to_string(kMaxTextPositions) + " with --vocab");
  sub->add_option("--vocab", c.vocab, "vocab.txt to use instead of the model bundle's");
  add_model_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_tokenize(o, *cp); }; });
}

void register_embed_text(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<EmbedTextCommand>();
  EmbedTextCommand& c = *cp;
  auto* sub = app.add_subcommand("embed-text", "Print the embedding of each text as JSON lines");
  sub->add_option("text", c.texts, "Texts; '-' reads one text per line from stdin")->required();
  add_null_input_option(sub, o, "texts");
  add_model_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_embed_text(o, *cp); }; });
}

void register_embed_image(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<EmbedImageCommand>();
  EmbedImageCommand& c = *cp;
  auto* sub = app.add_subcommand("embed-image",
                                 "Print the embedding of each image as JSON lines, or write a shard of a collection");
  sub->add_option("image", c.files,
                  "Image files; '-' reads one path per line from stdin; with --shard or --out also folders (walked "
                  "as index walks them)")
      ->required();
  c.shard_opt =
      sub->add_option("--shard", c.shard,
                      "K/N: only the files of shard K of N (1 <= K <= N), split by a hash of each path relative to its "
                      "root, the same on every machine");
  sub->add_option("--root", c.root,
                  "Split by paths relative to this folder (every input must be below it); default: a walked file's "
                  "path relative to the folder given, a listed file's path as given");
  sub->add_option("--out", c.out,
                  "Write PREFIX.npy, PREFIX.paths and PREFIX.json (for cnclip import) instead of printing JSON lines; "
                  "an interrupted run is resumed by running it again");
  c.save_every_opt = real_number(sub->add_option("--save-every", c.save_every,
                                                 "With --out: save finished work for a resumed run at least this "
                                                 "often, in seconds (0: after every batch)")
                                     ->capture_default_str(),
                                 0, 86400);
  sub->add_flag("--hidden", c.hidden, "Also take hidden files and folders (names starting with '.') of folders");
  sub->add_option("--exclude", c.excludes, "Skip names or paths matching this glob in folders (repeatable)")
      ->expected(1)
      ->allow_extra_args(false)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--ext", c.extensions, "Comma-separated extensions to take from folders (default: as index)");
  whole_number(sub->add_option("--batch-size", c.batch_size, "Images per model call")->capture_default_str(), 1, 1024);
  whole_number(sub->add_option("-j,--jobs", c.jobs, "Decoding threads (0 = number of cores)")->capture_default_str(), 0,
               kMaxThreads);
  sub->add_flag("-q,--quiet", o.quiet, "No progress output (--out)");
  add_null_input_option(sub, o, "paths");
  add_model_options(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_embed_image(o, *cp); }; });
}

void register_preprocess(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<PreprocessCommand>();
  PreprocessCommand& c = *cp;
  auto* sub = app.add_subcommand("preprocess", "Write the model input tensor of an image as .npy (debugging)");
  image_files(sub->add_option("image", c.image, "Image file"))->required();
  sub->add_option("--npy", c.npy,
                  "Output .npy file (float32 [3,R,R]); '-' writes it to stdout. A regular file is replaced "
                  "atomically, a symlink's target likewise, a FIFO or device is written directly")
      ->required();
  add_model_options(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_preprocess(o, *cp); }; });
}

}  // namespace

void register_model_commands(CLI::App& app, CommonOptions& o, Action& action) {
  register_model_info(app, o, action);
  register_tokenize(app, o, action);
  register_embed_text(app, o, action);
  register_embed_image(app, o, action);
  register_preprocess(app, o, action);
}

}  // namespace cnclip::cli
