// eval: Chinese-CLIP's retrieval figures on a labelled set (include/cnclip/eval.h)
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cnclip/eval.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "options.h"
#include "progress.h"

namespace cnclip::cli {
namespace {

// Bad data and the progress bar on stderr.
class EvalTerminal : public EvalObserver {
 public:
  explicit EvalTerminal(bool bar) : bar_(bar) {}
  ~EvalTerminal() override { end_bar(); }
  // The first kShown problems, one line each; a file of the wrong kind (TEXTS given a TSV, say) would
  // otherwise print a line per line of it. The summary line gives the total.
  static constexpr int kShown = 100;
  void on_problem(const std::string& message) override {
    end_bar();
    if (++problems_ <= kShown) print_warning(terminal_safe(message));
    if (problems_ == kShown + 1) print_warning("more data problems: not shown one by one");
  }
  void on_progress(int64_t done, int64_t total) override { bar_.update(done, total); }
  void end_bar() { bar_.end(); }

 private:
  ProgressBar bar_;
  int64_t problems_ = 0;
};

nlohmann::ordered_json recall_json(const Recall& r) {
  return {{"r1", r.r1}, {"r5", r.r5}, {"r10", r.r10}, {"mean_recall", r.mean_recall}};
}

// An output named on the command line is checked before hours of encoding, not after.
void check_output(const std::string& option, const std::string& path, bool is_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (is_dir) {
    if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
      throw Exception(ErrorCode::kInvalidArgument, option + ": " + path + " exists and is not a folder");
    }
    return;
  }
  if (fs::is_directory(path, ec)) throw Exception(ErrorCode::kInvalidArgument, option + ": " + path + " is a folder");
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec)) {
    throw Exception(ErrorCode::kInvalidArgument, option + ": the folder " + parent.string() + " does not exist");
  }
}

struct EvalCommand {
  std::string images, texts, predictions, image_predictions, features;
  int k = 10, batch_size = 4, jobs = 0;
};

int run_eval_command(const CommonOptions& o, const EvalCommand& c) {
  const bool table = parse_output_format(o.format, stdout_is_terminal()) == OutputFormat::kTable && o.format != "json";
  const bool json = !table;
  if (!c.predictions.empty()) check_output("--predictions", c.predictions, false);
  if (!c.image_predictions.empty()) check_output("--image-predictions", c.image_predictions, false);
  if (!c.features.empty()) check_output("--features", c.features, true);
  EvalOptions options;
  options.images = c.images;
  options.texts = c.texts;
  options.k = c.k;
  options.encode.batch_size = c.batch_size;
  options.encode.decode_threads = c.jobs;
  auto model = open_model(o, /*many_calls=*/true);
  options.decode = decode_options(o, model->manifest().image.size);
  install_interrupt_handlers();
  EvalTerminal observer(stderr_is_terminal() && !o.quiet);
  const EvalReport r = run_eval(*model, options, observer);
  observer.end_bar();
  if (!c.predictions.empty()) write_predictions(r, c.predictions);
  if (!c.image_predictions.empty()) write_image_predictions(r, c.image_predictions);
  if (!c.features.empty()) write_features(r, options, c.features);
  if (json) {
    nlohmann::ordered_json j{{"texts", r.texts},
                             {"images", r.images},
                             {"text_to_image", recall_json(r.text_to_image)},
                             {"image_to_text", recall_json(r.image_to_text)}};
    std::cout << dump_json(j) << std::endl;
  } else {
    char line[128];
    std::cout << r.texts << " texts, " << r.images << " images (" << r.named_images << " named by the texts)\n";
    std::cout << "              R@1     R@5    R@10    mean\n";
    for (const auto& [name, rec] : {std::pair<const char*, Recall>{"text→image", r.text_to_image},
                                    std::pair<const char*, Recall>{"image→text", r.image_to_text}}) {
      std::snprintf(line, sizeof(line), "%s  %6.2f  %6.2f  %6.2f  %6.2f\n", name, rec.r1, rec.r5, rec.r10,
                    rec.mean_recall);
      std::cout << line;
    }
    std::cout << std::flush;
  }
  if (!o.quiet) {
    char line[160];
    std::snprintf(line, sizeof(line), "cnclip: eval: %lld images in %.1f s (%.2f img/s)",
                  static_cast<long long>(r.images), r.image_seconds,
                  r.image_seconds > 0 ? static_cast<double>(r.images) / r.image_seconds : 0.0);
    std::cerr << line << '\n';
  }
  if (r.problems > 0) {
    std::cerr << "cnclip: eval: " << r.problems << " data problem(s) reported above"
              << (r.missing_images > 0 ? " (" + std::to_string(r.missing_images) + " image(s) missing, each a miss)"
                                       : std::string())
              << "; the figures include them\n";
    return 1;
  }
  return 0;
}

}  // namespace

void register_eval_command(CLI::App& app, CommonOptions& o, Action& action) {
  auto cp = std::make_shared<EvalCommand>();
  EvalCommand& c = *cp;
  auto* sub = app.add_subcommand(
      "eval", "Retrieval recall (R@1/5/10, text→image and image→text) on a labelled set, as Chinese-CLIP scores it");
  sub->add_option("--images", c.images, "Folder of images named <image_id>.<ext>, or TSV of image_id<TAB>base64")
      ->required();
  sub->add_option("--texts", c.texts, "JSONL of {\"text_id\", \"text\", \"image_ids\"} per line")->required();
  whole_number(
      sub->add_option("-k,--k", c.k, "Predictions kept per query in --predictions files")->capture_default_str(), 1,
      1000000);
  sub->add_option("--predictions", c.predictions,
                  "Write the top-k images of each text: {\"text_id\", \"image_ids\"} per line (evaluation.py's input)");
  sub->add_option("--image-predictions", c.image_predictions,
                  "Write the top-k texts of each named image: {\"image_id\", \"text_ids\"} (evaluation_tr.py's input)");
  sub->add_option("--features", c.features,
                  "Write <images>.img_feat.jsonl and <texts>.txt_feat.jsonl here, as extract_features.py does");
  one_of(sub->add_option("--format", o.format, "table or json (default: table on a terminal, else json)"),
         {"table", "json", "auto"});
  whole_number(sub->add_option("--batch-size", c.batch_size, "Images per model call")->capture_default_str(), 1, 1024);
  whole_number(sub->add_option("-j,--jobs", c.jobs, "Decoder threads (0 = one per core)")->capture_default_str(), 0,
               kMaxThreads);
  sub->add_flag("-q,--quiet", o.quiet, "No progress bar, no summary line (bad data is still reported)");
  add_model_options(sub, o);
  add_decode_options(sub, o);
  sub->callback([&o, &action, cp] { action = [&o, cp] { return run_eval_command(o, *cp); }; });
}

}  // namespace cnclip::cli
