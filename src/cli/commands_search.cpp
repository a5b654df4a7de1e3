// search-text, search-image
#include <future>
#include <iostream>

#include "cnclip/file_walk.h"
#include "cnclip/output.h"
#include "cnclip/search.h"
#include "options.h"

namespace cnclip::cli {
namespace {

struct SearchCommand {
  std::vector<std::string> queries;
  int top_k = 10;
  double threshold = -2;
  std::string under;
  bool exclude_self = false;
};

void add_search_options(CLI::App* sub, SearchCommand& c, CommonOptions& o) {
  sub->add_option("-k,--top-k", c.top_k, "Results per query")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--threshold", c.threshold, "Only results with cosine similarity >= this");
  sub->add_option("--under", c.under, "Only files below this folder");
  sub->add_option("--format", o.format, "table, json, jsonl or paths (default: table on a terminal, else jsonl)")
      ->check(CLI::IsMember({"table", "json", "jsonl", "paths", "auto"}));
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
std::future<OpenedIndex> open_in_background(const CommonOptions& o, const BundleManifest& bundle) {
  return std::async(std::launch::async, [&o, &bundle] { return open_index(o, bundle); });
}

int print(const std::vector<QueryResult>& results, const CommonOptions& o) {
  print_results(std::cout, results, parse_output_format(o.format, stdout_is_terminal()));
  return 0;
}

}  // namespace

void register_search_commands(CLI::App& app, CommonOptions& o, Action& action) {
  {
    auto cp = std::make_shared<SearchCommand>();
    SearchCommand& c = *cp;
    auto* sub = app.add_subcommand("search-text", "Find indexed photos matching Chinese (or English) text");
    sub->add_option("query", c.queries, "Texts; '-' reads one query per line from stdin")->required();
    add_search_options(sub, c, o);
    sub->callback([&o, &action, cp] {
      action = [&o, cp] {
        SearchCommand& c = *cp;
        auto model = open_model(o);
        auto index = open_in_background(o, model->manifest());
        const auto queries = expand_stdin(c.queries);
        if (queries.empty()) throw Exception(ErrorCode::kInvalidArgument, "no query given");
        for (size_t i = 0; i < queries.size(); ++i) {
          if (auto bad = find_invalid_utf8(queries[i])) {
            throw Exception(ErrorCode::kInvalidArgument, "query " + std::to_string(i + 1) +
                                                             " is not valid UTF-8 (bad byte at offset " +
                                                             std::to_string(*bad) + ")");
          }
        }
        const SearchOptions opts = search_options(c);
        const auto embeddings = model->encode_texts(queries);
        OpenedIndex opened = index.get();
        return print(opened.searcher->search(queries, embeddings, opts), o);
      };
    });
  }
  {
    auto cp = std::make_shared<SearchCommand>();
    SearchCommand& c = *cp;
    auto* sub = app.add_subcommand("search-image", "Find indexed photos that look like an example image");
    sub->add_option("image", c.queries, "Image files (indexed or not); '-' reads one path per line from stdin")->required();
    sub->add_flag("--exclude-self", c.exclude_self, "Leave the query image itself out of its results");
    add_search_options(sub, c, o);
    add_decode_options(sub, o);
    sub->callback([&o, &action, cp] {
      action = [&o, cp] {
        SearchCommand& c = *cp;
        auto model = open_model(o);
        // The index first: a query that is already indexed needs no image tower at all.
        OpenedIndex opened = open_index(o, model->manifest());
        IndexStore* store = opened.store.get();
        const SearchOptions opts = search_options(c);
        const auto inputs = expand_stdin(c.queries);
        const int dim = model->dim();
        const int r = model->manifest().image.size;
        const auto decode = decode_options(o, model->manifest().image.size);
        std::vector<std::string> labels, exclude;
        std::vector<float> embeddings;
        int failed = 0;
        for (const auto& path : inputs) {
          auto canonical = canonical_path(path);
          auto found = canonical ? stat_file(canonical.value()) : Result<FoundFile>(canonical.error());
          if (!found) {
            print_error(found.error().message);
            ++failed;
            continue;
          }
          // An indexed, unchanged file already has its embedding: no need to load the image tower.
          std::vector<float> e;
          if (auto rec = store->catalog().find(canonical.value());
              rec && rec->size == found.value().size && rec->mtime_ns == found.value().mtime_ns) {
            e = store->catalog().embedding(rec->id);
          }
          if (e.size() != static_cast<size_t>(dim)) {
            std::vector<float> pixels(static_cast<size_t>(3) * r * r);
            auto ok = preprocess_image_file(path, model->manifest().image, decode, pixels.data());
            if (!ok) {
              print_error(ok.error().message);
              ++failed;
              continue;
            }
            e = model->encode_images(pixels.data(), 1);
          }
          labels.push_back(path);
          exclude.push_back(c.exclude_self ? canonical.value() : "");
          embeddings.insert(embeddings.end(), e.begin(), e.end());
        }
        if (!labels.empty()) print(opened.searcher->search(labels, embeddings, opts, exclude), o);
        return failed ? 1 : 0;
      };
    });
  }
}

}  // namespace cnclip::cli
