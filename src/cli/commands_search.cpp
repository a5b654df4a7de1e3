// search-text, search-image
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <exception>
#include <fstream>
#include <future>
#include <optional>
#include <iostream>
#include <limits>

#include "cnclip/file_walk.h"
#include "cnclip/output.h"
#include "cnclip/photo_meta.h"
#include "cnclip/search.h"
#include "options.h"
#include "stdin_items.h"
#include "text_input.h"

namespace cnclip::cli {
namespace {

// An image given as bytes (stdin, a pipe) larger than this is refused before decoding.
constexpr size_t kMaxStreamedImageBytes = size_t{1} << 30;

struct SearchCommand {
  std::vector<std::string> queries;
  int top_k = 10;
  double threshold = -2;
  std::string under;
  bool exclude_self = false;
  bool null_separated = false;
  std::string paths_from;
  std::string after, before;  // --after/--before as given
  std::string sort = "score";
  long long offset = 0;
};

void add_search_options(CLI::App* sub, SearchCommand& c, CommonOptions& o) {
  whole_number(sub->add_option("-k,--top-k", c.top_k, "Results per query (more than the index holds: all of them)")
                   ->capture_default_str(),
               1, INT_MAX);
  // Any finite number: 2 keeps nothing, -1 everything.
  real_number(sub->add_option("--threshold", c.threshold, "Only results with cosine similarity >= this"),
              -std::numeric_limits<double>::max(), std::numeric_limits<double>::max());
  sub->add_option("--under", c.under, "Only files below this folder");
  sub->add_option("--after", c.after,
                  "Only photos taken at or after this date or time (2024-05-01, 2024-05-01T08:30, +08:00...; "
                  "without an offset: local time)");
  sub->add_option("--before", c.before, "Only photos taken before this date or time (as --after)");
  one_of(sub->add_option("--sort", c.sort, "score (best first) or date (newest first; needs --threshold)")
             ->capture_default_str(),
         {"score", "date"});
  whole_number(sub->add_option("--offset", c.offset, "Skip this many results first (pages: --offset 0, k, 2k...)")
                   ->capture_default_str(),
               0, INT_MAX);
  one_of(sub->add_option("--format", o.format, "table, json, jsonl or paths (default: table on a terminal, else jsonl)"),
         {"table", "json", "jsonl", "paths", "auto"});
  sub->add_flag("-0,--null", c.null_separated,
                "NUL instead of newline: after each path of --format paths, and between the items read from stdin");
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
}

// Opens the index for reading and checks that it was built with the same model.
std::unique_ptr<IndexStore> open_for_search(const CommonOptions& o, const BundleManifest& bundle) {
  const std::string dir = resolve_index_dir(o.index);
  auto store = IndexStore::open(dir, IndexAccess::kRead);
  if (store->catalog().count() == 0) {
    throw Exception(ErrorCode::kNotFound, dir + ": the index is empty (run 'cnclip index PATH' first)");
  }
  store->require_model(bundle, o.mixed_precision);
  return store;
}

SearchOptions search_options(const SearchCommand& c) {
  SearchOptions s;
  s.top_k = c.top_k;
  if (c.threshold > -2) s.threshold = static_cast<float>(c.threshold);
  if (!c.under.empty()) s.under = canonical_path(c.under).value();
  if (!c.after.empty()) s.after = parse_time_bound(c.after, "--after").value();
  if (!c.before.empty()) s.before = parse_time_bound(c.before, "--before").value();
  s.sort = parse_sort_order(c.sort, "--sort");
  if (s.sort == SortOrder::kDate && !s.threshold) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "--sort date orders the results above --threshold by capture time: give --threshold too "
                    "(--threshold -1 keeps every photo)");
  }
  s.offset = c.offset;
  return s;
}

// The index opened and its vectors mapped on another thread, while the model loads: for a cold
// query the two take about as long as each other.
struct OpenedIndex {
  std::unique_ptr<IndexStore> store;
  std::unique_ptr<Searcher> searcher;
};
OpenedIndex open_index(const CommonOptions& o, const BundleManifest& bundle) {
  OpenedIndex opened;
  opened.store = open_for_search(o, bundle);
  opened.searcher = std::make_unique<Searcher>(*opened.store);
  return opened;
}

