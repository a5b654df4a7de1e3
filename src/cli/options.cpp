#include "options.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "stdin_items.h"

namespace cnclip::cli {
namespace {

// What each checked option accepts, in words. Options live as long as the App; written only while
// the subcommands are registered, before parsing.
std::map<const CLI::Option*, std::string>& accepted() {
  static std::map<const CLI::Option*, std::string> m;
  return m;
}

constexpr double kAnyNumber = 1e300;     // a range this wide means: any finite number
constexpr double kMinMegapixels = 1e-6;  // --max-pixels: one pixel

// As people write numbers: 1000000, 0.95, 0.000001 (no exponent down to six decimals).
std::string number_text(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return std::to_string(static_cast<long long>(v));
  std::ostringstream ss;
  ss << std::fixed << std::setprecision(6) << v;
  std::string out = ss.str();
  while (out.back() == '0') out.pop_back();
  if (out.back() == '.') out.pop_back();
  if (out == "0" || out == "-0") {
    std::ostringstream plain;
    plain << v;
    return plain.str();
  }
  return out;
}

CLI::Option* add_check(CLI::Option* opt, std::string accepts, std::string short_desc,
                       std::function<bool(const std::string&)> ok) {
  accepted()[opt] = accepts;
  opt->check(CLI::Validator(
      [accepts, ok](std::string& value) -> std::string {
        if (ok(value)) return "";
        return "expects " + accepts + ", not '" + value + "'";
      },
      short_desc, "cnclip-plain"));
  return opt;
}

std::string whole_number_words(long long min, long long max) {
  return "a whole number from " + std::to_string(min) + " to " + std::to_string(max);
}

}  // namespace

CLI::Option* whole_number(CLI::Option* opt, long long min, long long max) {
  const std::string desc =
      max == INT_MAX ? ">=" + std::to_string(min) : std::to_string(min) + ".." + std::to_string(max);
  return add_check(opt, whole_number_words(min, max), desc, [min, max](const std::string& v) {
    long long n = 0;
    const char* end = v.data() + v.size();
    auto [p, ec] = std::from_chars(v.data(), end, n);
    return !v.empty() && ec == std::errc() && p == end && n >= min && n <= max;
  });
}

CLI::Option* real_number(CLI::Option* opt, double min, double max, bool min_exclusive) {
  const bool any = min <= -kAnyNumber && max >= kAnyNumber;
  const std::string words = any ? std::string("a number (not nan or inf)")
                                : std::string("a number ") + (min_exclusive ? "greater than " : "from ") +
                                      number_text(min) + (min_exclusive ? " and at most " : " to ") + number_text(max);
  const std::string desc =
      any ? "" : (min_exclusive ? ">" + number_text(min) + ",<=" : number_text(min) + "..") + number_text(max);
  return add_check(opt, words, desc, [min, max, min_exclusive](const std::string& v) {
    if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return false;
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(v.c_str(), &end);
    if (end != v.c_str() + v.size() || errno == ERANGE || !std::isfinite(d)) return false;
    return (min_exclusive ? d > min : d >= min) && d <= max;
  });
}

CLI::Option* one_of(CLI::Option* opt, const std::vector<std::string>& choices) {
  std::string words, desc;
  for (size_t i = 0; i < choices.size(); ++i) {
    words += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
    desc += (i == 0 ? "" : ",") + choices[i];
  }
  return add_check(opt, words, "{" + desc + "}", [choices](const std::string& v) {
    return std::find(choices.begin(), choices.end(), v) != choices.end();
  });
}

std::string folder_given_as_image(const std::string& path) {
  std::error_code ec;
  if (path == "-" || !std::filesystem::is_directory(path, ec)) return "";
  return "'" + path + "' is a folder; give image files ('cnclip index' takes folders)";
}

CLI::Option* image_files(CLI::Option* opt) {
  // Checked when parsed, so that a folder is a usage error (exit 2) before any model is loaded; a
  // path that does not exist or is not an image is the command's to report (exit 1, or counted).
  opt->check(CLI::Validator([](std::string& path) { return folder_given_as_image(path); }, "", "cnclip-image-file"));
  return opt;
}

std::string accepted_values(const CLI::Option* opt) {
  auto it = accepted().find(opt);
  return it == accepted().end() ? "" : it->second;
}

void check_unchecked_numbers(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    check_unchecked_numbers(*sub);
  }
  for (CLI::Option* opt : app.get_options([](CLI::Option*) { return true; })) {
    if (accepted().count(opt) || opt->get_items_expected_max() == 0) continue;
    const std::string type = opt->get_type_name();
    if (type.rfind("INT", 0) == 0 || type.rfind("UINT", 0) == 0) whole_number(opt, 0, INT_MAX);
    else if (type.rfind("FLOAT", 0) == 0 || type.rfind("NUMBER", 0) == 0) real_number(opt, -kAnyNumber, kAnyNumber);
  }
}

