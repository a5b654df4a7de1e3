#include "cnclip/photo_meta.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "cnclip/image.h"

namespace cnclip {
namespace {

uint16_t rd16(const uint8_t* p, bool little) {
  return little ? uint16_t(p[0] | p[1] << 8) : uint16_t(p[0] << 8 | p[1]);
}
uint32_t rd32(const uint8_t* p, bool little) {
  return little ? uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24
                : uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

// A TIFF structure (EXIF's layout) in [t, t+n): reads ASCII tags of IFD0 and of the Exif IFD.
class TiffReader {
 public:
  TiffReader(const uint8_t* t, size_t n) : t_(t), n_(n) {
    if (n < 8) return;
    if (t[0] == 'I' && t[1] == 'I') little_ = true;
    else if (!(t[0] == 'M' && t[1] == 'M')) return;
    if (rd16(t + 2, little_) != 42) return;
    ok_ = true;
  }
  bool ok() const { return ok_; }
  size_t ifd0() const { return rd32(t_ + 4, little_); }
  // The entry of `tag` in the IFD at `ifd`: its position, or 0.
  size_t find(size_t ifd, uint16_t tag) const {
    if (ifd < 8 || ifd + 2 > n_) return 0;
    const size_t count = rd16(t_ + ifd, little_);
    for (size_t e = 0; e < count; ++e) {
      const size_t at = ifd + 2 + e * 12;
      if (at + 12 > n_) return 0;
      if (rd16(t_ + at, little_) == tag) return at;
    }
    return 0;
  }
  std::optional<uint32_t> long_value(size_t ifd, uint16_t tag) const {
    const size_t at = find(ifd, tag);
    if (!at) return std::nullopt;
    const uint16_t type = rd16(t_ + at + 2, little_);
    if (type == 4 || type == 13) return rd32(t_ + at + 8, little_);  // LONG, IFD
    if (type == 3) return rd16(t_ + at + 8, little_);                // SHORT
    return std::nullopt;
  }
  std::string ascii(size_t ifd, uint16_t tag) const {
    const size_t at = find(ifd, tag);
    if (!at || rd16(t_ + at + 2, little_) != 2) return "";
    const size_t count = rd32(t_ + at + 4, little_);
    if (count == 0 || count > 64) return "";
    const size_t from = count <= 4 ? at + 8 : rd32(t_ + at + 8, little_);
    if (from > n_ || count > n_ - from) return "";
    std::string s(reinterpret_cast<const char*>(t_ + from), count);
    const auto nul = s.find('\0');
    if (nul != std::string::npos) s.resize(nul);
    return s;
  }

 private:
  const uint8_t* t_;
  size_t n_;
  bool little_ = false;
  bool ok_ = false;
};

std::optional<ExifDate> date_from_tiff(const uint8_t* t, size_t n) {
  // Some writers put the "Exif\0\0" header of JPEG's APP1 before the TIFF data in PNG and WebP too.
  if (n >= 6 && std::memcmp(t, "Exif\0\0", 6) == 0) t += 6, n -= 6;
  TiffReader r(t, n);
  if (!r.ok()) return std::nullopt;
  const size_t ifd0 = r.ifd0();
  ExifDate d;
  if (auto exif = r.long_value(ifd0, 0x8769)) {
    d.date_time = r.ascii(*exif, 0x9003);                                             // DateTimeOriginal
    d.offset = r.ascii(*exif, 0x9011);                                                // OffsetTimeOriginal
    if (d.offset.empty() && !d.date_time.empty()) d.offset = r.ascii(*exif, 0x9010);  // OffsetTime
  }
  if (d.date_time.empty()) {
    d.date_time = r.ascii(ifd0, 0x0132);  // DateTime (last change; what scanners and editors set)
    if (d.offset.empty()) {
      if (auto exif = r.long_value(ifd0, 0x8769)) d.offset = r.ascii(*exif, 0x9010);
    }
  }
  if (d.date_time.empty()) return std::nullopt;
  return d;
}

// The first APP1 "Exif" segment of a JPEG, as the decoder finds the orientation.
std::optional<ExifDate> jpeg_date(const uint8_t* b, size_t n) {
  size_t i = 2;
  while (i + 4 <= n) {
    if (b[i] != 0xFF) return std::nullopt;
    const uint8_t marker = b[i + 1];
    if (marker == 0xFF) {
      ++i;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return std::nullopt;  // image data: no EXIF after this
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {
      i += 2;
      continue;
    }
    const size_t len = size_t{b[i + 2]} << 8 | b[i + 3];
    if (len < 2 || i + 2 + len > n) return std::nullopt;
    if (marker == 0xE1 && len >= 8 && std::memcmp(b + i + 4, "Exif\0\0", 6) == 0) {
      return date_from_tiff(b + i + 4, len - 2);
    }
    i += 2 + len;
  }
  return std::nullopt;
}

std::optional<ExifDate> png_date(const uint8_t* b, size_t n) {
  size_t i = 8;
  while (i + 12 <= n) {
    const size_t len = rd32(b + i, false);
    if (len > n - i - 12) return std::nullopt;
    if (std::memcmp(b + i + 4, "eXIf", 4) == 0) return date_from_tiff(b + i + 8, len);
    if (std::memcmp(b + i + 4, "IEND", 4) == 0) return std::nullopt;
    i += 12 + len;
  }
  return std::nullopt;
}

std::optional<ExifDate> webp_date(const uint8_t* b, size_t n) {
  size_t i = 12;
  while (i + 8 <= n) {
    const size_t len = rd32(b + i + 4, true);
    if (len > n - i - 8) return std::nullopt;
    if (std::memcmp(b + i, "EXIF", 4) == 0) return date_from_tiff(b + i + 8, len);
    i += 8 + len + (len & 1);
  }
  return std::nullopt;
}

bool digits(const std::string& s, size_t at, size_t count, int& out) {
  if (at + count > s.size()) return false;
  out = 0;
  for (size_t k = at; k < at + count; ++k) {
    if (s[k] < '0' || s[k] > '9') return false;
    out = out * 10 + (s[k] - '0');
  }
  return true;
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

bool valid_date(int y, int m, int d) {
  static const int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (y < 1 || m < 1 || m > 12 || d < 1) return false;
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return d <= kDays[m - 1] + (m == 2 && leap ? 1 : 0);
}

// Wall-clock fields -> unix seconds: with an offset exactly, else in the local time zone (mktime,
// which also settles daylight saving time; a time skipped by a DST change is moved forward by it).
int64_t to_unix(int y, int mo, int d, int h, int mi, int s, std::optional<int> offset_minutes) {
  if (offset_minutes) {
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - int64_t{*offset_minutes} * 60;
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s;
  tm.tm_isdst = -1;
  return static_cast<int64_t>(std::mktime(&tm));
}

// "+08:00", "-0530", "+08", "Z" -> minutes east of UTC. nullopt when malformed.
std::optional<int> parse_offset(const std::string& s) {
  if (s == "Z" || s == "z") return 0;
  if (s.size() < 3 || (s[0] != '+' && s[0] != '-')) return std::nullopt;
  int h = 0, m = 0;
  if (!digits(s, 1, 2, h)) return std::nullopt;
  if (s.size() == 6 && s[3] == ':') {
    if (!digits(s, 4, 2, m)) return std::nullopt;
  } else if (s.size() == 5) {
    if (!digits(s, 3, 2, m)) return std::nullopt;
  } else if (s.size() != 3) {
    return std::nullopt;
  }
  if (h > 18 || m > 59) return std::nullopt;
  const int total = h * 60 + m;
  return s[0] == '-' ? -total : total;
}

// EXIF "YYYY:MM:DD HH:MM:SS" (also with '-' between the date's fields, as some writers do).
bool exif_to_meta(const ExifDate& e, PhotoMeta& m) {
  const std::string& s = e.date_time;
  int y, mo, d, h, mi, sec;
  if (s.size() < 19 || !digits(s, 0, 4, y) || !digits(s, 5, 2, mo) || !digits(s, 8, 2, d) || !digits(s, 11, 2, h) ||
      !digits(s, 14, 2, mi) || !digits(s, 17, 2, sec)) {
    return false;
  }
  if (!valid_date(y, mo, d) || h > 23 || mi > 59 || sec > 60 || y < 1900) return false;
  std::string off = e.offset;
  while (!off.empty() && off.back() == ' ') off.pop_back();
  m.offset_minutes = off.empty() ? std::nullopt : parse_offset(off);
  m.taken_at = to_unix(y, mo, d, h, mi, sec == 60 ? 59 : sec, m.offset_minutes);
  m.source = m.offset_minutes ? TimeSource::kExif : TimeSource::kExifLocal;
  return true;
}

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

}  // namespace

const char* time_source_name(TimeSource s) {
  switch (s) {
    case TimeSource::kExif: return "exif";
    case TimeSource::kExifLocal: return "exif-local";
    case TimeSource::kMtime: return "mtime";
    case TimeSource::kNone: break;
  }
  return "";
}

TimeSource time_source_from_name(const std::string& name) {
  if (name == "exif") return TimeSource::kExif;
  if (name == "exif-local") return TimeSource::kExifLocal;
  if (name == "mtime") return TimeSource::kMtime;
  return TimeSource::kNone;
}

std::optional<ExifDate> read_exif_date(const uint8_t* b, size_t n) {
  if (n >= 4 && b[0] == 0xFF && b[1] == 0xD8) return jpeg_date(b, n);
  if (n >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return png_date(b, n);
  if (n >= 12 && std::memcmp(b, "RIFF", 4) == 0 && std::memcmp(b + 8, "WEBP", 4) == 0) return webp_date(b, n);
  if (n >= 8 && (std::memcmp(b, "II*\0", 4) == 0 || std::memcmp(b, "MM\0*", 4) == 0)) return date_from_tiff(b, n);
  return std::nullopt;
}

PhotoMeta read_photo_meta(const std::vector<uint8_t>& bytes, int64_t mtime_ns) {
  PhotoMeta m;
  auto exif = read_exif_date(bytes.data(), bytes.size());
  if (!exif || !exif_to_meta(*exif, m)) {
    m = PhotoMeta{};
    m.taken_at = floor_div(mtime_ns, 1'000'000'000);
    m.source = TimeSource::kMtime;
  }
  auto header = read_image_header(bytes, "");
  if (header && header.value().width > 0 && header.value().height > 0 && header.value().width <= INT32_MAX &&
      header.value().height <= INT32_MAX) {
    const ImageHeader& h = header.value();
    const bool turned = h.exif_orientation >= 5 && h.exif_orientation <= 8;
    m.width = static_cast<int>(turned ? h.height : h.width);
    m.height = static_cast<int>(turned ? h.width : h.height);
  }
  return m;
}

Result<PhotoMeta> read_photo_meta_file(const std::string& path, int64_t mtime_ns) {
  constexpr size_t kPrefix = 256 * 1024;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_error(path, errno, "cannot open");
  std::vector<uint8_t> bytes(kPrefix);
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      const int err = errno;
      ::close(fd);
      return errno_error(path, err, "read failed");
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  bytes.resize(got);
  // A JPEG's EXIF and frame header precede its image data: a prefix that reaches the frame header
  // holds both. Other formats may keep them anywhere (TIFF's IFD often comes last): the whole file.
  if (got == kPrefix) {
    const bool jpeg = got >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8;
    auto header = read_image_header(bytes, path);
    if (!jpeg || !header || header.value().width <= 0) {
      auto all = read_file_bytes(path);
      if (!all) return all.error();
      bytes = std::move(all).value();
    }
  }
  return read_photo_meta(bytes, mtime_ns);
}

Result<int64_t> parse_time_bound(const std::string& text, const std::string& what) {
  const Error bad{
      ErrorCode::kInvalidArgument,
      what + ": expects a date (2024-05-01) or an ISO time (2024-05-01T08:30:00+08:00), not '" + text + "'"};
  int y, mo, d, h = 0, mi = 0, s = 0;
  if (text.size() < 10 || !digits(text, 0, 4, y) || text[4] != '-' || !digits(text, 5, 2, mo) || text[7] != '-' ||
      !digits(text, 8, 2, d) || !valid_date(y, mo, d)) {
    return bad;
  }
  size_t i = 10;
  if (i < text.size() && (text[i] == 'T' || text[i] == 't' || text[i] == ' ')) {
    if (!digits(text, i + 1, 2, h) || i + 3 >= text.size() || text[i + 3] != ':' || !digits(text, i + 4, 2, mi))
      return bad;
    i += 6;
    if (i < text.size() && text[i] == ':') {
      if (!digits(text, i + 1, 2, s)) return bad;
      i += 3;
      if (i < text.size() && (text[i] == '.' || text[i] == ',')) {  // fractions of a second: dropped
        ++i;
        const size_t from = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
        if (i == from) return bad;
      }
    }
    if (h > 23 || mi > 59 || s > 59) return bad;
  }
  std::optional<int> offset;
  if (i < text.size()) {
    if (i == 10) return bad;  // an offset needs a time
    offset = parse_offset(text.substr(i));
    if (!offset) return bad;
  }
  return to_unix(y, mo, d, h, mi, s, offset);
}

std::string format_time(int64_t t, std::optional<int> offset_minutes) {
  std::tm tm{};
  long off = 0;
  const time_t shifted = static_cast<time_t>(t + (offset_minutes ? int64_t{*offset_minutes} * 60 : 0));
  if (offset_minutes) {
    gmtime_r(&shifted, &tm);
    off = *offset_minutes * 60L;
  } else {
    const time_t tt = static_cast<time_t>(t);
    localtime_r(&tt, &tm);
    off = tm.tm_gmtoff;
  }
  char buf[64];
  const long a = off < 0 ? -off : off;
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d%c%02ld:%02ld", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, off < 0 ? '-' : '+', a / 3600, (a / 60) % 60);
  return buf;
}

}  // namespace cnclip
