#include "cnclip/runtime.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

namespace cnclip {
namespace {

std::atomic<bool> g_interrupted{false};
std::atomic<int> g_interrupt_signal{0};

extern "C" void on_signal(int sig) {
  g_interrupt_signal.store(sig);
  g_interrupted.store(true);
  std::signal(sig, SIG_DFL);  // a second Ctrl-C stops immediately
}

// Writes straight to a file descriptor (the terminal's stderr, saved before fd 2 became the pipe).
class FdStreamBuf : public std::streambuf {
 public:
  explicit FdStreamBuf(int fd) : fd_(fd) {}

 protected:
  int_type overflow(int_type c) override {
    if (c == traits_type::eof()) return traits_type::not_eof(c);
    char ch = static_cast<char>(c);
    return write_all(&ch, 1) ? c : traits_type::eof();
  }
  std::streamsize xsputn(const char* s, std::streamsize n) override {
    return write_all(s, static_cast<size_t>(n)) ? n : 0;
  }

 private:
  bool write_all(const char* s, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd_, s, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      s += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }
  int fd_;
};

struct Capture {
  std::mutex mu;  // guards everything below and the reading of the pipe
  struct Decoding {
    std::string path, decoder;
  };
  std::vector<Decoding> decoding;  // files being decoded now (a multiset)
  std::string partial;             // library output not yet ended by a newline
  int terminal_fd = -1, read_fd = -1;
  std::thread reader;
  std::unique_ptr<FdStreamBuf> buf;
  std::streambuf* old_cerr = nullptr;
  bool active = false;

  // Reads what is in the pipe now and reports complete lines. Caller holds mu.
  void drain_locked(bool flush_partial) {
    char chunk[4096];
    for (;;) {
      ssize_t n = ::read(read_fd, chunk, sizeof(chunk));
      if (n <= 0) break;
      partial.append(chunk, static_cast<size_t>(n));
    }
    size_t nl;
    while ((nl = partial.find('\n')) != std::string::npos) {
      report_locked(partial.substr(0, nl));
      partial.erase(0, nl + 1);
    }
    if (flush_partial && !partial.empty()) {
      report_locked(partial);
      partial.clear();
    }
  }

  void report_locked(std::string line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty()) return;
    // libjpeg, libpng and libtiff print no file name, but most of their messages name the format.
    std::string lower = line;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string format;
    for (const char* f : {"png", "jpeg", "tiff", "webp"}) {
      if (lower.find(f) != std::string::npos) {
        format = f;
        break;
      }
    }
    const bool known =
        std::any_of(decoding.begin(), decoding.end(), [&](const Decoding& d) { return d.decoder == format; });
    std::string who;
    for (const auto& d : decoding) {
      if (!known || d.decoder == format) who += (who.empty() ? "" : ", ") + d.path;
    }
    const std::string msg =
        "cnclip: warning: " + (who.empty() ? std::string("library") : who + ": decoder") + ": " + line + "\n";
    // Once: FAISS repeats its k-means warning for every training round (400 identical lines for an
    // OPQ), and a library repeating itself tells nothing more.
    if (msg == last_reported) return;
    last_reported = msg;
    (void)!::write(terminal_fd, msg.data(), msg.size());
  }
  std::string last_reported;
};

Capture& capture() {
  static Capture* c = new Capture;  // never destroyed: the reader thread may outlive static destructors
  return *c;
}

}  // namespace

Result<std::string> xdg_data_home() {
  const char* xdg = std::getenv("XDG_DATA_HOME");
  if (xdg && xdg[0] == '/') return std::string(xdg);
  const char* home = std::getenv("HOME");
  if (home && home[0] == '/') return std::string(home) + "/.local/share";
  std::string why = !home || !*home ? "HOME is not set" : "HOME is not an absolute path ('" + std::string(home) + "')";
  if (xdg && *xdg) why += ", and XDG_DATA_HOME is not an absolute path ('" + std::string(xdg) + "')";
  return Error{ErrorCode::kInvalidArgument, why};
}