void add_model_options(CLI::App* sub, CommonOptions& o) {
  sub->add_option("--model", o.model,
                  "Model bundle directory (default: $CNCLIP_MODEL, else "
                  "${XDG_DATA_HOME:-~/.local/share}/cnclip/models/default)");
  sub->add_option("--device", o.device, "cpu or cuda[:N]")->capture_default_str();
  whole_number(sub->add_option("--threads", o.threads, "Compute threads (0 = all cores)")->capture_default_str(), 0,
               kMaxThreads);
}

void add_index_option(CLI::App* sub, CommonOptions& o) {
  sub->add_option("--index", o.index,
                  "Index directory (default: $CNCLIP_INDEX, else "
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
  // From one pixel (below it the limit rounds to 0 and refuses every image) to 10^12 pixels (exact in
  // the double the decoders compare header sizes in).
  real_number(sub->add_option("--max-pixels", o.max_megapixels, "Refuse images larger than this many megapixels")
                  ->capture_default_str(),
              kMinMegapixels, 1e6);
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
  d.raw_preview_min_side = 2 * input_size;  // RAW: the embedded preview when it is this large
  d.apply_exif_orientation = !o.ignore_exif;
  d.max_pixels = std::llround(o.max_megapixels * 1e6);  // 0.000001 * 1e6 may be 0.99999...
  return d;
}

std::vector<std::string> expand_stdin(const std::vector<std::string>& args, bool null_separated) {
  std::vector<std::string> out;
  for (const auto& a : args) {
    if (a != "-") {
      out.push_back(a);
      continue;
    }
    ItemReader reader(std::cin, null_separated);
    std::string item;
    while (reader.next(item)) out.push_back(item);
  }
  return out;
}

void add_null_input_option(CLI::App* sub, CommonOptions& o, const std::string& what) {
  sub->add_flag("-0,--null", o.null_input,
                "With '-': " + what + " on stdin end with NUL, not newline (find -print0; names may hold newlines)");
}

bool stdout_is_terminal() { return ::isatty(STDOUT_FILENO) == 1; }
bool stderr_is_terminal() { return ::isatty(user_stderr_fd()) == 1; }

// Messages name files, and file names can hold control characters: escaped, so that a name never
// drives the terminal or splits a message over lines.
int interrupted_status() {
  const int sig = interrupt_signal();
  return sig > 0 ? 128 + sig : 130;
}

namespace {
char** g_restart_argv = nullptr;
}  // namespace

void set_restart_argv(char** argv) { g_restart_argv = argv; }

void restart_before_local_model() {
  if (!g_restart_argv || !runtime_restart_wanted()) return;
  // The new process must find the user's stderr on fd 2, not the capture's pipe, and no thread of
  // ours may run while the environment changes: the capture (and its reader thread) ends first.
  release_library_stderr();
  restart_with_runtime_environment(g_restart_argv);
  capture_library_stderr();  // the exec failed: go on with the runtimes as they are
}

void print_error(const std::string& message) { std::cerr << "cnclip: error: " << terminal_safe(message) << std::endl; }
void print_warning(const std::string& message) {
  std::cerr << "cnclip: warning: " << terminal_safe(message) << std::endl;
}

}  // namespace cnclip::cli