ResultPrinter make_printer(const CommonOptions& o, const SearchCommand& c) {
  PrintOptions p;
  p.null_separated = c.null_separated;
  p.terminal = stdout_is_terminal();
  return ResultPrinter(std::cout, parse_output_format(o.format, p.terminal), p);
}

// When a later query fails (a blank stdin line, Ctrl-C), what was printed stays well-formed: the
// json array is closed.
struct FinishOnError {
  ResultPrinter& printer;
  const size_t& answered;  // nothing answered: nothing to close
  ~FinishOnError() {
    if (std::uncaught_exceptions() == 0 || answered == 0) return;
    try {
      printer.finish();
    } catch (const std::exception&) {  // stdout itself failed: nothing more to say there
    }
  }
};

int search_text(const CommonOptions& o, const SearchCommand& c) {
  const SearchOptions opts = search_options(c);  // bad values stop before anything is opened
  if (std::count(c.queries.begin(), c.queries.end(), "-") > 1) {
    throw Exception(ErrorCode::kInvalidArgument, "'-' (queries from stdin) can be given only once");
  }
  auto model = open_model(o);
  auto pending = std::async(std::launch::async, [&o, &model] { return open_index(o, model->manifest()); });
  const int context = model->manifest().context_length;
  const Tokenizer& tokenizer = model->tokenizer();
  // Every query on the command line is checked before anything is searched or printed.
  for (size_t i = 0; i < c.queries.size(); ++i) {
    if (c.queries[i] != "-") check_text(tokenizer, c.queries[i], context, "query " + std::to_string(i + 1), true);
  }
  std::optional<OpenedIndex> opened;
  auto index = [&]() -> OpenedIndex& {
    if (!opened) opened = pending.get();
    return *opened;
  };
  ResultPrinter printer = make_printer(o, c);
  auto answer = [&](const std::vector<std::string>& queries) {
    if (queries.empty()) return;
    const auto embeddings = model->encode_texts(queries);
    for (const auto& r : index().searcher->search(queries, embeddings, opts)) printer.print(r);
  };
  size_t answered = 0;
  std::vector<std::string> batch;  // consecutive command-line queries, encoded together
  FinishOnError finish_on_error{printer, answered};
  for (const auto& q : c.queries) {
    if (q != "-") {
      batch.push_back(q);
      continue;
    }
    answer(batch);
    answered += batch.size();
    batch.clear();
    // One query per line, answered as it arrives (flushed before the next line is read).
    model->load_text_tower();
    index();
    ItemReader reader(std::cin, c.null_separated);
    std::string line;
    while (reader.next(line)) {
      check_text(tokenizer, line, context, "stdin line " + std::to_string(reader.position()), true);
      answer({line});
      ++answered;
    }
  }
  answer(batch);
  answered += batch.size();
  if (answered == 0) throw Exception(ErrorCode::kInvalidArgument, "no query given (stdin was empty)");
  printer.finish();
  return 0;
}

// One example image: its embedding, or an error already reported.
struct ImageQuery {
  std::vector<float> embedding;
  std::string self;  // canonical path to leave out with --exclude-self ("" for bytes from a stream)
};

