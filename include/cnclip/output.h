// How results are printed: machine formats (JSON, JSONL, paths) on stdout, stable and documented in
// the README; a table for people at a terminal. Also the checked standard output every command
// writes through, and the escaping of text shown on a terminal.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "cnclip/error.h"
#include "cnclip/search.h"

namespace cnclip {

enum class OutputFormat { kTable, kJson, kJsonl, kPaths };

// "table", "json", "jsonl", "paths", or "auto"/"" (table on a terminal, jsonl otherwise).
// Throws Exception(kInvalidArgument) for anything else.
OutputFormat parse_output_format(const std::string& name, bool stdout_is_terminal);

struct PrintOptions {
  // paths: end each path with NUL instead of a newline (and separate queries with an empty record).
  bool null_separated = false;
  // The output is a terminal: paths and table escape control characters (see terminal_safe).
  // Machine output that goes to a pipe or a file is never escaped.
  bool terminal = false;
};

// Prints the results of a call query by query, as they are answered, flushing after each query
// (so `tail -f queries | cnclip search-text -` answers each line as it comes).
//   jsonl: one {"query","rank","path","score"} object per line;
//   json:  one array of those objects for the whole call ("[" comes with the first query, "]" with
//          finish());
//   paths: one path per line (NUL-terminated with null_separated); with several queries, an empty
//          line (an empty record) separates one query's paths from the next query's;
//   table: a block per query, blank lines between blocks, scores right-aligned.
// Scores have exactly six decimals in every format (0.312000, 1.000000, -0.041000). A path or query
// that is not valid UTF-8 appears in JSON with U+FFFD for each bad byte, followed by "path_bytes" /
// "query_bytes": the exact bytes in lower-case hex (see set_string_field).
// Throws Exception(kIoError) when a write fails (StdoutClosed when stdout is a closed pipe).
// Not thread-safe; `out` must outlive the printer.
class ResultPrinter {
 public:
  ResultPrinter(std::ostream& out, OutputFormat format, PrintOptions options = {});
  void print(const QueryResult& result);
  // A query that could not be answered (its error was reported elsewhere): in `paths` it still takes
  // its place (an empty block), so blocks stay in step with the queries given; elsewhere nothing.
  void skip(const std::string& query);
  // Ends the output (closes the json array; an empty call prints "[]").
  void finish();

 private:
  std::ostream& out_;
  OutputFormat format_;
  PrintOptions options_;
  size_t blocks_ = 0, hits_ = 0;
  bool finished_ = false;
};

// All results of a call at once, through a ResultPrinter.
void print_results(std::ostream& out, const std::vector<QueryResult>& results, OutputFormat format,
                   PrintOptions options = {});

// One search hit as a JSON object, fields in the documented order, score with six decimals.
std::string hit_json(const std::string& query, const RankedHit& hit);

// Compact JSON text; invalid UTF-8 (possible in file names) becomes U+FFFD instead of an error.
// Objects printed for users and scripts are ordered_json, so fields come in the documented order.
std::string dump_json(const nlohmann::ordered_json& value);

// Sets j[key] = value. When value is not valid UTF-8 (file names are bytes), JSON cannot hold it: the
// printed string then has U+FFFD for each bad byte, and j[key + "_bytes"] = the exact bytes in
// lower-case hex ("2f746d702fff"), so a program can recover the name. Valid UTF-8 gets no _bytes field.
void set_string_field(nlohmann::ordered_json& j, const std::string& key, const std::string& value);
// The reverse, for readers of that output (import): the bytes of j[key + "_bytes"] when present (it
// must be an even-length lower- or upper-case hex string), else the string j[key]. Throws
// Exception(kCorrupt) when the field is missing, not a string, or the hex is malformed.
std::string get_string_field(const nlohmann::json& j, const std::string& key);
std::string hex_encode(std::string_view bytes);  // lower-case, two digits per byte

// Text made safe to show on a terminal, on one line: C0 controls, DEL, C1 controls (U+0080..U+009F),
// line/paragraph separators and bidirectional overrides become escapes (\n, \t, \r, \xNN, \uNNNN),
// a backslash becomes "\\", bytes that are not valid UTF-8 become \xNN. Everything else (Chinese,
// spaces, emoji) is unchanged. Used for stderr messages and for `table` / `paths` on a terminal;
// never for machine output. Thread-safe.
std::string terminal_safe(std::string_view text);

// --- Checked standard output ----------------------------------------------------------------
// Thrown (by the functions below and ResultPrinter) when stdout is a pipe whose reader went away
// (EPIPE, seen when SIGPIPE is ignored). The command should end quietly, as SIGPIPE would end it.
class StdoutClosed : public Exception {
 public:
  StdoutClosed() : Exception(ErrorCode::kIoError, "standard output: the reader went away (broken pipe)") {}
};

// Makes std::cout write through a buffer of its own to file descriptor 1 that remembers the first
// failed write (a full disk, /dev/full, a closed pipe, an I/O error). Call once at the start of main,
// before anything is printed; not thread-safe.
void install_checked_stdout();
// Flushes std::cout and throws if any write to stdout failed: Exception(kIoError,
// "standard output: write failed: No space left on device"), or StdoutClosed.
void flush_stdout();
// Throws as flush_stdout does when an earlier write already failed, without flushing (cheap: for
// loops that print a line per item, so they stop early).
void check_stdout();

}  // namespace cnclip
