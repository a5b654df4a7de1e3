// search-text, search-image
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <future>
#include <iostream>
#include <limits>
#include <optional>

#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "cnclip/image_query.h"
#include "cnclip/output.h"
#include "cnclip/photo_meta.h"
#include "cnclip/query.h"
#include "cnclip/route.h"
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
  double threshold = 0;
  CLI::Option* threshold_opt = nullptr;  // given: threshold applies (any finite value, -5 included)
  std::string under;
  bool exclude_self = false;
  bool null_separated = false;
  std::string paths_from;
  bool no_server = false;
  std::vector<std::string> not_texts;  // --not
  double not_threshold = kDefaultNotThreshold;
  bool plain = false;         // search-text --plain: no combined-query syntax
  std::string after, before;  // --after/--before as given
  std::string sort = "score";
  long long offset = 0;
  bool exact = false;  // --exact: a flat search whatever the index's snapshot type
};

void add_search_options(CLI::App* sub, SearchCommand& c, CommonOptions& o) {
  whole_number(sub->add_option("-k,--top-k", c.top_k, "Results per query (more than the index holds: all of them)")
                   ->capture_default_str(),
               1, INT_MAX);
  // Any finite number: 2 keeps nothing, -1 everything.
  c.threshold_opt =
      real_number(sub->add_option("--threshold", c.threshold, "Only results with cosine similarity >= this"),
                  -std::numeric_limits<double>::max(), std::numeric_limits<double>::max());
  sub->add_option("--under", c.under, "Only files below this folder (or only this file)");
  sub->add_option("--not", c.not_texts,
                  "Leave out results that look like this text (cosine >= --not-threshold); repeatable");
  real_number(sub->add_option("--not-threshold", c.not_threshold,
                              "Cosine similarity to a --not text from which a result is left out")
                  ->capture_default_str(),
              -1, 1);
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
  one_of(
      sub->add_option("--format", o.format, "table, json, jsonl or paths (default: table on a terminal, else jsonl)"),
      {"table", "json", "jsonl", "paths", "auto"});
  sub->add_flag("-0,--null", c.null_separated,
                "NUL instead of newline: after each path of --format paths, and between the items read from stdin");
  sub->add_flag("--exact", c.exact,
                "Exact search even when the index keeps approximate vectors (cnclip index --vectors): its flat "
                "snapshot, or the catalog's vectors (slower)");
  sub->add_flag("--no-server", c.no_server,
                "Answer here even when a 'cnclip serve' runs for the index (default: send the query to it)");
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
}

// The server advertised for the index when it may answer these queries (route.h), else null; with
// CNCLIP_ROUTE_DEBUG set, says on stderr which way the queries go. No model is loaded here. When
// the queries are answered here, the process first restarts for the model (options.h): nothing has
// been read or printed yet. --not texts are encoded here and the route protocol does not carry them,
// and --exact asks for this process's own snapshot choice: such searches run locally.
std::unique_ptr<RouteClient> connect_route(const CommonOptions& o, const SearchCommand& c,
                                           std::optional<BundleManifest>& bundle) {
  if (c.no_server || !c.not_texts.empty() || c.exact) {
    restart_before_local_model();
    return nullptr;
  }
  std::string why;
  std::unique_ptr<RouteClient> route;
  try {
    bundle = load_bundle_manifest(resolve_model_dir(o.model));
    route = RouteClient::connect(resolve_index_dir(o.index), *bundle, o.device, &why);
  } catch (const Exception& e) {
    why = e.what();  // the local path reports it, in its place
  }
  if (!route) restart_before_local_model();
  if (std::getenv("CNCLIP_ROUTE_DEBUG")) {
    const char* spin = std::getenv("GOMP_SPINCOUNT");
    const char* tunables = std::getenv("GLIBC_TUNABLES");
    std::cerr << "cnclip: route: " << (route ? "through the server" : "local: " + terminal_safe(why))
              << " (GOMP_SPINCOUNT " << (spin ? terminal_safe(spin) : "unset") << ", GLIBC_TUNABLES "
              << (tunables ? terminal_safe(tunables) : "unset") << ")" << std::endl;
  }
  return route;
}