void install_interrupt_handlers() {
  for (const int sig : {SIGINT, SIGTERM}) {
    // A signal the parent ignores stays ignored (a shell's `cmd &` without job control, nohup): the
    // user asked for it not to stop the run.
    struct sigaction now {};
    if (::sigaction(sig, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
    std::signal(sig, on_signal);
  }
}

bool interrupt_requested() { return g_interrupted.load(); }
int interrupt_signal() { return g_interrupt_signal.load(); }
void request_interrupt() { g_interrupted.store(true); }

void capture_library_stderr() {
  Capture& c = capture();
  if (c.active) return;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return;  // not fatal: library output then goes to the terminal
  c.terminal_fd = ::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
  if (c.terminal_fd < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return;
  }
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  c.read_fd = fds[0];
  ::dup2(fds[1], STDERR_FILENO);
  ::close(fds[1]);
  std::cerr.flush();
  c.buf = std::make_unique<FdStreamBuf>(c.terminal_fd);
  c.old_cerr = std::cerr.rdbuf(c.buf.get());
  c.active = true;
  c.reader = std::thread([&c] {
    for (;;) {
      pollfd p{c.read_fd, POLLIN, 0};
      if (::poll(&p, 1, -1) < 0 && errno != EINTR) return;
      std::lock_guard<std::mutex> lock(c.mu);
      c.drain_locked(false);
      if (p.revents & (POLLHUP | POLLERR)) {
        c.drain_locked(true);
        return;
      }
    }
  });
}

void release_library_stderr() {
  Capture& c = capture();
  if (!c.active) return;
  c.active = false;
  std::cerr.flush();
  ::dup2(c.terminal_fd, STDERR_FILENO);  // closes the pipe's last write end: the reader sees EOF
  if (c.reader.joinable()) c.reader.join();
  std::cerr.rdbuf(c.old_cerr);
  ::close(c.read_fd);
}

int user_stderr_fd() {
  const Capture& c = capture();
  return c.active ? c.terminal_fd : STDERR_FILENO;
}

DecodingFile::DecodingFile(const std::string& path, const std::string& decoder) : path_(path), decoder_(decoder) {
  Capture& c = capture();
  std::lock_guard<std::mutex> lock(c.mu);
  c.decoding.push_back({path_, decoder_});
}

DecodingFile::~DecodingFile() {
  Capture& c = capture();
  std::lock_guard<std::mutex> lock(c.mu);
  // What the decoder printed is in the pipe already: report it while this file is still named.
  if (c.active) c.drain_locked(false);
  for (auto it = c.decoding.begin(); it != c.decoding.end(); ++it) {
    if (it->path == path_) {
      c.decoding.erase(it);
      break;
    }
  }
}

int terminal_columns(int fd) {
  struct winsize ws {};
  if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  if (const char* env = std::getenv("COLUMNS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0 && v < 100000) return static_cast<int>(v);
  }
  return 80;
}

namespace {

// What cnclip's model commands give glibc's malloc (runtime.h).
constexpr const char* kMallocTunables =
    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:"
    "glibc.malloc.arena_max=1";

// Whether the user chose malloc's settings: a glibc.malloc tunable in GLIBC_TUNABLES
// ("name=value:name=value"), or one of the older MALLOC_..._ variables glibc still reads.
bool malloc_settings_chosen(const std::string& tunables) {
  for (const char* old : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                          "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST"}) {
    if (std::getenv(old)) return true;
  }
  size_t pos = 0;
  while (pos < tunables.size()) {
    if (tunables.compare(pos, 13, "glibc.malloc.") == 0) return true;
    pos = std::min(tunables.find(':', pos), tunables.size()) + 1;
  }
  return false;
}

}  // namespace

std::vector<std::string> runtime_environment_missing() {
  std::vector<std::string> out;
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) out.push_back("GOMP_SPINCOUNT=1000");
  const char* given = std::getenv("GLIBC_TUNABLES");
  const std::string tunables = given ? given : "";
  if (!malloc_settings_chosen(tunables)) {
    out.push_back("GLIBC_TUNABLES=" + tunables + (tunables.empty() ? "" : ":") + kMallocTunables);
  }
  return out;
}

bool runtime_restart_wanted() {
  // Once only, whatever the new process finds: glibc drops GLIBC_TUNABLES entries for a program run
  // with privileges (setuid, file capabilities), which would make the variables missing again.
  return !std::getenv("CNCLIP_RESTARTED") && !::getauxval(AT_SECURE) && !runtime_environment_missing().empty();
}

void restart_with_runtime_environment(char** argv, const char* exe) {
  if (!runtime_restart_wanted()) return;
  const auto missing = runtime_environment_missing();
  if (setenv("CNCLIP_RESTARTED", "1", 1) != 0) return;
  for (const auto& assignment : missing) {
    const size_t eq = assignment.find('=');
    if (setenv(assignment.substr(0, eq).c_str(), assignment.c_str() + eq + 1, 1) != 0) return;
  }
  execv(exe, argv);  // returns only on failure: go on with the runtimes as they are
}

}  // namespace cnclip
