// cnclip index end to end: walk options, the writer lock, stdin paths, crashes and Ctrl-C, the
// progress bar on a terminal (incremental runs: cli_incremental_test.cpp).
#include "cli_util.h"

#include <csignal>

namespace cnclip {
namespace {

using namespace cli_test;  // NOLINT(google-build-using-namespace): the helpers of every CLI test

TEST_F(Photos, HiddenExcludeAndExtensions) {
  auto s = index_photos({"--hidden", "--exclude", "山", "--ext", "jpg,.JPEG"});
  EXPECT_EQ(s["added"], 3);   // sunset 1.jpg, 小狗.jpeg and .hidden/secret.jpg; not 山/cat.jpg, not x.webp
  EXPECT_EQ(s["failed"], 1);  // broken.jpg
  s = index_json({photos, "--index", dir / "default-options"});
  EXPECT_EQ(s["added"], 5);  // hidden folder skipped, webp included
}

TEST_F(Photos, ASecondWriterIsRefusedWhileSearchesWork) {
  index_photos();
  int fd = ::open((idx + "/lock").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  auto r = run({"index", photos});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("another cnclip"), std::string::npos) << r.err;
  r = run({"search-text", "猫", "--format", "paths"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ::close(fd);
}

TEST_F(Photos, PathsFromStdin) {
  auto r =
      run({"index", "-", "-q", "--format", "json"}, photos + "/家/小狗.jpeg\n" + photos + "/2024 旅行/山/cat.jpg\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["added"], 2);
}

// kill -9 at random moments: the index always opens, every batch committed before the kill is kept
// with its embedding, and the final state equals an uninterrupted run's.
TEST(CliCrash, SigkillMidRunLosesNothingCommitted) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  const int n = 160;
  for (int i = 0; i < n; ++i)
    make_photo(photos + "/d" + std::to_string(i % 7) + "/p" + std::to_string(i) + ".jpg", 100 + i);
  const std::vector<std::string> args{"-q", "--batch-size", "2", photos, "--model", test::tiny_bundle()};

  auto reference = test::run_cnclip(test::concat(test::concat({"index"}, args), {"--index", dir / "ref"}));
  ASSERT_EQ(reference.exit_code, 0) << reference.err;

  const std::string idx = dir / "crashy";
  const std::string catalog_path = idx + "/catalog.sqlite3";
  // What the catalog holds: path -> embedding (read while the run writes, as a search would).
  auto committed = [&] {
    std::map<std::string, std::vector<float>> out;
    if (!fs::exists(catalog_path)) return out;
    try {
      auto c = Catalog::open_read_only(catalog_path);
      for (const auto& r : c->files_under("")) out[r.path] = c->embedding(r.id);
    } catch (const Exception&) {
      // created but not yet initialised by the writer: nothing committed
    }
    return out;
  };
  std::mt19937 rng(42);
  int kills = 0, kills_after_commits = 0;
  for (int round = 0; round < 6; ++round) {
    const size_t before = committed().size();
    pid_t pid = fork();
    if (pid == 0) {
      int devnull = ::open("/dev/null", O_WRONLY);
      dup2(devnull, 1);
      dup2(devnull, 2);
      execl(CNCLIP_BINARY, "cnclip", "index", "-q", "--batch-size", "2", photos.c_str(), "--model",
            test::tiny_bundle().c_str(), "--index", idx.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Wait until this run has committed batches of its own (or ended), then a random moment more.
    std::map<std::string, std::vector<float>> seen;
    for (int i = 0; i < 500; ++i) {
      seen = committed();
      if (seen.size() >= before + 4 || waitpid(pid, nullptr, WNOHANG) == pid) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 150));
    seen = committed();  // everything committed before the kill
    if (::kill(pid, SIGKILL) == 0) {
      ++kills;
      if (seen.size() > before) ++kills_after_commits;
    }
    waitpid(pid, nullptr, 0);
    auto info = test::run_cnclip({"info", "--format", "json", "--index", idx});
    ASSERT_EQ(info.exit_code, 0) << info.err;
    const int64_t count = json::parse(info.out)["files"];
    EXPECT_GE(count, static_cast<int64_t>(seen.size())) << "committed files lost";
    EXPECT_EQ(json::parse(info.out)["vectors"], count);
    const auto after = committed();
    for (const auto& [path, embedding] : seen) {
      auto it = after.find(path);
      ASSERT_NE(it, after.end()) << "committed before the kill, lost after it: " << path;
      EXPECT_EQ(it->second, embedding) << path;
    }
  }
  EXPECT_GT(kills_after_commits, 0) << "no kill landed after a commit";
  EXPECT_GT(kills, 0);
  auto finish = test::run_cnclip(test::concat(test::concat({"index", "--format", "json"}, args), {"--index", idx}));
  ASSERT_EQ(finish.exit_code, 0) << finish.err;
  EXPECT_EQ(json::parse(finish.out)["unchanged"].get<int64_t>() + json::parse(finish.out)["added"].get<int64_t>(), n);

  // Same files, same embeddings as the uninterrupted run.
  auto ref = Catalog::open(dir / "ref/catalog.sqlite3", false);
  auto got = Catalog::open(idx + "/catalog.sqlite3", false);
  const auto ref_files = ref->files_under(""), got_files = got->files_under("");
  ASSERT_EQ(ref_files.size(), static_cast<size_t>(n));
  ASSERT_EQ(got_files.size(), ref_files.size());
  for (size_t i = 0; i < ref_files.size(); ++i) {
    ASSERT_EQ(got_files[i].path, ref_files[i].path);
    EXPECT_EQ(got_files[i].content_hash, ref_files[i].content_hash);
    const auto a = ref->embedding(ref_files[i].id), b = got->embedding(got_files[i].id);
    ASSERT_EQ(a.size(), b.size());
    float diff = 0;
    for (size_t d = 0; d < a.size(); ++d) diff = std::max(diff, std::fabs(a[d] - b[d]));
    EXPECT_LE(diff, 1e-5f) << ref_files[i].path;  // batches differ between the runs
  }
}

// Ctrl-C (and SIGTERM): the run stops after the current batch, says so, exits 128 + the signal (130,
// 143, as the shell shows a process ended by it), and keeps what it committed. The signal is sent
// when the progress bar shows a first committed batch (an event, not a guess at how long start-up
// takes: a signal before the handler is installed would kill the process instead).
TEST(CliCrash, CtrlCStopsAfterTheBatch) {
  test::TempDir dir;
  const std::string photos = dir / "photos";
  const int n = 300;
  for (int i = 0; i < n; ++i) make_photo(photos + "/p" + std::to_string(i) + ".jpg", 500 + i);
  for (const int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGTERM");
    const std::string idx = dir / ("idx" + std::to_string(sig));
    TerminalChild run({"index", "--batch-size", "1", photos, "--model", test::tiny_bundle(), "--index", idx});
    ASSERT_TRUE(run.wait_for("/300 ")) << "no batch committed: " << run.printed();
    const int status = run.stop(sig);
    ASSERT_TRUE(WIFEXITED(status)) << run.printed();
    EXPECT_EQ(WEXITSTATUS(status), 128 + sig) << run.printed();
    EXPECT_NE(run.printed().find("interrupted"), std::string::npos) << run.printed();
    auto info = test::run_cnclip({"info", "--format", "json", "--index", idx});
    ASSERT_EQ(info.exit_code, 0) << info.err;
    const int64_t kept = json::parse(info.out)["files"];
    EXPECT_GT(kept, 0);
    EXPECT_LT(kept, n);
    auto rest = index_json({photos, "--index", idx});
    EXPECT_EQ(rest["unchanged"].get<int64_t>(), kept);
    EXPECT_EQ(rest["added"].get<int64_t>(), n - kept);
  }
}

// A run started with SIGINT ignored (a script's `cnclip index ... &` without job control, nohup)
// keeps it ignored: a Ctrl-C meant for the shell does not stop it.
TEST(CliCrash, AnIgnoredInterruptStaysIgnored) {
  test::TempDir dir;
  const std::string photos = dir / "photos", idx = dir / "idx";
  const int n = 60;
  for (int i = 0; i < n; ++i) make_photo(photos + "/p" + std::to_string(i) + ".jpg", 900 + i);
  const pid_t pid = fork();
  if (pid == 0) {
    std::signal(SIGINT, SIG_IGN);  // inherited through exec, as from a shell
    int devnull = ::open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execl(CNCLIP_BINARY, "cnclip", "index", "-q", "--batch-size", "1", photos.c_str(), "--model",
          test::tiny_bundle().c_str(), "--index", idx.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Once it has committed a batch (its handlers would be in place by then), Ctrl-C twice.
  bool running = false;
  for (int i = 0; i < 1000 && !running; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!fs::exists(idx + "/catalog.sqlite3")) continue;
    auto info = test::run_cnclip({"info", "--format", "json", "--index", idx});
    running = info.exit_code == 0 && json::parse(info.out)["files"].get<int64_t>() > 0;
  }
  ASSERT_TRUE(running) << "no batch committed";
  ::kill(pid, SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "ended by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto info = test::run_cnclip({"info", "--format", "json", "--index", idx});
  EXPECT_EQ(json::parse(info.out)["files"], n);
}

// On a terminal: a progress bar (done/total, images/s, ETA) and the table format by default.
TEST(CliTerminal, ProgressBarAndTableOnATerminal) {
  test::TempDir dir;
  const std::string idx = " --index " + test::shell_quote(dir / "i");
  auto in_pty = [&](const std::string& args) {
    // script(1) runs the command on a pseudo-terminal.
    const std::string cmd = std::string(CNCLIP_BINARY) + " " + args;
    const std::string full =
        "script -qefc " + test::shell_quote(cmd) + " /dev/null > " + test::shell_quote(dir / "tty") + " 2>&1";
    EXPECT_EQ(std::system(full.c_str()), 0) << cmd;
    return test::read_text(dir / "tty");
  };
  std::string out = in_pty("index " + test::shell_quote(test::fixtures("images")) + model_arg() + idx);
  EXPECT_NE(out.find("6/6"), std::string::npos) << out;
  EXPECT_NE(out.find("img/s"), std::string::npos) << out;
  EXPECT_NE(out.find("ETA"), std::string::npos) << out;
  out = in_pty("search-text 皮卡丘 -k 2" + model_arg() + idx);
  EXPECT_NE(out.find("query: 皮卡丘"), std::string::npos) << out;
}

// The progress bar fits the terminal it is drawn on: narrow, medium and wide windows.
TEST(CliTerminal, ProgressBarFitsTheTerminalWidth) {
  for (int columns : {24, 60, 200}) {
    test::TempDir dir;
    const std::string cmd = "stty cols " + std::to_string(columns) + " rows 30; " + CNCLIP_BINARY + " index " +
                            test::shell_quote(test::fixtures("images")) + model_arg() + " --index " +
                            test::shell_quote(dir / "i");
    const std::string full = "script -qefc " + test::shell_quote(cmd) + " /dev/null > " +
                             test::shell_quote(dir / "tty") + " 2>&1 < /dev/null";
    ASSERT_EQ(std::system(full.c_str()), 0) << cmd;
    const std::string out = test::read_text(dir / "tty");
    // Each redraw starts with \r and ends with erase-to-end-of-line.
    std::vector<std::string> drawn;
    size_t at = 0;
    while ((at = out.find('\r', at)) != std::string::npos) {
      const size_t end = out.find("\x1b[K", at);
      if (end == std::string::npos) break;
      std::string line = out.substr(at + 1, end - at - 1);
      const size_t nl = line.find_last_of("\r\n");  // a pty writes "\r\n" for each newline
      if (nl != std::string::npos) line.erase(0, nl + 1);
      drawn.push_back(line);
      at = end;
    }
    ASSERT_FALSE(drawn.empty()) << columns << " columns: " << out;
    for (const auto& line : drawn) {
      EXPECT_LT(static_cast<int>(line.size()), columns) << columns << " columns: '" << line << "'";
    }
    const std::string& last = drawn.back();
    EXPECT_NE(last.find("6/6"), std::string::npos) << columns << " columns: '" << last << "'";
    const size_t bar_end = last.find("] ");
    if (columns == 24) {
      EXPECT_EQ(last[0], '6') << "no room for a bar: figures only: '" << last << "'";
    } else if (columns == 60) {
      ASSERT_EQ(last[0], '[') << last;
      EXPECT_EQ(static_cast<int>(last.size()), columns - 1) << "the bar takes the room left: '" << last << "'";
    } else {
      ASSERT_EQ(last[0], '[') << last;
      EXPECT_EQ(bar_end, 51u) << "the bar stops growing at 50: '" << last << "'";
    }
  }
}

}  // namespace
}  // namespace cnclip
