// model-info, tokenize, embed-text, embed-image, preprocess
#include <iostream>
#include <nlohmann/json.hpp>

#include "cnclip/embed_files.h"
#include "cnclip/npy.h"
#include "cnclip/output.h"
#include "cnclip/tokenizer.h"
#include "options.h"
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

}  // namespace

void register_model_commands(CLI::App& app, CommonOptions& o, Action& action) {
  {
    auto verify = std::make_shared<bool>(false);
    auto* sub = app.add_subcommand("model-info", "Print the model bundle's manifest as JSON");
    sub->add_flag("--verify", *verify,
                  "Also check every bundle file's sha256 against the manifest (one error line per bad file, exit 1)");
    add_model_options(sub, o);
    sub->callback([&, verify] {
      action = [&, verify] {
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
        const auto problems = verify_bundle_files(bundle, *verify);
        for (const auto& p : problems) {
          if (*verify) print_error(p.message);
          else print_warning(p.message);
        }
        if (*verify && problems.empty()) {
          std::cerr << "cnclip: " << bundle.dir << ": all " << bundle.files.size()
                    << " files match bundle.json (size and sha256)" << std::endl;
        }
        return *verify && !problems.empty() ? 1 : 0;
      };
    });
  }
  {
    struct Args {
      std::vector<std::string> texts;
      bool json_input = false;
      int context_length = 0;
      CLI::Option* context_length_option = nullptr;
      std::string vocab;
    };
    auto a = std::make_shared<Args>();
    auto* sub = app.add_subcommand("tokenize", "Print Chinese-CLIP token ids of each text as JSON lines");
    sub->add_option("text", a->texts, "Texts; '-' reads one text per line from stdin");
    sub->add_flag("--json-input", a->json_input, "Read one JSON string per stdin line (any text, newlines included)");
    add_null_input_option(sub, o, "texts");
    a->context_length_option = sub->add_option("--context-length", a->context_length,
                    "Number of ids per text: 2 up to the bundle's context length (default: that, 52); up to " +
                        std::to_string(kMaxTextPositions) + " with --vocab");
    sub->add_option("--vocab", a->vocab, "vocab.txt to use instead of the model bundle's");
    add_model_options(sub, o);
    sub->callback([&, a] {
      action = [&, a] {
        std::unique_ptr<Tokenizer> tokenizer;
        int length = 52, max_length = kMaxTextPositions;
        std::string limit = "the text tower's positions";
        if (!a->vocab.empty()) {
          tokenizer = WordPieceTokenizer::from_vocab_file(a->vocab);
        } else {
          auto bundle = load_bundle_manifest(resolve_model_dir(o.model));
          tokenizer = WordPieceTokenizer::from_vocab_file(bundle.path_of("vocab.txt"));
          length = max_length = bundle.context_length;
          limit = "the context length of the model " + bundle.dir;
        }
        if (a->context_length_option->count() > 0) {
          // [CLS] and [SEP] take two ids; the tower has no position for more than its maximum.
          if (a->context_length < 2 || a->context_length > max_length) {
            throw Exception(ErrorCode::kInvalidArgument,
                            "--context-length " + std::to_string(a->context_length) + ": must be from 2 to " +
                                std::to_string(max_length) + " (" + limit + ")");
          }
          length = a->context_length;
        }
        std::vector<std::string> inputs = a->json_input ? read_json_strings() : expand_stdin(a->texts, o.null_input);
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
      };
    });
  }
  {
    auto texts = std::make_shared<std::vector<std::string>>();
    auto* sub = app.add_subcommand("embed-text", "Print the embedding of each text as JSON lines");
    sub->add_option("text", *texts, "Texts; '-' reads one text per line from stdin")->required();
    add_null_input_option(sub, o, "texts");
    add_model_options(sub, o);
    sub->callback([&, texts] {
      action = [&, texts] {
        const auto inputs = expand_stdin(*texts, o.null_input);
        auto model = open_model(o, inputs.size() > 256);
        const int dim = model->dim();
        for (size_t i = 0; i < inputs.size(); ++i) {
          check_text(model->tokenizer(), inputs[i], model->manifest().context_length, "text " + std::to_string(i + 1),
                     false);
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
      };
    });
  }
  {
    auto files = std::make_shared<std::vector<std::string>>();
    auto* sub = app.add_subcommand("embed-image", "Print the embedding of each image as JSON lines");
    image_files(sub->add_option("image", *files, "Image files; '-' reads one path per line from stdin"))->required();
    add_null_input_option(sub, o, "paths");
    add_model_options(sub, o);
    add_decode_options(sub, o);
    sub->callback([&, files] {
      action = [&, files] {
        const auto inputs = expand_stdin(*files, o.null_input);
        auto model = open_model(o, inputs.size() > 16);
        const int dim = model->dim();
        EmbedFilesOptions options;
        options.decode = decode_options(o, model->manifest().image.size);
        int failed = 0;
        embed_image_files(*model, inputs, options, [&](size_t i, const float* embedding, const Error* error) {
          if (error) {
            print_error(error->message);
            ++failed;
          } else {
            print_embedding("path", inputs[i], embedding, dim);
          }
        });
        return failed ? 1 : 0;
      };
    });
  }
  {
    auto paths = std::make_shared<std::pair<std::string, std::string>>();  // image, npy
    auto* sub = app.add_subcommand("preprocess", "Write the model input tensor of an image as .npy (debugging)");
    image_files(sub->add_option("image", paths->first, "Image file"))->required();
    sub->add_option("--npy", paths->second,
                    "Output .npy file (float32 [3,R,R]); '-' writes it to stdout. A regular file is replaced "
                    "atomically, a symlink's target likewise, a FIFO or device is written directly")
        ->required();
    add_model_options(sub, o);
    add_decode_options(sub, o);
    sub->callback([&, paths] {
      action = [&, paths] {
        const auto& [image, npy] = *paths;
        Normalization norm;  // Chinese-CLIP's 224 / mean / std unless a bundle says otherwise
        if (!o.model.empty() || std::getenv("CNCLIP_MODEL")) norm = load_bundle_manifest(resolve_model_dir(o.model)).image;
        std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
        auto ok = preprocess_image_file(image, norm, decode_options(o, norm.size), pixels.data());
        if (!ok) throw Exception(ok.error());
        if (npy == "-") {
          if (stdout_is_terminal()) {
            throw Exception(ErrorCode::kInvalidArgument, "--npy -: not writing binary data to a terminal");
          }
          std::cout << npy_bytes(pixels.data(), {3, norm.size, norm.size});
          flush_stdout();
        } else {
          write_npy(npy, pixels.data(), {3, norm.size, norm.size});
        }
        return 0;
      };
    });
  }
}

}  // namespace cnclip::cli
