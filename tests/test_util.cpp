#include "test_util.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "cnclip/index_store.h"

namespace cnclip::test {

std::string fixtures(const std::string& rel) { return std::string(CNCLIP_FIXTURES_DIR) + "/" + rel; }
std::string tiny_bundle() { return std::string(CNCLIP_TEST_DATA) + "/tiny"; }
std::string random_tiny_bundle() { return std::string(CNCLIP_TEST_DATA) + "/tiny-random"; }
std::string tiny_int8_bundle() { return std::string(CNCLIP_TEST_DATA) + "/tiny-int8"; }

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "cnclip-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}
TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

int sqlite_page_size(const std::string& path) {
  const std::string head = read_text(path).substr(0, 100);
  const int v = (static_cast<uint8_t>(head.at(16)) << 8) | static_cast<uint8_t>(head.at(17));
  return v == 1 ? 65536 : v;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

void copy_file(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

RunResult run_cnclip(const std::vector<std::string>& args, const std::string& stdin_text) {
  RunOptions options;
  options.stdin_text = stdin_text;
  return run_cnclip(args, options);
}

RunResult run_cnclip(const std::vector<std::string>& args, const RunOptions& options) {
  TempDir io;
  write_text(io / "in", options.stdin_text);
  std::vector<std::string> all = options.through;
  all.push_back(CNCLIP_BINARY);
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> child_argv;
  for (auto& a : all) child_argv.push_back(a.data());
  child_argv.push_back(nullptr);
  // The environment: ours, with options.env's names replaced.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    const bool replaced = std::any_of(options.env.begin(), options.env.end(),
                                      [&](const std::string& o) { return o.substr(0, o.find('=')) == name; });
    if (!replaced) env_strings.push_back(entry);
  }
  env_strings.insert(env_strings.end(), options.env.begin(), options.env.end());
  std::vector<char*> child_env;
  for (auto& e : env_strings) child_env.push_back(e.data());
  child_env.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  const std::string in = io / "in", out = io / "out", err = io / "err";
  posix_spawn_file_actions_addopen(&actions, 0, in.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (!options.cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, options.cwd.c_str());
  pid_t pid = -1;
  // posix_spawnp: a `through` program is looked up in PATH (the binary's path is absolute).
  const int rc = ::posix_spawnp(&pid, child_argv[0], &actions, nullptr, child_argv.data(), child_env.data());
  posix_spawn_file_actions_destroy(&actions);
  RunResult r;
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << all[0] << ": " << std::strerror(rc);
    return r;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

std::vector<std::string> concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string url_encode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<float> normalized_rows(std::vector<float> v, size_t dim) {
  for (size_t r = 0; r < v.size() / dim; ++r) {
    double n = 0;
    for (size_t i = 0; i < dim; ++i) n += double(v[r * dim + i]) * v[r * dim + i];
    for (size_t i = 0; i < dim; ++i) v[r * dim + i] = static_cast<float>(v[r * dim + i] / std::sqrt(n));
  }
  return v;
}

std::set<std::string> indexed_paths(const std::string& index_dir) {
  auto store = IndexStore::open(index_dir, IndexAccess::kRead);
  std::set<std::string> out;
  for (const auto& f : store->catalog().files_under("")) out.insert(f.path);
  return out;
}

}  // namespace cnclip::test
