#include "progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cnclip/runtime.h"

namespace cnclip::cli {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60) std::snprintf(buf, sizeof(buf), "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof(buf), "%lds", t);
  return buf;
}

std::string progress_line(int64_t done, int64_t total, double rate, int columns) {
  char figures[128];
  std::snprintf(figures, sizeof(figures), "%lld/%lld  %.1f img/s  ETA %s", static_cast<long long>(done),
                static_cast<long long>(total), rate,
                rate > 0 ? format_duration(static_cast<double>(total - done) / rate).c_str() : "?");
  const int room = std::max(columns - 1, 1);
  std::string line = figures;
  const int bar_width = std::min(50, room - static_cast<int>(line.size()) - 3);
  if (bar_width >= 10) {
    const int filled = static_cast<int>(bar_width * done / total);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < bar_width) bar += '>' + std::string(static_cast<size_t>(bar_width - filled - 1), ' ');
    line = "[" + bar + "] " + line;
  }
  if (static_cast<int>(line.size()) > room) line.resize(static_cast<size_t>(room));
  return line;
}

void ProgressBar::update(int64_t done, int64_t total) {
  if (!enabled_ || total == 0) return;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  // The width is asked on every update, so a resized window is followed; erase-to-end-of-line clears
  // what a wider line left behind.
  std::cerr << '\r' << progress_line(done, total, rate, terminal_columns(user_stderr_fd())) << "\x1b[K" << std::flush;
  shown_ = true;
}

void ProgressBar::end() {
  if (shown_) std::cerr << '\n';
  shown_ = false;
}

}  // namespace cnclip::cli
