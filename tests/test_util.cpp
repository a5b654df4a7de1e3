#include "test_util.h"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
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

RunResult run_cnclip(const std::string& args, const std::string& stdin_text) {
  return run_cnclip_as("", args, stdin_text);
}

RunResult run_cnclip_as(const std::string& prefix, const std::string& args, const std::string& stdin_text) {
  TempDir io;
  write_text(io / "in", stdin_text);
  const std::string cmd = (prefix.empty() ? "" : prefix + " ") + std::string(CNCLIP_BINARY) + " " + args + " < " +
                          shell_quote(io / "in") + " > " + shell_quote(io / "out") + " 2> " + shell_quote(io / "err");
  const int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(io / "out");
  r.err = read_text(io / "err");
  return r;
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
