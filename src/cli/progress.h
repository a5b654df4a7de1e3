// The progress bar of the commands that encode many images (index, eval).
#pragma once

#include <cstdint>
#include <string>

namespace cnclip::cli {

// "1h02m", "3m05s", "42s"; "?" for a negative or non-finite number of seconds.
std::string format_duration(double seconds);

// The progress line for a terminal `columns` wide: "[====>   ] done/total  rate img/s  ETA t", the bar
// taking what the figures leave (at most 50), left out below 10 columns, the whole line kept
// within columns - 1 (writing the last column makes some terminals wrap).
std::string progress_line(int64_t done, int64_t total, double rate, int columns);

}  // namespace cnclip::cli
