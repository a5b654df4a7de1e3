// What cnclip stores about a photo besides its embedding: when it was taken and its size. Read at
// index time from the bytes the indexer has in memory anyway (no extra decode); filled in for files
// indexed before these fields existed by the next `cnclip index`, without the model.
//
// Capture time, in order of preference:
//   1. EXIF DateTimeOriginal (tag 0x9003 of the Exif IFD) with OffsetTimeOriginal (0x9011, EXIF 2.31)
//      when present: an exact instant (source kExif);
//   2. DateTimeOriginal without an offset: a camera's wall clock, read in the local time zone of the
//      machine that indexes (TZ; source kExifLocal, so it can be told apart);
//   3. else the file's modification time (source kMtime).
// EXIF is read from JPEG (the first APP1 "Exif" segment, as the decoder reads the orientation), TIFF
// (the file's own IFDs), PNG (the eXIf chunk) and WebP (the EXIF chunk). The reader is bounded by the
// buffer everywhere (fuzzed through the image target's inputs in tests), and needs no library: the
// decoder already reads EXIF's orientation the same way, and dates are two more tags.
//
// Width and height are the image's as viewers show it: after the EXIF orientation (swapped for
// orientations 5–8 of a JPEG, the images the decoder turns), at full size. 0 when unknown.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

enum class TimeSource { kNone, kExif, kExifLocal, kMtime };
const char* time_source_name(TimeSource s);                 // "", "exif", "exif-local", "mtime"
TimeSource time_source_from_name(const std::string& name);  // kNone for anything else

struct PhotoMeta {
  int64_t taken_at = 0;  // unix seconds (UTC); meaningful when source != kNone
  TimeSource source = TimeSource::kNone;
  std::optional<int> offset_minutes;  // east of UTC; set for kExif only
  int width = 0, height = 0;          // upright, full size; 0 = unknown
};

// An EXIF date ("YYYY:MM:DD HH:MM:SS") and its offset ("+HH:MM"), as found.
struct ExifDate {
  std::string date_time;
  std::string offset;  // "" when absent
};
// DateTimeOriginal (else DateTime of IFD0) and OffsetTimeOriginal (else OffsetTime) of the EXIF in
// an image file's bytes; nullopt when there is none or it cannot be read. Never throws.
std::optional<ExifDate> read_exif_date(const uint8_t* bytes, size_t size);

// Everything above from a file's bytes (possibly only its first part: see read_photo_meta_file) and
// its mtime. Never fails: what cannot be read is left unknown (kMtime time, size 0). Thread-safe.
PhotoMeta read_photo_meta(const std::vector<uint8_t>& bytes, int64_t mtime_ns);
// The same from a file, reading only its first 256 KB when that holds what is needed (a JPEG's EXIF
// and frame header come before the image data), else the whole file. Errors name the file.
Result<PhotoMeta> read_photo_meta_file(const std::string& path, int64_t mtime_ns);

// Parses a time bound for --after/--before: "2024-05-01", "2024-05-01T08:30", "2024-05-01 08:30:15",
// each optionally followed by "Z" or an offset "+08:00" / "+0800" / "-05". Without an offset the
// time is in the local time zone (TZ); a date alone means its midnight. Returns unix seconds, or
// kInvalidArgument naming `what` and the text ("--after: expects a date (2024-05-01) or an ISO time
// (2024-05-01T08:30:00+08:00), not 'x'").
Result<int64_t> parse_time_bound(const std::string& text, const std::string& what);

// ISO 8601 with offset: in `offset_minutes` when given, else in the local time zone
// ("2024-05-01T08:30:00+08:00").
std::string format_time(int64_t unix_seconds, std::optional<int> offset_minutes);

}  // namespace cnclip
