// LibTorch is loaded only when a model runs: the cnclip binary does not link it, and the model module
// (libcnclip_model.so) is dlopened by the first command step that encodes. Checked on the real binary
// with the dynamic linker's own log (LD_DEBUG=files), which lists every shared object a process maps;
// each check also asserts that the log is there, so a run without it cannot pass.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;

struct Traced {
  test::RunResult run;
  std::string linker_log;  // what ld.so printed: one "file=NAME ..." line per object it loaded
};

Traced traced(const std::vector<std::string>& args, const std::string& stdin_text = "") {
  test::TempDir log;
  Traced t;
  test::RunOptions options;
  options.stdin_text = stdin_text;
  options.env = {"LD_DEBUG=files", "LD_DEBUG_OUTPUT=" + (log / "ld")};
  t.run = test::run_cnclip(args, options);
  for (const auto& e : fs::directory_iterator(log.path())) t.linker_log += test::read_text(e.path().string());
  return t;
}

bool mentions(const std::string& log, const std::string& what) { return log.find(what) != std::string::npos; }

// A small real index: two photos indexed with the tiny model.
class LazyLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(photos);
    test::copy_file(test::fixtures("images/pokemon.jpeg"), photos + "/pokemon.jpeg");
    test::copy_file(test::fixtures("images/chelsea_rgba.png"), photos + "/chelsea.png");
    auto r = test::run_cnclip(test::concat({"index", "-q", photos}, common()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::vector<std::string> idx() const { return {"--index", dir / "idx"}; }
  std::vector<std::string> model() const { return {"--model", test::tiny_bundle()}; }
  std::vector<std::string> common() const { return test::concat(idx(), model()); }
  int64_t files_indexed() const {
    const auto r = test::run_cnclip(test::concat({"info", "--format", "json"}, idx()));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out).at("files").get<int64_t>();
  }
  // Neither LibTorch nor, unless the command reads images, OpenCV's image codecs (and the ~110
  // libraries they bring) are loaded.
  void expect_no_libtorch(const std::vector<std::string>& args, int exit_code, const std::string& stdin_text = "",
                          bool decodes_images = false) {
    SCOPED_TRACE("cnclip " + args[0]);
    const auto t = traced(args, stdin_text);
    EXPECT_EQ(t.run.exit_code, exit_code) << t.run.err;
    ASSERT_TRUE(mentions(t.linker_log, "libc.so.6")) << "no dynamic linker log: " << t.linker_log.substr(0, 300);
    EXPECT_FALSE(mentions(t.linker_log, "libtorch")) << "LibTorch was loaded";
    EXPECT_FALSE(mentions(t.linker_log, "libc10")) << "LibTorch was loaded";
    EXPECT_FALSE(mentions(t.linker_log, "libcnclip_model")) << "the model module was loaded";
    EXPECT_EQ(mentions(t.linker_log, "libopencv_imgcodecs"), decodes_images) << "image codecs loaded or not";
  }
  void expect_libtorch(const std::vector<std::string>& args, const std::string& stdin_text = "") {
    SCOPED_TRACE("cnclip " + args[0]);
    const auto t = traced(args, stdin_text);
    EXPECT_EQ(t.run.exit_code, 0) << t.run.err;
    EXPECT_TRUE(mentions(t.linker_log, "libcnclip_model.so")) << "the model module was not loaded";
    EXPECT_TRUE(mentions(t.linker_log, "libtorch_cpu.so")) << "LibTorch was not loaded";
  }

  test::TempDir dir;
  std::string photos = dir / "photos";
};

