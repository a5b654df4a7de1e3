// The progress bar of the commands that encode many images (index, eval, embed-image --out).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cnclip::cli {

// "1h02m", "3m05s", "42s"; "?" for a negative or non-finite number of seconds.
std::string format_duration(double seconds);

// The progress line for a terminal `columns` wide: "[====>   ] done/total  rate img/s  ETA t", the bar
// taking what the figures leave (at most 50), left out below 10 columns, the whole line kept
// within columns - 1 (writing the last column makes some terminals wrap).
std::string progress_line(int64_t done, int64_t total, double rate, int columns);

// That line on stderr, redrawn in place (when `enabled`: a terminal, not --quiet), the rate counted
// from construction or restart(). end() moves past a drawn line, so that the next message starts on
// a line of its own; it does nothing when no line is drawn.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled), start_(std::chrono::steady_clock::now()) {}
  void restart() { start_ = std::chrono::steady_clock::now(); }
  void update(int64_t done, int64_t total);
  void end();

 private:
  bool enabled_, shown_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace cnclip::cli
