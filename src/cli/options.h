// Options shared by several subcommands, and small terminal helpers. Only argument plumbing lives
// in src/cli; all behaviour is in the library.
#pragma once

#include <CLI/CLI.hpp>

#include <climits>
#include <memory>
#include <string>
#include <vector>

#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip::cli {

struct CommonOptions {
  std::string model;  // --model (else CNCLIP_MODEL, else the default location)
  std::string index;  // --index (else CNCLIP_INDEX, else the default location)
  std::string device = "cpu";
  int threads = 0;
  std::string format;  // "" = auto
  bool quiet = false;
  bool mixed_precision = false;
  // image decoding
  bool ignore_exif = false;
  bool full_decode = false;
  double max_megapixels = 100;
  // -0/--null of the commands whose '-' reads a list from stdin (index, remove, embed-image, embed-text)
  bool null_input = false;
};

// The most threads (--threads, --jobs) a command accepts: more is a typing mistake, not a machine.
constexpr int kMaxThreads = 1024;

// Checks for option values that answer in plain sentences, naming the option and what it accepts
// ("--jobs: expects a whole number from 0 to 1024, not '-1'"). Each returns `opt` for chaining and
// records what the option accepts (accepted_values) for the other usage messages. Whole numbers
// accept only digits with an optional '-'; numbers also decimals and exponents, never nan or inf.
CLI::Option* whole_number(CLI::Option* opt, long long min, long long max);
CLI::Option* real_number(CLI::Option* opt, double min, double max, bool min_exclusive = false);
CLI::Option* one_of(CLI::Option* opt, const std::vector<std::string>& choices);
// Image-file arguments: a folder is a usage error naming it ("-" and other paths pass).
CLI::Option* image_files(CLI::Option* opt);
// The check image_files makes: "" when `path` may be an image, else the message saying it is a folder.
std::string folder_given_as_image(const std::string& path);
// What `opt` accepts in words ("a whole number from 1 to 1024"), or "" when no check above set it.
std::string accepted_values(const CLI::Option* opt);
// Gives every numeric option of every subcommand of `app` that has none of the checks above a
// default one: a whole number from 0 to 2^31-1, or a finite number. Call once, after registering.
void check_unchecked_numbers(CLI::App& app);

// Added to each subcommand that uses them, so they work after the subcommand name (git style).
void add_model_options(CLI::App* sub, CommonOptions& o);
void add_index_option(CLI::App* sub, CommonOptions& o);
void add_mixed_precision_option(CLI::App* sub, CommonOptions& o);  // commands that use a model on an index
void add_decode_options(CLI::App* sub, CommonOptions& o);

// `many_calls`: the command will call the model many times (see ModelOptions).
std::unique_ptr<Model> open_model(const CommonOptions& o, bool many_calls = false);
// Decoding options for a model whose input side is `input_size`.
DecodeOptions decode_options(const CommonOptions& o, int input_size);

// Arguments, where a single "-" means: read one item per line from stdin.
std::vector<std::string> expand_stdin(const std::vector<std::string>& args, bool null_separated);
// -0/--null for a command whose '-' reads a list of `what` ("paths") from stdin.
void add_null_input_option(CLI::App* sub, CommonOptions& o, const std::string& what);

bool stdout_is_terminal();
bool stderr_is_terminal();
void print_error(const std::string& message);    // "cnclip: error: ..." to stderr
void print_warning(const std::string& message);  // "cnclip: warning: ..." to stderr
// The exit status of a command the user interrupted, after what was committed is kept: 128 + the
// signal, as a shell reports a process that signal ended (130 Ctrl-C, 143 SIGTERM; 130 otherwise).
int interrupted_status();

// Model commands run with a short OpenMP spin and malloc settings for tensors: main restarts the
// process once with them before parsing (restart_with_runtime_environment, runtime.h), except
// search-text and search-image, whose queries usually go to a running `cnclip serve` and need no
// model. They call
// restart_before_local_model() once they know they answer here, before reading stdin or printing;
// a restart costs ~25 ms, a routed query ~150 ms in all (README, Performance).
void set_restart_argv(char** argv);
void restart_before_local_model();

// The subcommands; each registers itself and sets `action` when chosen.
using Action = std::function<int()>;
void register_model_commands(CLI::App& app, CommonOptions& o, Action& action);
void register_index_commands(CLI::App& app, CommonOptions& o, Action& action);
void register_search_commands(CLI::App& app, CommonOptions& o, Action& action);
void register_repair_commands(CLI::App& app, CommonOptions& o, Action& action);
void register_serve_command(CLI::App& app, CommonOptions& o, Action& action);
void register_eval_command(CLI::App& app, CommonOptions& o, Action& action);
void register_classify_command(CLI::App& app, CommonOptions& o, Action& action);
void register_dups_command(CLI::App& app, CommonOptions& o, Action& action);

}  // namespace cnclip::cli