TEST_F(LazyLoad, CommandsThatDoNotEncodeNeverLoadLibTorch) {
  const std::string bundle = test::tiny_bundle();
  expect_no_libtorch({"--version"}, 0);
  expect_no_libtorch({"--help"}, 0);
  expect_no_libtorch({"help", "search-text"}, 0);
  expect_no_libtorch({"search-text"}, 2);                             // usage error: no query
  expect_no_libtorch({"search-text", "猫", "--top-k-typo", "3"}, 2);  // usage error: unknown option
  expect_no_libtorch(test::concat({"info"}, idx()), 0);
  expect_no_libtorch(test::concat({"info", "--format", "json"}, idx()), 0);
  expect_no_libtorch({"tokenize", "夕阳、大海、沙滩", "--model", bundle}, 0);
  expect_no_libtorch({"tokenize", "-", "--model", bundle}, 0, "小狗\nhello\n");
  expect_no_libtorch({"model-info", "--verify", "--model", bundle}, 0);
  expect_no_libtorch({"preprocess", photos + "/pokemon.jpeg", "--npy", dir / "p.npy", "--model", bundle}, 0, "",
                     /*decodes_images=*/true);
  // Unchanged files need no encoding, and an indexed, unchanged example image has its embedding.
  expect_no_libtorch(test::concat({"index", "-q", photos}, common()), 0);
  expect_no_libtorch(test::concat({"search-image", photos + "/pokemon.jpeg", "-k", "1"}, common()), 0);
  expect_no_libtorch(test::concat({"repair"}, idx()), 0);
  expect_no_libtorch(test::concat({"remove", photos + "/chelsea.png"}, idx()), 0);
  EXPECT_EQ(files_indexed(), 1);  // remove did remove
}

TEST_F(LazyLoad, CommandsThatEncodeLoadTheModule) {
  expect_libtorch(test::concat({"search-text", "猫", "-k", "1"}, common()));
  expect_libtorch(test::concat({"embed-text", "猫"}, model()));
  expect_libtorch(test::concat({"search-image", test::fixtures("images/astronaut_palette.png"), "-k", "1"}, common()));
}

// A module that cannot be used: one line naming it and why, exit 1, nothing printed on stdout, and
// nothing indexed lost.
TEST_F(LazyLoad, UnusableModuleIsOneClearErrorAndExit1) {
  const std::string missing = dir / "nowhere/libcnclip_model.so";
  const std::string not_elf = dir / "text.so";
  test::write_text(not_elf, "not a shared library\n");
  const std::string other_library = "/lib/x86_64-linux-gnu/libz.so.1";  // a real library, not a module
  struct Case {
    std::string module, why;
  };
  const std::vector<Case> cases{
      {missing, "cannot open shared object file: No such file or directory"},
      {not_elf, "file too short"},
      {other_library, "not a cnclip model module (undefined symbol: cnclip_model_module_abi1)"},
      {CNCLIP_FOREIGN_MODULE, "built for cnclip 0.0.1-foreign, module ABI 2"}};
  test::copy_file(test::fixtures("images/astronaut_palette.png"), photos + "/new.png");
  for (const auto& c : cases) {
    for (const auto& args : std::vector<std::vector<std::string>>{test::concat({"search-text", "猫"}, common()),
                                                                  test::concat({"embed-text", "猫"}, model()),
                                                                  test::concat({"index", "-q", photos}, common())}) {
      SCOPED_TRACE(c.module + ": cnclip " + args[0]);
      test::RunOptions with_module;
      with_module.env = {"CNCLIP_MODEL_MODULE=" + c.module};
      const auto r = test::run_cnclip(args, with_module);
      EXPECT_EQ(r.exit_code, 1) << r.err;
      EXPECT_EQ(r.out, "");
      const auto err = test::lines(r.err);
      ASSERT_EQ(err.size(), 1u) << r.err;
      EXPECT_NE(err[0].find("cannot load the model module " + c.module + ": "), std::string::npos) << err[0];
      EXPECT_NE(err[0].find(c.why), std::string::npos) << err[0];
    }
  }
  // The failed index runs stored nothing and lost nothing: the two photos, and the new one once the
  // module is there.
  EXPECT_EQ(files_indexed(), 2);
  auto r = test::run_cnclip(test::concat({"index", "-q", photos}, common()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(files_indexed(), 3);
}

}  // namespace
}  // namespace cnclip