int search_image(const CommonOptions& o, const SearchCommand& c) {
  const auto stdin_images = std::count(c.queries.begin(), c.queries.end(), "-");
  if (stdin_images > 1) throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) can be given only once");
  if (stdin_images && c.paths_from == "-") {
    throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) and '--paths-from -' both want stdin");
  }
  if (stdin_images && ::isatty(STDIN_FILENO) == 1) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "'-' reads the bytes of an image from stdin, which is a terminal (try: cnclip search-image - < photo.jpg)");
  }
  if (c.queries.empty() && c.paths_from.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "give example images, '-' for one on stdin, or --paths-from FILE");
  }
  const SearchOptions opts = search_options(c);
  auto model = open_model(o);
  // The index first: a query that is already indexed needs no image tower at all.
  OpenedIndex opened = open_index(o, model->manifest());
  IndexStore* store = opened.store.get();
  const int dim = model->dim();
  const Normalization& norm = model->manifest().image;
  const auto decode = decode_options(o, norm.size);
  ResultPrinter printer = make_printer(o, c);

  auto encode_bytes = [&](const std::vector<uint8_t>& bytes, const std::string& name) -> Result<std::vector<float>> {
    std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
    auto ok = preprocess_image(bytes, name, norm, decode, pixels.data());
    if (!ok) return ok.error();
    return model->encode_images(pixels.data(), 1);
  };
  auto embed = [&](const std::string& arg) -> Result<ImageQuery> {
    if (arg == "-") {
      auto bytes = read_all_bytes(std::cin, "standard input", kMaxStreamedImageBytes);
      if (bytes.empty()) return Error{ErrorCode::kCorrupt, "standard input: no image bytes (empty)"};
      auto e = encode_bytes(bytes, "standard input");
      if (!e) return e.error();
      return ImageQuery{std::move(e).value(), ""};
    }
    struct stat st {};
    if (::stat(arg.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      // /dev/stdin, a FIFO, <(command): the bytes are read as they come; nothing to exclude.
      std::ifstream in(arg, std::ios::binary);
      if (!in) return errno_error(arg, errno, "cannot open");
      auto e = encode_bytes(read_all_bytes(in, arg, kMaxStreamedImageBytes), arg);
      if (!e) return e.error();
      return ImageQuery{std::move(e).value(), ""};
    }
    auto canonical = canonical_path(arg);
    if (!canonical) return canonical.error();
    auto found = stat_file(canonical.value());
    if (!found) return found.error();
    ImageQuery q;
    q.self = canonical.value();
    // An indexed, unchanged file already has its embedding: no need to load the image tower.
    if (auto rec = store->catalog().find(canonical.value());
        rec && rec->size == found.value().size && rec->mtime_ns == found.value().mtime_ns) {
      q.embedding = store->catalog().embedding(rec->id);
    }
    if (q.embedding.size() != static_cast<size_t>(dim)) {
      std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
      auto ok = preprocess_image_file(arg, norm, decode, pixels.data());
      if (!ok) return ok.error();
      q.embedding = model->encode_images(pixels.data(), 1);
    }
    return q;
  };

  int failed = 0;
  size_t answered = 0;
  FinishOnError finish_on_error{printer, answered};
  auto answer = [&](const std::string& arg) {
    auto q = embed(arg);
    if (!q) {
      print_error(q.error().message);
      ++failed;
      printer.skip(arg);
      return;
    }
    const std::vector<std::string> exclude{c.exclude_self ? q.value().self : ""};
    printer.print(opened.searcher->search({arg}, q.value().embedding, opts, exclude).at(0));
    ++answered;
  };
  for (const auto& arg : c.queries) answer(arg);
  if (!c.paths_from.empty()) {
    auto reader = ItemReader::open(c.paths_from, c.null_separated);
    std::string path;
    while (reader->next(path)) answer(path);
  }
  printer.finish();
  return failed ? 1 : 0;
}

}  // namespace

void register_search_commands(CLI::App& app, CommonOptions& o, Action& action) {
  {
    auto cp = std::make_shared<SearchCommand>();
    SearchCommand& c = *cp;
    auto* sub = app.add_subcommand("search-text", "Find indexed photos matching Chinese (or English) text");
    sub->add_option("query", c.queries, "Texts; '-' reads one query per line from stdin, answering each as it comes")
        ->required();
    add_search_options(sub, c, o);
    sub->callback([&o, &action, cp] { action = [&o, cp] { return search_text(o, *cp); }; });
  }
  {
    auto cp = std::make_shared<SearchCommand>();
    SearchCommand& c = *cp;
    auto* sub = app.add_subcommand("search-image", "Find indexed photos that look like an example image");
    sub->add_option("image", c.queries,
                    "Image files (indexed or not); '-' reads the bytes of one image from stdin (so does /dev/stdin)");
    sub->add_option("--paths-from", c.paths_from,
                    "Read more image paths from this file ('-' = stdin), one per line, or NUL-terminated with -0");
    sub->add_flag("--exclude-self", c.exclude_self, "Leave the query image itself out of its results");
    add_search_options(sub, c, o);
    add_decode_options(sub, o);
    sub->callback([&o, &action, cp] { action = [&o, cp] { return search_image(o, *cp); }; });
  }
}

}  // namespace cnclip::cli
