// cnclip: find photos by Chinese text or by example image. This file only parses arguments and
// dispatches to the subcommands; see include/cnclip/ for the library.
#include <csignal>
#include <cstring>
#include <iostream>

#include "cnclip/error.h"
#include "cnclip/output.h"
#include "cnclip/runtime.h"
#include "options.h"
#include "usage.h"

int main(int argc, char** argv) {
  using namespace cnclip;
  // A write past the file size limit (ulimit -f) fails with EFBIG and is said in one line naming the
  // limit (error.h), instead of SIGXFSZ ending the process with no word and a file half-written.
  std::signal(SIGXFSZ, SIG_IGN);
  // Commands that run the model: started again with a short OpenMP spin and malloc settings that
  // keep the tensors' memory, each unless the user set it (runtime.h). The others do not pay for a second start;
  // search-text and search-image restart only when they answer without a server (options.h).
  cli::set_restart_argv(argv);
  if (argc > 1) {
    static const char* const kModelCommands[] = {"index", "embed-text", "embed-image", "serve", "eval", "classify"};
    for (const char* c : kModelCommands) {
      if (std::strcmp(argv[1], c) == 0) restart_with_runtime_environment(argv);
    }
  }
  CLI::App app{"cnclip: find photos by Chinese text or by example image (Chinese-CLIP)", "cnclip"};
  app.set_version_flag("-V,--version", std::string("cnclip ") + CNCLIP_VERSION);
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  cnclip index ./photos\n"
      "  cnclip search-text \"夕阳、大海、沙滩\"\n"
      "  cnclip search-image query.jpg\n"
      "  cnclip search-text 小狗 --format jsonl | jq -r .path\n\n"
      "'cnclip COMMAND --help' or 'cnclip help COMMAND' shows what a command takes; options go after it.\n"
      "Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted (143 by SIGTERM).");
  install_checked_stdout();  // before anything is printed, --help included
  cli::CommonOptions options;
  cli::Action action;
  cli::register_model_commands(app, options, action);
  cli::register_index_commands(app, options, action);
  cli::register_search_commands(app, options, action);
  cli::register_repair_commands(app, options, action);
  cli::register_serve_command(app, options, action);
  cli::register_eval_command(app, options, action);
  cli::register_classify_command(app, options, action);
  cli::register_dups_command(app, options, action);
  cli::check_unchecked_numbers(app);

  // Whatever a command printed must have reached stdout: a failed write (a full disk, /dev/full) is a
  // failure, exit 1; a reader that went away (EPIPE with SIGPIPE ignored) ends quietly, as SIGPIPE
  // would end the process (the shell shows 141).
  auto finish = [](int status) {
    try {
      flush_stdout();
    } catch (const StdoutClosed&) {
      return status == 0 ? 128 + SIGPIPE : status;
    } catch (const Exception& e) {
      if (status != 0) return status;  // the command failed already (most likely on this very write)
      cli::print_error(e.what());
      return 1;
    }
    return status;
  };
  // `cnclip help [COMMAND]` and the answers to a mistyped command print before any parsing.
  if (auto status = cli::handle_before_subcommand(app, argc, argv)) return finish(*status);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return finish(app.exit(e));
  } catch (const CLI::CallForAllHelp& e) {
    return finish(app.exit(e));
  } catch (const CLI::CallForVersion& e) {
    return finish(app.exit(e));
  } catch (const CLI::ParseError& e) {
    cli::print_error(cli::explain_parse_error(app, e));
    return 2;
  }
  capture_library_stderr();
  int status = 1;
  try {
    status = action ? action() : 2;
  } catch (const StdoutClosed&) {
    status = 128 + SIGPIPE;
  } catch (const Exception& e) {
    cli::print_error(e.what());
    status = e.code() == ErrorCode::kInvalidArgument ? 2
             : e.code() == ErrorCode::kInterrupted   ? cli::interrupted_status()
                                                     : 1;
  } catch (const std::exception& e) {
    cli::print_error(std::string("unexpected failure: ") + e.what());
  }
  status = finish(status);
  release_library_stderr();
  return status;
}
