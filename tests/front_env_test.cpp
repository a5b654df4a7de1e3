// Where the index and the default model live: the XDG Base Directory rule (an absolute
// XDG_DATA_HOME, else $HOME/.local/share; relative values ignored), and a clear usage error when no
// place can be derived, never a folder made under the current directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/runtime.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;

// Sets (or, with nullopt, unsets) an environment variable for the scope; the cnclip child inherits it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value->c_str(), 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

class ScopedCwd {
 public:
  explicit ScopedCwd(const std::string& dir) : old_(fs::current_path()) { fs::current_path(dir); }
  ~ScopedCwd() { fs::current_path(old_); }

 private:
  fs::path old_;
};

std::string embedding_line(const std::string& path) {
  return nlohmann::json{{"path", path}, {"embedding", std::vector<float>(32, 0.1f)}}.dump() + "\n";
}

TEST(FrontEnv, NoHomeAndNoXdgIsAClearUsageError) {
  test::TempDir cwd;
  ScopedCwd in(cwd.path());
  ScopedEnv cnclip_index("CNCLIP_INDEX", std::nullopt), cnclip_model("CNCLIP_MODEL", std::nullopt);
  for (std::optional<std::string> home : {std::optional<std::string>(), std::optional<std::string>("")}) {
    ScopedEnv h("HOME", home), x("XDG_DATA_HOME", std::nullopt);
    auto r = test::run_cnclip({"info"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err,
              "cnclip: error: cannot find a place for the index: HOME is not set; give --index DIR or set "
              "CNCLIP_INDEX\n");
    r = test::run_cnclip({"embed-text", "狗"});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err, "cnclip: error: cannot find the model: HOME is not set; give --model DIR or set CNCLIP_MODEL\n");
  }
  {
    ScopedEnv h("HOME", std::string("relative/home")), x("XDG_DATA_HOME", std::string("data"));
    auto r = test::run_cnclip({"search-text", "狗", "--model", test::tiny_bundle()});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err,
              "cnclip: error: cannot find a place for the index: HOME is not an absolute path "
              "('relative/home'), and XDG_DATA_HOME is not an absolute path ('data'); give --index DIR or set "
              "CNCLIP_INDEX\n");
  }
  // Nothing was made under the current directory.
  EXPECT_TRUE(fs::is_empty(cwd.path()));
}

TEST(FrontEnv, RelativeXdgDataHomeIsIgnoredAbsoluteIsUsed) {
  test::TempDir home, cwd, xdg;
  test::write_text(cwd / "e.jsonl", embedding_line("/remote/a.jpg"));
  ScopedCwd in(cwd.path());
  ScopedEnv cnclip_index("CNCLIP_INDEX", std::nullopt), h("HOME", home.path());
  {
    ScopedEnv x("XDG_DATA_HOME", std::string("rel"));
    auto r = test::run_cnclip({"import", "e.jsonl", "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(home / ".local/share/cnclip/catalog.sqlite3"));
    EXPECT_FALSE(fs::exists(cwd / "rel"));
    r = test::run_cnclip({"info", "--format", "json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["index"], home / ".local/share/cnclip");
  }
  {
    ScopedEnv x("XDG_DATA_HOME", xdg.path());
    auto r = test::run_cnclip({"import", "e.jsonl", "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(xdg / "cnclip/catalog.sqlite3"));
    // The default model is looked for there too.
    r = test::run_cnclip({"embed-text", "狗"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find(xdg / "cnclip/models/default"), std::string::npos) << r.err;
  }
  {
    // With no HOME, CNCLIP_INDEX and --model still work.
    ScopedEnv nh("HOME", std::nullopt), x("XDG_DATA_HOME", std::nullopt), i("CNCLIP_INDEX", cwd / "idx");
    auto r = test::run_cnclip({"import", "e.jsonl", "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(fs::exists(cwd / "idx/catalog.sqlite3"));
  }
}

TEST(FrontEnv, XdgDataHomeFollowsTheSpecification) {
  ScopedEnv h("HOME", std::string("/home/someone"));
  {
    ScopedEnv x("XDG_DATA_HOME", std::string("/data"));
    EXPECT_EQ(xdg_data_home().value(), "/data");
  }
  for (const char* ignored : {"", "data", "./data", "~/data"}) {
    ScopedEnv x("XDG_DATA_HOME", std::string(ignored));
    EXPECT_EQ(xdg_data_home().value(), "/home/someone/.local/share") << ignored;
  }
  ScopedEnv nh("HOME", std::nullopt), nx("XDG_DATA_HOME", std::nullopt);
  auto none = xdg_data_home();
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(none.error().message, "HOME is not set");
}

}  // namespace
}  // namespace cnclip
