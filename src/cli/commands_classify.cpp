// classify: zero-shot labels for images, or for every indexed photo (cnclip/classify.h).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <iostream>
#include <map>

#include "cnclip/classify.h"
#include "cnclip/embed_files.h"
#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "cnclip/output.h"
#include "options.h"
#include "stdin_items.h"

namespace cnclip::cli {
namespace {

// An image given as bytes (stdin, a pipe) larger than this is refused before decoding.
constexpr size_t kMaxStreamedImageBytes = size_t{1} << 30;

struct ClassifyCommand {
  std::vector<std::string> images;
  std::string labels, labels_file, template_text, templates;
  int top = 0;
  bool indexed = false;
  std::string under;
  CLI::Option* labels_opt = nullptr;
  CLI::Option* labels_file_opt = nullptr;
  CLI::Option* template_opt = nullptr;
};

std::vector<std::string> read_labels(const ClassifyCommand& c) {
  if (c.labels_opt->count() > 0) return split_labels(c.labels);
  std::vector<std::string> labels;
  auto reader = ItemReader::open(c.labels_file, false);
  std::string line;
  while (reader->next(line)) {
    // Spaces around a label are not part of it (as with --labels); a line of spaces is a blank
    // label, refused by check_labels.
    const size_t b = line.find_first_not_of(" \t");
    const size_t e = line.find_last_not_of(" \t");
    labels.push_back(b == std::string::npos ? line : line.substr(b, e - b + 1));
  }
  if (labels.empty()) throw Exception(ErrorCode::kInvalidArgument, c.labels_file + ": no labels in the file");
  return labels;
}

void check_usage(const ClassifyCommand& c) {
  const bool by_list = c.labels_opt->count() > 0, by_file = c.labels_file_opt->count() > 0;
  if (by_list == by_file) {
    throw Exception(ErrorCode::kInvalidArgument, by_list ? "give --labels or --labels-file, not both"
                                                         : "give the labels: --labels a,b,c or --labels-file FILE");
  }
  if (c.template_opt->count() > 0 && !c.templates.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "give --template or --templates, not both");
  }
  if (c.indexed && !c.images.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "--indexed labels the indexed photos: give no IMAGE with it");
  }
  if (!c.indexed && !c.under.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "--under goes with --indexed (it picks indexed photos)");
  }
  if (!c.indexed && c.images.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, "give images to classify, '-' for one on stdin, or --indexed");
  }
  const auto stdin_images = std::count(c.images.begin(), c.images.end(), "-");
  if (stdin_images > 1) throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) can be given only once");
  if (stdin_images && by_file && c.labels_file == "-") {
    throw Exception(ErrorCode::kInvalidArgument, "'-' (an image on stdin) and '--labels-file -' both want stdin");
  }
  if (stdin_images && ::isatty(STDIN_FILENO) == 1) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "'-' reads the bytes of an image from stdin, which is a terminal (try: cnclip classify - --labels "
                    "... < photo.jpg)");
  }
}

