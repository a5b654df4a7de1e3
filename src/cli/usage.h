// What cnclip says when its command line is wrong: one plain line naming the argument and what to do
// ("unknown command 'serach-text'; did you mean 'search-text'?"), never the parser's own wording.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>

namespace cnclip::cli {

// Handles what comes before a subcommand, where CLI11 would only say "A subcommand is required":
// no arguments (short usage on stderr, 2), `help [COMMAND]` (help on stdout, 0), an unknown command
// (a suggestion, 2), options before the command (the corrected command line, 2). Returns the exit
// status when it handled the call, nullopt when `app` should parse it.
std::optional<int> handle_before_subcommand(const CLI::App& app, int argc, char** argv);

// The one-line message for a parse failure of `app` (after app.parse threw `e`), without the
// "cnclip: error: " prefix, ending with where to look for help.
std::string explain_parse_error(const CLI::App& app, const CLI::ParseError& e);

// Optimal string alignment distance (Levenshtein with transpositions), for suggestions.
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace cnclip::cli
