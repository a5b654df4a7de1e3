// Routing: search-text and search-image sent to a running `cnclip serve` (include/cnclip/route.h).
// Every query is run routed and with --no-server, and the two must print the same bytes and exit
// with the same status; the advert's rules (stale, another model or index, permissions) and the
// fall-back to local answers when the server fails are checked against real and fake servers.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cnclip/bundle.h"
#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"
#include "cnclip/info.h"
#include "cnclip/output.h"
#include "cnclip/remove.h"
#include "cnclip/route.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
using test::shell_quote;
using test::TempDir;

// `cnclip serve --port 0 ARGS` in the background until destroyed (SIGTERM; kill() for SIGKILL).
class ServeProcess {
 public:
  explicit ServeProcess(const std::string& args) {
    err_path_ = dir_ / "stderr";
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string cmd = std::string("exec ") + CNCLIP_BINARY + " serve --port 0 " + args + " 2> " +
                              shell_quote(err_path_) + " > /dev/null < /dev/null";
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 600; ++i) {
      if (err().find("listening on http://") != std::string::npos) return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServeProcess() { stop(); }
  bool running() const { return pid_ > 0; }
  std::string err() const { return test::read_text(err_path_); }
  void stop(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int status = 0;
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  TempDir dir_;
  std::string err_path_;
  pid_t pid_ = -1;
};

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// Without the debug lines routing adds (CNCLIP_ROUTE_DEBUG).
std::string without_route_lines(const std::string& err) {
  std::string out;
  for (const auto& l : test::lines(err)) {
    if (l.rfind("cnclip: route: ", 0) != 0) out += l + "\n";
  }
  return out;
}

class Route : public ::testing::Test {
 protected:
  void SetUp() override {
    photos_ = tmp_ / "photos";
    index_ = tmp_ / "index";
    outside_ = tmp_ / "outside";
    ::mkdir(photos_.c_str(), 0755);
    ::mkdir(outside_.c_str(), 0755);
    for (const char* f : {"astronaut_palette.png", "camera_gray_1000x100.png", "chelsea_rgba.png",
                          "coffee_2048x1366_exif6.jpg", "pokemon.jpeg"}) {
      test::copy_file(test::fixtures(std::string("images/") + f), photos_ + "/" + f);
    }
    // A file name that is not UTF-8.
    test::copy_file(test::fixtures("images/rocket_rgb16_17x9.png"), photos_ + "/rocket-\xff\xfe.png");
    auto r = test::run_cnclip(test::concat({"index", "-q", photos_}, common_args()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    // Not indexed: encoded by the server's image tower.
    test::copy_file(test::fixtures("images/pokemon.jpeg"), outside_ + "/copy-\xe9.jpeg");
    test::write_text(outside_ + "/not-an-image.jpg", "plain text, not a JPEG");
  }
  // For ServeProcess (a shell command line) and for run_cnclip.
  std::string common() const {
    return "--model " + shell_quote(test::tiny_bundle()) + " --index " + shell_quote(index_);
  }
  std::vector<std::string> common_args() const { return {"--model", test::tiny_bundle(), "--index", index_}; }
  // cnclip ARGS... --model TINY --index IDX, with `env` ("NAME=value") and stdin.
  test::RunResult run(const std::vector<std::string>& args, const std::vector<std::string>& env = {},
                      const std::string& stdin_text = "") {
    test::RunOptions o;
    o.env = env;
    o.stdin_text = stdin_text;
    return test::run_cnclip(test::concat(args, common_args()), o);
  }
  test::RunResult run_routed(const std::vector<std::string>& args, const std::string& stdin_text = "") {
    return run(args, {"CNCLIP_ROUTE_DEBUG=1"}, stdin_text);
  }
  test::RunResult run_local(const std::vector<std::string>& args, const std::string& stdin_text = "") {
    return run(test::concat(args, {"--no-server"}), {}, stdin_text);
  }

  // Runs `args` routed (checking that the queries did go to the server) and with --no-server, and
  // expects the same stdout, stderr and exit status.
  void expect_same(const std::vector<std::string>& args, const std::string& stdin_text = "",
                   bool expect_routed = true) {
    std::string shown;
    for (const auto& a : args) shown += (shown.empty() ? "" : " ") + a;
    SCOPED_TRACE(shown);
    auto routed = run_routed(args, stdin_text);
    auto local = run_local(args, stdin_text);
    if (expect_routed) {
      EXPECT_NE(routed.err.find("cnclip: route: through the server"), std::string::npos) << routed.err;
      EXPECT_EQ(routed.err.find("cnclip: route: local"), std::string::npos) << routed.err;
    }
    EXPECT_EQ(routed.exit_code, local.exit_code) << routed.err << "\n---\n" << local.err;
    EXPECT_EQ(routed.out, local.out);
    EXPECT_EQ(without_route_lines(routed.err), local.err);
    ++compared_;
    if (local.exit_code == 0) ++succeeded_;
  }

  TempDir tmp_;
  std::string photos_, index_, outside_;
  int compared_ = 0, succeeded_ = 0;
};

// Split in four so that each stays well within the per-test time limit on a loaded machine (each
// command runs twice, and each run loads LibTorch until the model loads on demand).
TEST_F(Route, TextQueriesInEveryFormatPrintWhatTheyPrintAlone) {
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  EXPECT_TRUE(is_socket(index_ + "/serve.sock"));
  EXPECT_NE(server.err().find("are answered here"), std::string::npos) << server.err();
  const std::vector<std::string> under{"--under", photos_};
  for (const std::string fmt : {"jsonl", "json", "paths", "table"}) {
    expect_same({"search-text", "小狗", "a cat on a sofa", "火箭", "-k", "3", "--format", fmt});
    expect_same(
        test::concat({"search-text", "夕阳、大海、沙滩", "-k", "100", "--threshold", "-0.05", "--format", fmt}, under));
  }
  // Several queries, stdin lines between command-line ones, NUL-separated stdin, -0 output.
  expect_same({"search-text", "猫", "-", "狗", "-k", "2"}, "一只猫\nrocket launch\n\n");
  expect_same({"search-text", "-", "-0", "--format", "paths", "-k", "2"}, std::string("小狗\0火箭\0", 14));
  // A long query (cut to the context length: the warning is printed by the client).
  expect_same({"search-text", std::string(300, 'a') + " 狗", "-k", "2"});
  EXPECT_EQ(succeeded_, compared_);
}

TEST_F(Route, TextQueryErrorsAreTheLocalOnes) {
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  expect_same({"search-text", "", "狗"});
  expect_same({"search-text", "狗", "   "});
  expect_same({"search-text", "-", "-k", "1"}, "狗\n\xff\xfe\n猫\n");  // a bad line after an answered one
  // A folder that does not exist is refused while the options are read, before any route is tried.
  expect_same({"search-text", "狗", "--under", tmp_ / "no-such-folder"}, "", false);
  expect_same({"search-text", "狗", "-k", "0"}, "", /*expect_routed=*/false);  // a usage error before anything
  EXPECT_EQ(succeeded_, 0);
}

TEST_F(Route, ImageQueriesPrintWhatTheyPrintAlone) {
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  // Indexed (stored embedding), not indexed (encoded by the server), stdin bytes, --exclude-self,
  // --paths-from, non-UTF-8 paths, the decoding options, every format.
  const std::string indexed = photos_ + "/pokemon.jpeg";
  const std::string copy = outside_ + "/copy-\xe9.jpeg";
  for (const std::string fmt : {"jsonl", "json", "paths", "table"}) {
    expect_same({"search-image", indexed, copy, "--format", fmt});
  }
  expect_same({"search-image", indexed, "--exclude-self", "-k", "3"});
  expect_same({"search-image", copy, photos_ + "/rocket-\xff\xfe.png", "--exclude-self"});
  expect_same({"search-image", copy, "--ignore-exif", "--full-decode", "-k", "4", "--format", "json"});
  expect_same({"search-image", photos_ + "/coffee_2048x1366_exif6.jpg", "--full-decode", "-k", "2"});
  expect_same({"search-image", "-", "-k", "3"}, test::read_text(test::fixtures("images/chelsea_rgba.png")));
  test::write_text(tmp_ / "list", photos_ + "/chelsea_rgba.png\n" + outside_ + "/copy-\xe9.jpeg\n");
  expect_same({"search-image", "--paths-from", tmp_ / "list", "-k", "2", "--format", "paths"});
  // A changed indexed file is encoded again, not answered from its stale embedding.
  test::copy_file(test::fixtures("images/astronaut_palette.png"), photos_ + "/pokemon.jpeg");
  expect_same({"search-image", indexed, "-k", "3"});
  EXPECT_EQ(succeeded_, compared_);
}

TEST_F(Route, ImageQueryErrorsAreTheLocalOnes) {
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  const std::string indexed = photos_ + "/pokemon.jpeg";
  const std::string copy = outside_ + "/copy-\xe9.jpeg";
  // Each image's own error, the others answered, and the exit status, as alone.
  expect_same({"search-image", outside_ + "/not-an-image.jpg", copy, "--format", "jsonl"});
  expect_same({"search-image", outside_ + "/missing.jpg", indexed, "--format", "paths"});
  // (A folder is a usage error of the parser, before any routing: FrontOptions.AFolderWhereAnImage...)
  expect_same({"search-image", "--max-pixels", "0.001", copy});
  expect_same({"search-image", "-", "-k", "3"}, "");  // empty stdin
  EXPECT_EQ(succeeded_, 0);
}

TEST_F(Route, TheRoutedPathDoesNotLoadTheModel) {
  // A copy of the bundle without its towers: same bundle.json, so the same model for routing, but
  // nothing that could be loaded. Routed queries answer; alone, the same command fails.
  TempDir copy;
  const std::string bundle = copy / "bundle";
  std::filesystem::copy(test::tiny_bundle(), bundle);
  std::filesystem::remove(bundle + "/text_encoder.pt");
  std::filesystem::remove(bundle + "/image_encoder.pt");
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  const std::vector<std::string> args{"--model", bundle, "--index", index_};
  auto routed = test::run_cnclip(test::concat({"search-text", "小狗", "--format", "jsonl"}, args));
  EXPECT_EQ(routed.exit_code, 0) << routed.err;
  EXPECT_EQ(routed.out, run_local({"search-text", "小狗", "--format", "jsonl"}).out);
  auto image =
      test::run_cnclip(test::concat({"search-image", outside_ + "/copy-\xe9.jpeg", "--format", "jsonl"}, args));
  EXPECT_EQ(image.exit_code, 0) << image.err;
  EXPECT_EQ(test::lines(image.out).size(), 6u);
  auto local = test::run_cnclip(test::concat({"search-text", "小狗", "--no-server"}, args));
  EXPECT_EQ(local.exit_code, 1) << local.err;
  test::RunOptions no_server;
  no_server.env = {"CNCLIP_NO_SERVER=1"};
  auto env_off = test::run_cnclip(test::concat({"search-text", "小狗"}, args), no_server);
  EXPECT_EQ(env_off.exit_code, 1) << env_off.err;
}

// Model commands restart once with a short OpenMP spin and malloc tunables (runtime.h); a routed
// query needs neither and skips that second start (~25 ms of a ~150 ms query), a local one still makes it, with stdin
// and stderr intact; a spin the user set is kept. CNCLIP_ROUTE_DEBUG prints what the process saw.
TEST_F(Route, OnlyLocalAnswersRestartForTheOpenMpSpin) {
  // env(1) unsets the user's wait policy variables for the run.
  test::RunOptions spin_unset;
  spin_unset.through = {
      "env", "-u", "GOMP_SPINCOUNT", "-u", "OMP_WAIT_POLICY", "-u", "GLIBC_TUNABLES", "CNCLIP_ROUTE_DEBUG=1"};
  spin_unset.stdin_text = "猫\n";
  {
    ServeProcess server(common());
    ASSERT_TRUE(server.running()) << server.err();
    auto routed =
        test::run_cnclip(test::concat({"search-text", "小狗", "-", "--format", "jsonl"}, common_args()), spin_unset);
    EXPECT_EQ(routed.exit_code, 0) << routed.err;
    EXPECT_NE(routed.err.find("route: through the server (GOMP_SPINCOUNT unset, GLIBC_TUNABLES unset)"),
              std::string::npos)
        << routed.err;
    EXPECT_EQ(test::lines(routed.out).size(), 12u) << routed.out;  // two queries, 6 photos each
  }
  // No server now: answered here, after the restart. Stdin (read after it) and stderr survive it.
  auto local =
      test::run_cnclip(test::concat({"search-text", "小狗", "-", "--format", "jsonl"}, common_args()), spin_unset);
  EXPECT_EQ(local.exit_code, 0) << local.err;
  EXPECT_NE(local.err.find("route: local: "), std::string::npos) << local.err;
  EXPECT_NE(local.err.find("(GOMP_SPINCOUNT 1000, GLIBC_TUNABLES glibc.malloc.hugetlb=1:"), std::string::npos)
      << local.err;
  EXPECT_EQ(test::lines(local.err).size(), 1u) << local.err;  // said once, by the restarted process
  EXPECT_EQ(test::lines(local.out).size(), 12u) << local.out;
  spin_unset.stdin_text = "";
  auto bad =
      test::run_cnclip(test::concat({"search-image", outside_ + "/not-an-image.jpg"}, common_args()), spin_unset);
  EXPECT_EQ(bad.exit_code, 1) << bad.err;
  EXPECT_NE(bad.err.find("not-an-image.jpg"), std::string::npos) << bad.err;  // the error on the user's stderr
  auto user_spin = run({"search-text", "小狗"}, {"GOMP_SPINCOUNT=77", "CNCLIP_ROUTE_DEBUG=1"});
  EXPECT_NE(user_spin.err.find("(GOMP_SPINCOUNT 77, GLIBC_TUNABLES "), std::string::npos) << user_spin.err;
}

TEST_F(Route, StaleAdvertIsIgnoredQuicklyAndReplacedByTheNextServe) {
  {
    ServeProcess server(common());
    ASSERT_TRUE(server.running()) << server.err();
    server.stop(SIGKILL);
  }
  ASSERT_TRUE(is_socket(index_ + "/serve.sock"));  // left behind by the killed server
  const auto t0 = std::chrono::steady_clock::now();
  std::string why;
  auto bundle = load_bundle_manifest(test::tiny_bundle());
  EXPECT_EQ(RouteClient::connect(index_, bundle, "cpu", &why), nullptr);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(200));
  EXPECT_NE(why.find("stale"), std::string::npos) << why;
  auto r = run_routed({"search-text", "小狗"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("cnclip: route: local"), std::string::npos) << r.err;

  ServeProcess again(common());
  ASSERT_TRUE(again.running()) << again.err();
  EXPECT_NE(again.err().find("are answered here"), std::string::npos) << again.err();
  EXPECT_NE(RouteClient::connect(index_, bundle, "cpu", &why), nullptr) << why;
  // A second server for the same index leaves the live advert alone and runs without one.
  ServeProcess second(common());
  ASSERT_TRUE(second.running()) << second.err();
  EXPECT_NE(second.err().find("another cnclip serve answers"), std::string::npos) << second.err();
  second.stop();
  EXPECT_NE(RouteClient::connect(index_, bundle, "cpu", &why), nullptr) << why;
  // A clean stop withdraws the advert.
  again.stop();
  EXPECT_FALSE(is_socket(index_ + "/serve.sock"));
}

TEST_F(Route, AnotherModelIndexOrDeviceIsNotUsed) {
  std::string why;
  // The int8 export of the same checkpoint: another precision, other floats.
  {
    ServeProcess server("--model " + shell_quote(test::tiny_int8_bundle()) + " --mixed-precision --index " +
                        shell_quote(index_));
    ASSERT_TRUE(server.running()) << server.err();
    EXPECT_EQ(RouteClient::connect(index_, load_bundle_manifest(test::tiny_bundle()), "cpu", &why), nullptr);
    EXPECT_NE(why.find("another model"), std::string::npos) << why;
    auto r = run_routed({"search-text", "小狗", "--format", "jsonl"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("another model"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, run_local({"search-text", "小狗", "--format", "jsonl"}).out);
  }
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  const auto bundle = load_bundle_manifest(test::tiny_bundle());
  EXPECT_EQ(RouteClient::connect(index_, bundle, "cuda", &why), nullptr);
  EXPECT_NE(why.find("another device"), std::string::npos) << why;
  // A copy of the index folder that carries the advert along (a hard link to the socket) is another
  // index: the server says which one it serves.
  const std::string other = tmp_ / "other-index";
  ::mkdir(other.c_str(), 0755);
  test::copy_file(index_ + "/catalog.sqlite3", other + "/catalog.sqlite3");
  ASSERT_EQ(::link((index_ + "/serve.sock").c_str(), (other + "/serve.sock").c_str()), 0);
  EXPECT_EQ(RouteClient::connect(other, bundle, "cpu", &why), nullptr);
  EXPECT_NE(why.find("another index"), std::string::npos) << why;
  // The same index through another spelling of its path is the same index.
  EXPECT_NE(RouteClient::connect(tmp_ / "photos/../index/", bundle, "cpu", &why), nullptr) << why;
}

TEST_F(Route, SocketHasTheFoldersPermissionsAndIsOnlyTrustedFromTheOwner) {
  ::chmod(index_.c_str(), 0700);
  {
    ServeProcess server(common());
    ASSERT_TRUE(server.running()) << server.err();
    struct stat st {};
    ASSERT_EQ(::lstat((index_ + "/serve.sock").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
  }
  ::chmod(index_.c_str(), 0750);
  {
    ServeProcess server(common());
    ASSERT_TRUE(server.running()) << server.err();
    struct stat st {};
    ASSERT_EQ(::lstat((index_ + "/serve.sock").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0660u);
    // An advert that is not the index owner's is not trusted.
    if (::geteuid() == 0) {
      ASSERT_EQ(::lchown((index_ + "/serve.sock").c_str(), 65534, 65534), 0);
      std::string why;
      EXPECT_EQ(RouteClient::connect(index_, load_bundle_manifest(test::tiny_bundle()), "cpu", &why), nullptr);
      EXPECT_NE(why.find("owner"), std::string::npos) << why;
      ASSERT_EQ(::lchown((index_ + "/serve.sock").c_str(), 0, 0), 0);
    }
  }
  // Something else at serve.sock (not a socket) is left alone, and not used.
  test::write_text(index_ + "/serve.sock", "not a socket");
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  EXPECT_NE(server.err().find("is not a socket: left alone"), std::string::npos) << server.err();
  EXPECT_EQ(test::read_text(index_ + "/serve.sock"), "not a socket");
  auto r = run({"search-text", "小狗"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A fake server on INDEX/serve.sock that passes the hello and then fails in the ways a real one can
// (an error status, a dropped connection, an answer that is not understood): every query must then be
// answered locally, with the output of a local run.
TEST_F(Route, ServerFailuresFallBackToLocalAnswers) {
  const auto bundle = load_bundle_manifest(test::tiny_bundle());
  const std::string canonical = canonical_path(index_).value();
  for (const std::string mode : {"500", "drop", "garbage", "partial"}) {
    SCOPED_TRACE(mode);
    httplib::Server fake;
    fake.Get("/route/v1/hello", [&](const httplib::Request&, httplib::Response& res) {
      res.set_content(json{{"protocol", 1},
                           {"index", {{"s", canonical}}},
                           {"model_fingerprint", bundle.fingerprint},
                           {"model_precision", bundle.precision},
                           {"device", "cpu"},
                           {"pid", 1}}
                          .dump(),
                      "application/json");
    });
    int calls = 0;
    auto fail = [&](const httplib::Request&, httplib::Response& res) {
      ++calls;
      if (mode == "500") {
        res.status = 500;
        res.set_content(R"({"error":{"code":"internal","message":{"s":"boom"}}})", "application/json");
      } else if (mode == "garbage") {
        res.set_content("not json", "application/json");
      } else if (mode == "partial") {
        res.set_content(R"({"results":[]})", "application/json");
      } else {
        res.status = 200;
        res.set_content_provider(10, "application/json",
                                 [](size_t, size_t, httplib::DataSink&) { return false; });  // dropped mid-answer
      }
    };
    fake.Post("/route/v1/check", [&](const httplib::Request&, httplib::Response& res) {
      res.set_content("{}", "application/json");  // passes the check, fails the queries
    });
    fake.Post("/route/v1/search-text", fail);
    fake.Post("/route/v1/search-image", fail);
    fake.set_address_family(AF_UNIX);
    ASSERT_TRUE(fake.bind_to_port(index_ + "/serve.sock", 80));
    std::thread t([&] { fake.listen_after_bind(); });
    while (!fake.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"search-text", "小狗", "火箭", "-", "-k", "3", "--format", "json"},
             {"search-image", photos_ + "/pokemon.jpeg", outside_ + "/copy-\xe9.jpeg", "-k", "2"}}) {
      auto routed = run_routed(args, "猫\n");
      auto local = run_local(args, "猫\n");
      EXPECT_NE(routed.err.find("through the server"), std::string::npos) << routed.err;
      EXPECT_NE(routed.err.find("local from here"), std::string::npos) << routed.err;
      EXPECT_EQ(routed.exit_code, local.exit_code) << routed.err;
      EXPECT_EQ(routed.out, local.out);
      EXPECT_EQ(local.exit_code, 0) << local.err;
    }
    EXPECT_GE(calls, 2);
    fake.stop();
    t.join();
    ::unlink((index_ + "/serve.sock").c_str());
  }
}

// A route request whose numbers the fields cannot hold (a float top_k, 1e72 as an offset, 1e300 as
// a float) is a 400 naming the field, never cast into range; the server goes on answering.
TEST_F(Route, RequestNumbersThatDoNotFitAreRejected) {
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  httplib::Client client(index_ + "/serve.sock");
  client.set_address_family(AF_UNIX);
  const json good_options = {{"top_k", 3}, {"sort", "score"}, {"offset", 0}, {"under", ""}};
  auto post = [&](const json& options) {
    return client.Post("/route/v1/search-text",
                       json{{"options", options}, {"mixed_precision", false}, {"queries", {{{"s", "小狗"}}}}}.dump(),
                       "application/json");
  };
  auto ok = post(good_options);
  ASSERT_TRUE(ok) << httplib::to_string(ok.error());
  ASSERT_EQ(ok->status, 200) << ok->body;
  EXPECT_EQ(json::parse(ok->body)["results"][0]["hits"].size(), 3u) << ok->body;
  const std::vector<std::pair<std::string, json>> bad = {
      {"top_k", 2.5},      {"top_k", 8.88889e71}, {"top_k", "3"}, {"offset", 1e72},
      {"offset", -9.3e18}, {"threshold", 1e300},  {"after", 1.5}, {"not_like", json::array({json::array({1e39})})}};
  for (const auto& [field, value] : bad) {
    json options = good_options;
    options[field] = value;
    if (field == "not_like") options["not_threshold"] = 0.5;
    auto r = post(options);
    ASSERT_TRUE(r) << field << ": " << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 400) << field << " = " << value.dump() << ": " << r->body;
    EXPECT_NE(r->body.find(field), std::string::npos) << r->body;
  }
  auto again = post(good_options);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(again->body, ok->body);
}

// The index info the CLI prints and the server answers come from one library call: equal field by
// field, also for a folder whose name is not UTF-8.
TEST_F(Route, InfoFieldsAreTheLibrarysInCliAndApi) {
  const std::string odd = tmp_ / "odd-\xff";
  ::mkdir(odd.c_str(), 0755);
  test::copy_file(test::fixtures("images/pokemon.jpeg"), odd + "/p.jpeg");
  ASSERT_EQ(test::run_cnclip(test::concat({"index", "-q", odd}, common_args())).exit_code, 0);
  ServeProcess server(common());
  ASSERT_TRUE(server.running()) << server.err();
  const std::regex listening("listening on http://127.0.0.1:([0-9]+)/");
  std::smatch m;
  const std::string err = server.err();
  ASSERT_TRUE(std::regex_search(err, m, listening)) << err;
  httplib::Client http("127.0.0.1", std::stoi(m[1]));
  auto res = http.Get("/api/v1/info");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto cli = test::run_cnclip({"info", "--format", "json", "--index", index_});
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  const json api = json::parse(res->body), local = json::parse(cli.out);
  const json lib = json::parse(dump_json(index_info_json(read_index_info(index_))));
  std::vector<std::string> keys;
  for (auto it = local.begin(); it != local.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys.size(), 16u) << cli.out;  // folders_bytes is there
  EXPECT_EQ(local["catalog_page_bytes"], kCatalogPageBytes);
  for (const auto& k : keys) {
    EXPECT_EQ(api.at(k), local.at(k)) << k;
    EXPECT_EQ(lib.at(k), local.at(k)) << k;
  }
  EXPECT_EQ(api.size(), local.size());
  EXPECT_EQ(local["files"], 7);
  EXPECT_EQ(local["vectors_setting"], "flat");
  EXPECT_EQ(local["snapshot"], json({{"type", "flat"}, {"search_parameter", ""}, {"changed_since", 0}}));
  EXPECT_EQ(local["folders_bytes"], json::array({hex_encode(odd), hex_encode(photos_)}));
}

TEST(RouteLibrary, RemovePathsAndExtensionLists) {
  EXPECT_EQ(parse_extension_list("JPG,.png,,webp"), (std::vector<std::string>{"jpg", "png", "webp"}));
  EXPECT_EQ(parse_extension_list("..Tiff"), (std::vector<std::string>{"tiff"}));
  for (const char* bad : {"", ",", ".,.."}) {
    try {
      parse_extension_list(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_STREQ(e.what(), "--ext: no extension given");
    }
  }
  EXPECT_THROW(check_remove_paths({}), Exception);
  EXPECT_THROW(check_remove_paths({"a", ""}), Exception);
  EXPECT_NO_THROW(check_remove_paths({"a"}));
}

}  // namespace
}  // namespace cnclip
