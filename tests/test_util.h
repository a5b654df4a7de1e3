// Helpers shared by the tests: fixture paths, temporary directories, running the cnclip binary.
#pragma once

#include <set>
#include <string>
#include <vector>

namespace cnclip::test {

std::string fixtures(const std::string& rel);  // ../shared/fixtures/<rel>
std::string tiny_bundle();                     // exported from the fixture checkpoint by ctest
std::string random_tiny_bundle();              // another tiny model (other weights)
std::string tiny_int8_bundle();                // the fixture checkpoint exported as int8

// A fresh directory, removed when the object goes away.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;  // the exit status, or 128 + the signal that ended the process
  std::string out, err;
};
// How run_cnclip starts the binary, besides its arguments.
struct RunOptions {
  std::string stdin_text;            // what the process reads on stdin (a file, so EOF comes after it)
  std::vector<std::string> env;      // "NAME=value": set in the process's environment (over ours)
  std::string cwd;                   // its working directory ("": ours)
  std::vector<std::string> through;  // a program that runs it, e.g. {"runuser", "-u", "nobody", "--"}
};
// Runs the cnclip binary with `args` as its arguments, each one argument as it is (no shell: no
// quoting, and no word of a path is ever split or expanded), and waits for it. stdout and stderr
// are collected in files (this process's user opens them, also when `through` changes the user).
RunResult run_cnclip(const std::vector<std::string>& args, const std::string& stdin_text = "");
RunResult run_cnclip(const std::vector<std::string>& args, const RunOptions& options);
// `a` with `b` appended: a command's own arguments and common ones (--model, --index).
std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b);
// For the tests that do need a shell (pipelines, redirections to /dev/full, script(1), fifos).
std::string shell_quote(const std::string& s);
// Percent-encodes everything but RFC 3986 unreserved characters (for URL query values).
std::string url_encode(const std::string& s);

std::string read_text(const std::string& path);
// The page size in a SQLite file's header (bytes 16-17, big-endian; 1 means 65536).
int sqlite_page_size(const std::string& path);
void write_text(const std::string& path, const std::string& text);
void copy_file(const std::string& from, const std::string& to);
std::vector<std::string> lines(const std::string& text);

// The largest |a[i] - b[i]|; vectors of different sizes are a test failure.
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b);
// Each row of `dim` values scaled to unit length (in double), as the towers' outputs are.
std::vector<float> normalized_rows(std::vector<float> v, size_t dim);
// The paths of the files an index holds (opened read-only).
std::set<std::string> indexed_paths(const std::string& index_dir);

}  // namespace cnclip::test