int classify(const CommonOptions& o, const ClassifyCommand& c) {
  check_usage(c);
  const bool terminal = stdout_is_terminal();
  const OutputFormat format = parse_output_format(o.format, terminal);
  auto model = open_model(o);
  const BundleManifest& bundle = model->manifest();
  LabelPrompts prompts;
  prompts.template_text = c.template_text;
  prompts.chinese_templates = c.templates == "zh";
  std::vector<std::string> labels = read_labels(c);
  check_labels(labels, model->tokenizer(), bundle.context_length, prompts);

  // The index is opened (and checked against the model) before the label texts are encoded.
  std::unique_ptr<IndexStore> store;
  std::string under;
  if (c.indexed) {
    const std::string dir = resolve_index_dir(o.index);
    store = IndexStore::open(dir, IndexAccess::kRead);
    if (store->catalog().count() == 0) {
      throw Exception(ErrorCode::kNotFound, dir + ": the index is empty (run 'cnclip index PATH' first)");
    }
    store->require_model(bundle, o.mixed_precision);
    if (!c.under.empty()) under = canonical_path(c.under).value();
  }
  auto label_embeddings = encode_labels(*model, labels, prompts);
  const Classifier classifier(labels, std::move(label_embeddings), model->dim(), bundle.logit_scale);
  ClassificationPrinter printer(std::cout, format, classifier.labels());

  if (c.indexed) {
    classify_indexed(*store, classifier, under, c.top, [&](const std::vector<Classification>& chunk) {
      for (const auto& r : chunk) printer.print(r);
      printer.flush();
    });
    printer.finish();
    return 0;
  }

  // Images given as streams (stdin, FIFOs, <(command)) are read first, in order; files go through
  // the encode pipeline (decoder threads beside the model workers). Results print in input order.
  const Normalization& norm = bundle.image;
  const DecodeOptions decode = decode_options(o, norm.size);
  std::map<size_t, Result<std::vector<float>>> streamed;
  std::vector<std::string> files;
  std::vector<size_t> file_pos;
  auto encode_bytes = [&](const std::vector<uint8_t>& bytes, const std::string& name) -> Result<std::vector<float>> {
    if (bytes.empty()) return Error{ErrorCode::kCorrupt, name + ": no image bytes (empty)"};
    std::vector<float> pixels(static_cast<size_t>(3) * norm.size * norm.size);
    auto ok = preprocess_image(bytes, name, norm, decode, pixels.data());
    if (!ok) return ok.error();
    return model->encode_images(pixels.data(), 1);
  };
  for (size_t i = 0; i < c.images.size(); ++i) {
    const std::string& arg = c.images[i];
    struct stat st {};
    if (arg == "-") {
      streamed.emplace(
          i, encode_bytes(read_all_bytes(std::cin, "standard input", kMaxStreamedImageBytes), "standard input"));
    } else if (::stat(arg.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
      std::ifstream in(arg, std::ios::binary);
      if (!in) {
        streamed.emplace(i, errno_error(arg, errno, "cannot open"));
      } else {
        streamed.emplace(i, encode_bytes(read_all_bytes(in, arg, kMaxStreamedImageBytes), arg));
      }
    } else {
      files.push_back(arg);
      file_pos.push_back(i);
    }
  }

  int failed = 0;
  auto emit = [&](size_t pos, const float* embedding, const Error* error) {
    if (error) {
      print_error(error->message);
      ++failed;
      return;
    }
    Classification r;
    r.path = c.images[pos];
    r.labels = classifier.classify(embedding, 1, c.top).at(0);
    printer.print(r);
    printer.flush();
  };
  size_t next = 0;
  auto emit_streamed_before = [&](size_t pos) {
    for (; next < pos; ++next) {
      auto it = streamed.find(next);
      if (it == streamed.end()) continue;
      if (it->second) {
        emit(next, it->second.value().data(), nullptr);
      } else {
        emit(next, nullptr, &it->second.error());
      }
    }
  };
  EmbedFilesOptions eo;
  eo.decode = decode;
  embed_image_files(*model, files, eo, [&](size_t i, const float* embedding, const Error* error) {
    emit_streamed_before(file_pos[i]);
    emit(file_pos[i], embedding, error);
    next = file_pos[i] + 1;
  });
  emit_streamed_before(c.images.size());
  printer.finish();
  return failed ? 1 : 0;
}

}  // namespace

void register_classify_command(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<ClassifyCommand>();
  ClassifyCommand& c = *cp;
  auto* sub = app.add_subcommand("classify", "Zero-shot labels: how likely each of your labels is for each image");
  image_files(sub->add_option("image", c.images,
                              "Image files; '-' reads the bytes of one image from stdin (so do /dev/stdin, FIFOs)"));
  c.labels_opt = sub->add_option("--labels", c.labels,
                                 "The labels, separated by ',' or '，' (e.g. 杰尼龟,妙蛙种子,小火龙,皮卡丘)");
  c.labels_file_opt =
      sub->add_option("--labels-file", c.labels_file, "Read the labels from this file, one per line ('-' = stdin)");
  c.template_opt = sub->add_option("--template", c.template_text,
                                   "Put each label into this prompt, '{}' marking where (e.g. \"一张{}的照片\")");
  one_of(
      sub->add_option("--templates", c.templates,
                      "zh: average Chinese-CLIP's 80 Chinese ImageNet prompt templates (as its zero-shot evaluation)"),
      {"zh"});
  whole_number(sub->add_option("--top", c.top, "Show only the N most probable labels of each image (default: all)"), 1,
               INT_MAX);
  sub->add_flag("--indexed", c.indexed,
                "Label every indexed photo from its stored embedding (no decoding, no image tower)");
  sub->add_option("--under", c.under, "With --indexed: only the photos below this folder (or only this file)");
  one_of(sub->add_option("--format", o.format, "table, json or jsonl (default: table on a terminal, else jsonl)"),
         {"table", "json", "jsonl", "auto"});
  add_model_options(sub, o);
  add_index_option(sub, o);
  add_mixed_precision_option(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return classify(o, *cp); }; });
}

}  // namespace cnclip::cli
