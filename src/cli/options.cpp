#include "options.h"

#include <unistd.h>

#include <iostream>

#include "cnclip/output.h"
#include "cnclip/runtime.h"

namespace cnclip::cli {

void add_model_options(CLI::App* sub, CommonOptions& o) {
  sub->add_option("--model", o.model, "Model bundle directory (default: $CNCLIP_MODEL, else "
                                      "${XDG_DATA_HOME:-~/.local/share}/cnclip/models/default)");
  sub->add_option("--device", o.device, "cpu or cuda[:N]")->capture_default_str();
  sub->add_option("--threads", o.threads, "Compute threads (0 = all cores)")->capture_default_str();
}

void add_index_option(CLI::App* sub, CommonOptions& o) {
  sub->add_option("--index", o.index, "Index directory (default: $CNCLIP_INDEX, else "
                                      "${XDG_DATA_HOME:-~/.local/share}/cnclip)");
}

void add_mixed_precision_option(CLI::App* sub, CommonOptions& o) {
  sub->add_flag("--mixed-precision", o.mixed_precision,
                "Accept the int8 (or fp32) export of the model the index was built with");
}

void add_decode_options(CLI::App* sub, CommonOptions& o) {
  sub->add_flag("--ignore-exif", o.ignore_exif,
                "Ignore EXIF orientation (exact parity with Chinese-CLIP's Python preprocessing)");
  sub->add_flag("--full-decode", o.full_decode,
                "Decode large JPEGs at full size (default: libjpeg DCT scaling while the image stays at least "
                "twice the model input; --full-decode --ignore-exif gives bit parity with Chinese-CLIP)");
  sub->add_option("--max-pixels", o.max_megapixels, "Refuse images larger than this many megapixels")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

std::unique_ptr<Model> open_model(const CommonOptions& o, bool many_calls) {
  ModelOptions mo;
  mo.optimize_for_many_calls = many_calls;
  mo.device = o.device;
  mo.threads = o.threads;
  return Model::open(resolve_model_dir(o.model), mo);
}

DecodeOptions decode_options(const CommonOptions& o, int input_size) {
  DecodeOptions d;
  // Twice the input side keeps the bicubic downscale doing the real work (measured by
  // scripts/bench.sh: embeddings within cosine 0.99999 of full decoding) at a fraction of the cost.
  d.reduced_decode_min_side = o.full_decode ? 0 : 2 * input_size;
  d.apply_exif_orientation = !o.ignore_exif;
  d.max_pixels = static_cast<int64_t>(o.max_megapixels * 1e6);
  return d;
}

std::vector<std::string> expand_stdin(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (const auto& a : args) {
    if (a != "-") {
      out.push_back(a);
      continue;
    }
    std::string line;
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) out.push_back(line);
    }
  }
  return out;
}

bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }
bool stderr_is_terminal() { return ::isatty(user_stderr_fd()) == 1; }

// Messages name files, and file names can hold control characters: escaped, so that a name never
// drives the terminal or splits a message over lines.
void print_error(const std::string& message) { std::cerr << "cnclip: error: " << terminal_safe(message) << std::endl; }
void print_warning(const std::string& message) {
  std::cerr << "cnclip: warning: " << terminal_safe(message) << std::endl;
}

}  // namespace cnclip::cli