void route_debug(const RouteClient& route) {
  if (std::getenv("CNCLIP_ROUTE_DEBUG")) {
    std::cerr << "cnclip: route: local from here: " << terminal_safe(route.last_problem()) << std::endl;
  }
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
  if (c.threshold_opt->count() > 0) s.threshold = static_cast<float>(c.threshold);
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

// --not TEXT...: checked like queries, encoded in one batch.
void add_not_filter(SearchOptions& s, Model& model, const SearchCommand& c) {
  if (c.not_texts.empty()) return;
  for (size_t i = 0; i < c.not_texts.size(); ++i) {
    check_text(model.tokenizer(), c.not_texts[i], model.manifest().context_length,
               "--not text " + std::to_string(i + 1), true);
  }
  const auto e = model.encode_texts(c.not_texts);
  const size_t dim = static_cast<size_t>(model.dim());
  for (size_t i = 0; i < c.not_texts.size(); ++i) {
    s.not_like.emplace_back(e.begin() + static_cast<std::ptrdiff_t>(i * dim),
                            e.begin() + static_cast<std::ptrdiff_t>((i + 1) * dim));
  }
  s.not_threshold = static_cast<float>(c.not_threshold);
}

// A query of search-text: plain text, or (unless --plain) a combined query whose text terms are
// checked one by one (query.h).
void check_query(const Tokenizer& tokenizer, const std::string& q, int context, const std::string& what, bool plain) {
  const auto terms = plain ? std::vector<QueryTerm>{} : parse_combined_query(q);
  if (terms.empty()) {
    check_text(tokenizer, q, context, what, true);
    return;
  }
  for (size_t t = 0; t < terms.size(); ++t) {
    if (terms[t].kind == QueryTerm::Kind::kText) {
      check_text(tokenizer, terms[t].value, context, what + " term " + std::to_string(t + 1), true);
    }
  }
}

// The index opened and its vectors mapped on another thread, while the model loads: for a cold
// query the two take about as long as each other. The vectors follow later commits (a `search-text -`
// stream answers each line from the newest committed state, as serve does). `bundle` must outlive it.
struct OpenedIndex {
  std::unique_ptr<IndexStore> store;
  std::unique_ptr<FollowingSearcher> searcher;
};
OpenedIndex open_index(const CommonOptions& o, const BundleManifest& bundle, bool exact) {
  OpenedIndex opened;
  opened.store = open_for_search(o, bundle);
  FollowOptions follow;
  follow.exact = exact;
  follow.model = &bundle;
  follow.mixed_precision = o.mixed_precision;
  opened.searcher = std::make_unique<FollowingSearcher>(*opened.store, follow);
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
  SearchOptions opts = search_options(c);  // bad values stop before anything is opened
  if (std::count(c.queries.begin(), c.queries.end(), "-") > 1) {
    throw Exception(ErrorCode::kInvalidArgument, "'-' (queries from stdin) can be given only once");
  }
  // Routed (route.h): the queries are checked here as below, answered by the server; the model is
  // loaded only when the server cannot answer (then from that query on, so the output is the same).
  std::optional<BundleManifest> bundle;
  std::unique_ptr<RouteClient> route = connect_route(o, c, bundle);
  std::unique_ptr<Model> model;
  std::future<OpenedIndex> pending;
  std::unique_ptr<Tokenizer> route_tokenizer;
  auto go_local = [&] {
    route.reset();
    if (model) return;
    model = open_model(o);
    pending = std::async(std::launch::async, [&o, &c, &model] { return open_index(o, model->manifest(), c.exact); });
  };
  if (route) {
    route_tokenizer = WordPieceTokenizer::from_vocab_file(bundle->path_of("vocab.txt"));
  } else {
    go_local();
  }
  const int context = route ? bundle->context_length : model->manifest().context_length;
  const Tokenizer& tokenizer = route ? *route_tokenizer : model->tokenizer();
  // Every query on the command line is checked before anything is searched or printed.
  for (size_t i = 0; i < c.queries.size(); ++i) {
    if (c.queries[i] != "-") check_query(tokenizer, c.queries[i], context, "query " + std::to_string(i + 1), c.plain);
  }
  std::optional<OpenedIndex> opened;
  auto index = [&]() -> OpenedIndex& {
    if (!opened) opened = pending.get();
    return *opened;
  };
  if (model) add_not_filter(opts, *model, c);  // a routed search has no --not (above)
  ResultPrinter printer = make_printer(o, c);
  const DecodeOptions decode = decode_options(o, bundle ? bundle->image.size : model->manifest().image.size);
  // Image terms of combined queries: the stored embedding of an indexed, unchanged file, else the
  // file decoded and encoded.
  const ImageTermEmbedder image_term = [&](const std::string& path) -> std::vector<float> {
    std::string p = path;
    if (p.rfind("~/", 0) == 0) {
      const char* home = std::getenv("HOME");
      if (!home || !*home) {
        throw Exception(ErrorCode::kInvalidArgument, path + ": HOME is not set, so '~' means nothing");
      }
      p = std::string(home) + p.substr(1);
    }
    return image_file_embedding(*model, &index().store->catalog(), p, decode).value();
  };
  // `follow`: a stdin line, answered from the newest committed state; the command line's queries are
  // answered from the state loaded at the start.
  auto answer = [&](const std::vector<std::string>& queries, bool follow) {
    if (queries.empty()) return;
    const bool combined = !c.plain && std::any_of(queries.begin(), queries.end(), [](const std::string& q) {
      return !parse_combined_query(q).empty();
    });
    // Combined queries (query.h) are not in the route protocol: they, and every later query, run here.
    if (route && combined) go_local();
    if (route) {
      auto a = route->search_texts(queries, opts, o.mixed_precision);
      if (a.status == RouteClient::Status::kAnswered) {
        for (const auto& r : a.results) printer.print(r);
        return;
      }
      route_debug(*route);
      go_local();
    }
    std::vector<float> embeddings;
    if (!combined) {
      embeddings = model->encode_texts(queries);
    } else {
      for (const auto& q : queries) {
        const auto e = encode_query(*model, q, image_term);
        embeddings.insert(embeddings.end(), e.begin(), e.end());
      }
    }
    Searcher& searcher = follow ? index().searcher->current() : index().searcher->loaded();
    for (const auto& r : searcher.search(queries, embeddings, opts)) printer.print(r);
  };
  size_t answered = 0;
  std::vector<std::string> batch;  // consecutive command-line queries, encoded together
  FinishOnError finish_on_error{printer, answered};
  for (const auto& q : c.queries) {
    if (q != "-") {
      batch.push_back(q);
      continue;
    }
    answer(batch, false);
    answered += batch.size();
    batch.clear();
    // One query per line, answered as it arrives (flushed before the next line is read). What could
    // fail before the first line fails now.
    if (route && route->check(opts, o.mixed_precision).status != RouteClient::Status::kAnswered) {
      route_debug(*route);
      go_local();
    }
    if (!route) {
      model->load_text_tower();
      index();
    }
    ItemReader reader(std::cin, c.null_separated);
    std::string line;
    while (reader.next(line)) {
      check_query(tokenizer, line, context, "stdin line " + std::to_string(reader.position()), c.plain);
      answer({line}, true);
      ++answered;
    }
  }
  answer(batch, false);
  answered += batch.size();
  if (answered == 0) throw Exception(ErrorCode::kInvalidArgument, "no query given (stdin was empty)");
  printer.finish();
  return 0;
}

int search_image(const CommonOptions& o, const SearchCommand& c) {
  const auto stdin_images = std::count(c.queries.begin(), c.queries.end(), "-");
  if (stdin_images > 1) throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) can be given only once");
  if (stdin_images && c.paths_from == "-") {
    throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) and '--paths-from -' both want stdin");
  }
  if (stdin_images && ::isatty(STDIN_FILENO) == 1) {
    throw Exception(
        ErrorCode::kInvalidArgument,
        "'-' reads the bytes of an image from stdin, which is a terminal (try: cnclip search-image - < photo.jpg)");
  }
  if (c.queries.empty() && c.paths_from.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "give example images, '-' for one on stdin, or --paths-from FILE");
  }
  // Routed (route.h): the files are read here, with this user's permissions, and the server
  // answers from the stored embedding of an indexed, unchanged file or encodes the bytes sent.
  std::optional<BundleManifest> bundle;
  std::unique_ptr<RouteClient> route = connect_route(o, c, bundle);
  SearchOptions opts = search_options(c);
  if (route && route->check(opts, o.mixed_precision).status != RouteClient::Status::kAnswered) {
    route_debug(*route);
    route.reset();
  }
  std::unique_ptr<Model> model;
  std::optional<OpenedIndex> opened;
  auto go_local = [&] {
    route.reset();
    if (model) return;
    model = open_model(o);
    // The index first: a query that is already indexed needs no image tower at all.
    opened = open_index(o, model->manifest(), c.exact);
  };
  if (!route) go_local();
  if (model) add_not_filter(opts, *model, c);  // a routed search has no --not (above)
  const Normalization norm = route ? bundle->image : model->manifest().image;
  const auto decode = decode_options(o, norm.size);
  ResultPrinter printer = make_printer(o, c);

  // One query's answer: the hits, or an error to report (the image cannot be used). Paths read from
  // stdin (a stream, as search-text's) are answered from the newest committed state.
  bool follow = false;
  auto search_embedding = [&](const std::string& label, const std::vector<float>& embedding,
                              const std::string& self) -> QueryResult {
    const std::vector<std::string> exclude{c.exclude_self ? self : ""};
    Searcher& searcher = follow ? opened->searcher->current() : opened->searcher->loaded();
    return searcher.search({label}, embedding, opts, exclude).at(0);
  };
  auto encode_bytes = [&](const std::vector<uint8_t>& bytes, const std::string& name) -> Result<std::vector<float>> {
    std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
    auto ok = preprocess_image(bytes, name, norm, decode, pixels.data());
    if (!ok) return ok.error();
    return model->encode_images(pixels.data(), 1);
  };
  // Bytes of an image that is not (or no longer) indexed: sent to the server, else encoded here.
  auto answer_bytes = [&](const std::vector<uint8_t>& bytes, const std::string& name, const std::string& label,
                          const std::string& self) -> Result<QueryResult> {
    if (route) {
      auto a =
          route->search_image_bytes(label, name, bytes, decode, c.exclude_self ? self : "", opts, o.mixed_precision);
      if (a.status == RouteClient::Status::kAnswered) return std::move(a.results.at(0));
      if (a.status == RouteClient::Status::kImageError) return a.error;
      route_debug(*route);
      go_local();
    }
    auto e = encode_bytes(bytes, name);
    if (!e) return e.error();
    return search_embedding(label, e.value(), self);
  };
  auto answer_one = [&](const std::string& arg) -> Result<QueryResult> {
    if (arg == "-") {
      auto bytes = read_all_bytes(std::cin, "standard input", kMaxStreamedImageBytes);
      if (bytes.empty()) return Error{ErrorCode::kCorrupt, "standard input: no image bytes (empty)"};
      return answer_bytes(bytes, "standard input", arg, "");
    }
    struct stat st {};
    if (::stat(arg.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      // /dev/stdin, a FIFO, <(command): the bytes are read as they come; nothing to exclude.
      std::ifstream in(arg, std::ios::binary);
      if (!in) return errno_error(arg, errno, "cannot open");
      return answer_bytes(read_all_bytes(in, arg, kMaxStreamedImageBytes), arg, arg, "");
    }
    auto canonical = canonical_path(arg);
    if (!canonical) return canonical.error();
    auto found = stat_file(canonical.value());
    if (!found) return found.error();
    const std::string& self = canonical.value();
    if (route) {
      auto a =
          route->search_indexed_image(arg, self, found.value(), c.exclude_self ? self : "", opts, o.mixed_precision);
      if (a.status == RouteClient::Status::kAnswered) return std::move(a.results.at(0));
      if (a.status == RouteClient::Status::kImageError) return a.error;
      if (a.status == RouteClient::Status::kUnavailable) {
        route_debug(*route);
        go_local();
      }
    }
    if (!route) {
      // An indexed, unchanged file already has its embedding: no need to load the image tower.
      auto stored = stored_embedding_if_unchanged(opened->store->catalog(), self, found.value(), model->dim());
      if (!stored.empty()) return search_embedding(arg, stored, self);
    }
    // Read as preprocess_image_file reads it: the same errors, naming the file as given.
    auto bytes = read_file_bytes(arg);
    if (!bytes) return bytes.error();
    return answer_bytes(bytes.value(), arg, arg, self);
  };

  int failed = 0;
  size_t answered = 0;
  FinishOnError finish_on_error{printer, answered};
  auto answer = [&](const std::string& arg) {
    auto r = answer_one(arg);
    if (!r) {
      print_error(r.error().message);
      ++failed;
      printer.skip(arg);
      return;
    }
    printer.print(r.value());
    ++answered;
  };
  for (const auto& arg : c.queries) answer(arg);
  if (!c.paths_from.empty()) {
    auto reader = ItemReader::open(c.paths_from, c.null_separated);
    follow = c.paths_from == "-";
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
    sub->add_option("query", c.queries,
                    "Texts; '-' reads one query per line from stdin, answering each as it comes. A query with ' + ' "
                    "or ' - ' combines terms: \"2:海边 + ./pool.jpg - 人群\" (README: Combined queries)")
        ->required();
    sub->add_flag("--plain", c.plain, "Take every query as plain text, even with ' + ' or ' - ' in it");
    add_search_options(sub, c, o);
    add_decode_options(sub, o);  // for the image terms of combined queries
    sub->callback([&o, &action, cp] { action = [&o, cp] { return search_text(o, *cp); }; });
  }
  {
    auto cp = std::make_shared<SearchCommand>();
    SearchCommand& c = *cp;
    auto* sub = app.add_subcommand("search-image", "Find indexed photos that look like an example image");
    image_files(sub->add_option(
        "image", c.queries,
        "Image files (indexed or not); '-' reads the bytes of one image from stdin (so does /dev/stdin)"));
    sub->add_option("--paths-from", c.paths_from,
                    "Read more image paths from this file ('-' = stdin), one per line, or NUL-terminated with -0");
    sub->add_flag("--exclude-self", c.exclude_self, "Leave the query image itself out of its results");
    add_search_options(sub, c, o);
    add_decode_options(sub, o);
    sub->callback([&o, &action, cp] { action = [&o, cp] { return search_image(o, *cp); }; });
  }
}

}  // namespace cnclip::cli
