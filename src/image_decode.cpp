// Decoding: format sniffing, header checks (size limit, truncation) and OpenCV decoding into the
// pixel layout Pillow would use.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <jpeglib.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <optional>

#include "cnclip/image.h"
#include "cnclip/runtime.h"
#include "image_formats.h"

namespace cnclip {
namespace {

enum class Format { kUnknown, kJpeg, kPng, kWebp, kBmp, kTiff, kGif, kHeif, kAvif, kRaw };

uint32_t be16(const uint8_t* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t be32(const uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
uint32_t le16(const uint8_t* p) { return (uint32_t{p[1]} << 8) | p[0]; }
uint32_t le32(const uint8_t* p) { return (le16(p + 2) << 16) | le16(p); }

bool has_brand(const uint8_t* p, std::initializer_list<const char*> brands) {
  for (const char* brand : brands) {
    if (std::memcmp(p, brand, 4) == 0) return true;
  }
  return false;
}

// ISO base media files (HEIF, AVIF, Canon CR3) by their ftyp box: the major brand, then the
// compatible brands (a "mif1" file holding AV1 images lists "avif").
Format sniff_ftyp(const std::vector<uint8_t>& b) {
  if (b.size() < 16 || std::memcmp(&b[4], "ftyp", 4) != 0) return Format::kUnknown;
  const size_t box = std::min<size_t>(be32(&b[0]), b.size());
  if (has_brand(&b[8], {"crx "})) return Format::kRaw;
  if (has_brand(&b[8], {"avif", "avis"})) return Format::kAvif;
  const bool hevc = has_brand(&b[8], {"heic", "heix", "hevc", "hevx", "heim", "heis", "hevm", "hevs"});
  if (hevc) return Format::kHeif;
  bool mif = has_brand(&b[8], {"mif1", "msf1"}), av1 = false;
  for (size_t at = 16; at + 4 <= box; at += 4) {
    if (has_brand(&b[at], {"heic", "heix", "hevc", "hevx"})) return Format::kHeif;
    av1 |= has_brand(&b[at], {"avif", "avis"});
    mif |= has_brand(&b[at], {"mif1", "msf1"});
  }
  if (av1) return Format::kAvif;
  if (mif) return Format::kHeif;
  return Format::kUnknown;
}

// File name extensions of RAW formats that are TIFF files inside (NEF, ARW, PEF...): those have no
// signature of their own, and their first IFD is only a thumbnail, so the name decides.
bool raw_name(const std::string& name) {
  const auto dot = name.find_last_of('.');
  if (dot == std::string::npos || name.find('/', dot) != std::string::npos) return false;
  std::string ext = name.substr(dot + 1);
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto& raws = raw_extensions();
  return std::find(raws.begin(), raws.end(), ext) != raws.end();
}

// A TIFF whose first IFD has the DNGVersion tag (50706) is a DNG.
bool tiff_is_dng(const std::vector<uint8_t>& b) {
  const bool little = b[0] == 'I';
  auto u16 = [&](size_t at) { return little ? le16(&b[at]) : be16(&b[at]); };
  const size_t ifd = little ? le32(&b[4]) : be32(&b[4]);
  if (b.size() < 8 || ifd + 2 > b.size()) return false;
  const size_t count = u16(ifd);
  for (size_t e = 0; e < count && ifd + 2 + e * 12 + 12 <= b.size(); ++e) {
    if (u16(ifd + 2 + e * 12) == 50706) return true;
  }
  return false;
}

Format sniff(const std::vector<uint8_t>& b, const std::string& name) {
  auto starts = [&](const char* magic, size_t n, size_t at = 0) {
    return b.size() >= at + n && std::memcmp(b.data() + at, magic, n) == 0;
  };
  if (starts("\xFF\xD8\xFF", 3)) return Format::kJpeg;
  if (starts("\x89PNG\r\n\x1a\n", 8)) return Format::kPng;
  if (starts("RIFF", 4) && starts("WEBP", 4, 8)) return Format::kWebp;
  if (starts("BM", 2) && b.size() >= 30) return Format::kBmp;
  if (starts("II*\0", 4) || starts("MM\0*", 4)) {
    if (starts("CR\x02", 3, 8) || (b.size() >= 8 && tiff_is_dng(b)) || raw_name(name)) return Format::kRaw;
    return Format::kTiff;
  }
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return Format::kGif;
  // RAW formats with their own signature: Olympus ORF, Panasonic RW2, Fujifilm RAF, Canon CRW,
  // Minolta MRW, Sigma X3F.
  if (starts("IIRO", 4) || starts("IIRS", 4) || starts("MMOR", 4) || starts("IIU\0", 4) ||
      starts("FUJIFILMCCD-RAW", 15) || starts("II\x1a\0\0\0HEAPCCDR", 14) || starts("\0MRM", 4) || starts("FOVb", 4)) {
    return Format::kRaw;
  }
  return sniff_ftyp(b);
}

const char* format_name(Format f) {
  switch (f) {
    case Format::kJpeg: return "jpeg";
    case Format::kPng: return "png";
    case Format::kWebp: return "webp";
    case Format::kBmp: return "bmp";
    case Format::kTiff: return "tiff";
    case Format::kGif: return "gif";
    case Format::kHeif: return "heif";
    case Format::kAvif: return "avif";
    case Format::kRaw: return "raw";
    case Format::kUnknown: break;
  }
  return "unknown";
}

struct HeaderInfo {
  int64_t width = 0, height = 0;
  bool truncated = false;
  PixelMode mode_hint = PixelMode::kRGB;
  bool mode_known = false;
  int components = 0;        // JPEG: colour components of the first frame (4: CMYK or YCCK)
  int exif_orientation = 1;  // JPEG: the EXIF Orientation tag of the first APP1 Exif segment
  bool animated = false;     // WebP: the VP8X header's animation flag
};

// The Orientation tag (0x0112) of an APP1 "Exif" segment's first IFD; 1 when absent or unreadable.
int exif_orientation(const uint8_t* seg, size_t len) {
  if (len < 14 || std::memcmp(seg, "Exif\0\0", 6) != 0) return 1;
  const uint8_t* t = seg + 6;
  const size_t n = len - 6;
  const bool little = t[0] == 'I' && t[1] == 'I';
  if (!little && !(t[0] == 'M' && t[1] == 'M')) return 1;
  auto u16 = [&](size_t at) { return little ? le16(t + at) : be16(t + at); };
  auto u32 = [&](size_t at) { return little ? le32(t + at) : be32(t + at); };
  const size_t ifd = u32(4);
  if (ifd + 2 > n) return 1;
  const size_t count = u16(ifd);
  for (size_t e = 0; e < count && ifd + 2 + e * 12 + 12 <= n; ++e) {
    const size_t at = ifd + 2 + e * 12;
    if (u16(at) == 0x0112 && u16(at + 2) == 3) {
      const int v = static_cast<int>(u16(at + 8));
      return v >= 1 && v <= 8 ? v : 1;
    }
  }
  return 1;
}

// Walks the JPEG marker structure: the first SOF gives the size, and the file is complete only when
// the EOI marker is reached after the entropy-coded scans (libjpeg would otherwise pad the missing
// data with grey and only warn; Pillow refuses such a file, and so do we).
HeaderInfo parse_jpeg(const std::vector<uint8_t>& b) {
  HeaderInfo info;
  size_t i = 2;
  const size_t n = b.size();
  bool seen_exif = false;
  while (true) {
    while (i < n && b[i] != 0xFF) ++i;  // tolerate junk between segments, as libjpeg does
    while (i < n && b[i] == 0xFF) ++i;  // fill bytes
    if (i >= n) {
      info.truncated = true;
      return info;
    }
    const uint8_t marker = b[i++];
    if (marker == 0xD9) return info;                                     // EOI
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // no length
    if (i + 2 > n) {
      info.truncated = true;
      return info;
    }
    const size_t len = be16(&b[i]);
    if (len < 2 || i + len > n) {
      info.truncated = true;
      return info;
    }
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof && info.width == 0 && len >= 8) {
      info.height = be16(&b[i + 3]);
      info.width = be16(&b[i + 5]);
      info.components = b[i + 7];
    }
    if (marker == 0xE1 && !seen_exif && len > 2 && std::memcmp(&b[i + 2], "Exif", std::min<size_t>(4, len - 2)) == 0) {
      seen_exif = true;  // the first Exif segment, as OpenCV and Pillow read it
      info.exif_orientation = exif_orientation(&b[i + 2], len - 2);
    }
    i += len;
    if (marker == 0xDA) {  // SOS: skip entropy-coded data up to the next real marker
      while (i + 1 < n && !(b[i] == 0xFF && b[i + 1] != 0x00 && !(b[i + 1] >= 0xD0 && b[i + 1] <= 0xD7))) ++i;
      if (i + 1 >= n) {
        info.truncated = true;
        return info;
      }
    }
  }
}

// PNG: IHDR gives size and colour type (which decides Pillow's mode); complete only with IEND.
HeaderInfo parse_png(const std::vector<uint8_t>& b) {
  HeaderInfo info;
  if (b.size() < 33) {
    info.truncated = true;
    return info;
  }
  info.width = be32(&b[16]);
  info.height = be32(&b[20]);
  const int depth = b[24], colour = b[25];
  info.mode_known = true;
  switch (colour) {
    case 0: info.mode_hint = depth == 1 ? PixelMode::kPalette : PixelMode::kGray; break;
    case 3: info.mode_hint = PixelMode::kPalette; break;
    case 4:
    case 6: info.mode_hint = PixelMode::kRGBA; break;
    default: info.mode_hint = PixelMode::kRGB; break;
  }
  size_t i = 8;
  while (true) {
    if (i + 12 > b.size()) {
      info.truncated = true;
      return info;
    }
    const size_t len = be32(&b[i]);
    if (std::memcmp(&b[i + 4], "IEND", 4) == 0) return info;
    if (len > b.size() || i + 12 + len > b.size()) {
      info.truncated = true;
      return info;
    }
    i += 12 + len;
  }
}

HeaderInfo parse_webp(const std::vector<uint8_t>& b) {
  HeaderInfo info;
  if (b.size() < 30 || size_t{le32(&b[4])} + 8 > b.size()) {
    info.truncated = true;
    return info;
  }
  if (std::memcmp(&b[12], "VP8 ", 4) == 0) {
    info.width = le16(&b[26]) & 0x3FFF;
    info.height = le16(&b[28]) & 0x3FFF;
  } else if (std::memcmp(&b[12], "VP8L", 4) == 0) {
    const uint32_t bits = le32(&b[21]);
    info.width = (bits & 0x3FFF) + 1;
    info.height = ((bits >> 14) & 0x3FFF) + 1;
  } else if (std::memcmp(&b[12], "VP8X", 4) == 0) {
    info.width = (b[24] | (b[25] << 8) | (b[26] << 16)) + 1;
    info.height = (b[27] | (b[28] << 8) | (b[29] << 16)) + 1;
    info.animated = (b[20] & 0x02) != 0;
  }
  return info;
}

HeaderInfo parse_bmp(const std::vector<uint8_t>& b) {
  HeaderInfo info;
  info.width = static_cast<int32_t>(le32(&b[18]));
  info.height = std::abs(static_cast<int64_t>(static_cast<int32_t>(le32(&b[22]))));
  const int bpp = static_cast<int>(le16(&b[28]));
  info.mode_known = true;
  info.mode_hint = bpp <= 8 ? PixelMode::kPalette : PixelMode::kRGB;  // Pillow: "P"/"1", else RGB
  if (size_t{le32(&b[2])} > b.size()) info.truncated = true;
  return info;
}

// TIFF: width and length of the first IFD (tags 256 and 257).
HeaderInfo parse_tiff(const std::vector<uint8_t>& b) {
  HeaderInfo info;
  const bool little = b[0] == 'I';
  auto u16 = [&](size_t at) { return little ? le16(&b[at]) : be16(&b[at]); };
  auto u32 = [&](size_t at) { return little ? le32(&b[at]) : be32(&b[at]); };
  if (b.size() < 8) {
    info.truncated = true;
    return info;
  }
  size_t ifd = u32(4);
  if (ifd + 2 > b.size()) {
    info.truncated = true;
    return info;
  }
  const size_t count = u16(ifd);
  for (size_t e = 0; e < count; ++e) {
    const size_t at = ifd + 2 + e * 12;
    if (at + 12 > b.size()) {
      info.truncated = true;
      return info;
    }
    const uint32_t tag = u16(at), type = u16(at + 2);
    const int64_t value = type == 3 ? u16(at + 8) : u32(at + 8);
    if (tag == 256) info.width = value;
    if (tag == 257) info.height = value;
  }
  return info;
}

Error decode_error(ErrorCode code, const std::string& name, const std::string& why) {
  return Error{code, name + ": " + why};
}

// libjpeg reports fatal errors through error_exit, which must not return: jump back to the caller.
struct JpegErrorManager {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Runs libjpeg into *out; false with err->message set on a fatal error. Holds the setjmp: no C++
// object lives in this frame (out is the caller's), so the longjmp skips no destructor.
bool read_cmyk_scanlines(jpeg_decompress_struct* cinfo, JpegErrorManager* err, const std::vector<uint8_t>& bytes,
                         int scale_denom, cv::Mat* out) {
  cinfo->err = jpeg_std_error(&err->mgr);
  err->mgr.error_exit = jpeg_error_exit;
  if (setjmp(err->jump)) {
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(cinfo, TRUE);
  if (cinfo->num_components != 4) {
    std::snprintf(err->message, sizeof err->message, "not a 4-component image");
    jpeg_destroy_decompress(cinfo);
    return false;
  }
  cinfo->out_color_space = JCS_CMYK;
  cinfo->scale_num = 1;
  cinfo->scale_denom = static_cast<unsigned int>(scale_denom);
  jpeg_start_decompress(cinfo);
  out->create(static_cast<int>(cinfo->output_height), static_cast<int>(cinfo->output_width), CV_8UC4);
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = out->ptr<uint8_t>(static_cast<int>(cinfo->output_scanline));
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  jpeg_destroy_decompress(cinfo);
  return true;
}

// A 4-component (CMYK or YCCK) JPEG as Pillow holds it: libjpeg's CMYK output (same library and
// defaults as Pillow: islow IDCT, fancy upsampling), inverted as Pillow's "CMYK;I" raw mode does
// (Pillow assumes Adobe's inverted convention for every CMYK JPEG), scaled by 1/scale_denom with
// libjpeg's DCT scaling (as OpenCV's IMREAD_REDUCED_*). OpenCV can only give these as RGB, converted
// before the resize, which is ~2 levels from Pillow's resize-then-convert. Warnings go to stderr as
// libjpeg prints them (attributed by the caller's DecodingFile).
Result<cv::Mat> decode_cmyk_jpeg(const std::vector<uint8_t>& bytes, const std::string& name, int scale_denom) {
  jpeg_decompress_struct cinfo{};
  JpegErrorManager err{};
  cv::Mat out;
  if (!read_cmyk_scanlines(&cinfo, &err, bytes, scale_denom, &out)) {
    return decode_error(ErrorCode::kCorrupt, name, std::string("cannot decode jpeg (") + err.message + ")");
  }
  cv::bitwise_not(out, out);
  return out;
}

// EXIF orientation applied the way OpenCV's imdecode applies it to the other JPEGs.
void apply_exif_orientation(cv::Mat& m, int orientation) {
  switch (orientation) {
    case 2: cv::flip(m, m, 1); break;
    case 3: cv::flip(m, m, -1); break;
    case 4: cv::flip(m, m, 0); break;
    case 5: cv::transpose(m, m); break;
    case 6:
      cv::transpose(m, m);
      cv::flip(m, m, 1);
      break;
    case 7:
      cv::transpose(m, m);
      cv::flip(m, m, -1);
      break;
    case 8:
      cv::transpose(m, m);
      cv::flip(m, m, 0);
      break;
    default: break;
  }
}

}  // namespace

std::string megapixels_text(double pixels) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6f", pixels / 1e6);
  std::string out = buf;
  while (out.back() == '0') out.pop_back();
  if (out.back() == '.') out.pop_back();
  return out;
}

namespace detail {

Error too_large_error(const std::string& name, int64_t width, int64_t height, int64_t max_pixels) {
  // Both in megapixels with the decimals they need: a limit under 1 MP (--max-pixels 0.5) and an
  // image just over a whole limit must not both read "0 MP" or "100 MP".
  const double pixels = static_cast<double>(width) * static_cast<double>(height);
  return decode_error(ErrorCode::kTooLarge, name,
                      "image is " + std::to_string(width) + "x" + std::to_string(height) + " (" +
                          megapixels_text(pixels) + " MP), over the limit of " +
                          megapixels_text(static_cast<double>(max_pixels)) + " MP (--max-pixels)");
}

bool jpeg_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height) {
  if (sniff(bytes, "") != Format::kJpeg) return false;
  const HeaderInfo info = parse_jpeg(bytes);
  if (info.width <= 0 || info.height <= 0) return false;
  *width = info.width;
  *height = info.height;
  return true;
}

}  // namespace detail

const std::vector<std::string>& raw_extensions() {
  static const std::vector<std::string> extensions{"dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf",
                                                   "sr2", "orf", "rw2", "raf", "pef", "srw", "rwl", "x3f",
                                                   "3fr", "erf", "kdc", "dcr", "mef", "mos", "mrw", "iiq"};
  return extensions;
}

Result<std::vector<uint8_t>> read_file_bytes(const std::string& path) {
  // O_NONBLOCK: a FIFO named like a photo must not hang the run (regular files ignore the flag).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return errno_error(path, errno, "cannot open");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return errno_error(path, err, "cannot stat");
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return Error{ErrorCode::kUnsupportedFormat, path + ": is a directory, not an image"};
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Error{ErrorCode::kUnsupportedFormat, path + ": not a regular file"};
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < bytes.size()) {
    ssize_t r = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int err = errno;
      ::close(fd);
      return errno_error(path, err, "read failed");
    }
    if (r == 0) break;  // the file shrank while we read it
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  bytes.resize(got);
  if (bytes.empty()) return Error{ErrorCode::kCorrupt, path + ": empty file (0 bytes)"};
  return bytes;
}

// The header of a format cnclip parses itself (JPEG, PNG, WebP, BMP, TIFF); nullopt for the others.
static std::optional<HeaderInfo> parse_header(Format format, const std::vector<uint8_t>& bytes) {
  switch (format) {
    case Format::kJpeg: return parse_jpeg(bytes);
    case Format::kPng: return parse_png(bytes);
    case Format::kWebp: return parse_webp(bytes);
    case Format::kBmp: return parse_bmp(bytes);
    case Format::kTiff: return parse_tiff(bytes);
    default: return std::nullopt;
  }
}

Result<DecodedImage> decode_image(const std::vector<uint8_t>& bytes, const std::string& name,
                                  const DecodeOptions& options) {
  if (bytes.empty()) return decode_error(ErrorCode::kCorrupt, name, "empty file (0 bytes)");
  const Format format = sniff(bytes, name);
  const std::optional<HeaderInfo> parsed = parse_header(format, bytes);
  if (!parsed) {
    if (format == Format::kUnknown) {
      return decode_error(ErrorCode::kUnsupportedFormat, name,
                          "unsupported format (not JPEG, PNG, WebP, BMP, TIFF, GIF, HEIF, AVIF or camera RAW)");
    }
    // GIF, HEIF, AVIF, RAW: their decoders check the size in the header (and refuse it over the
    // limit) before decoding.
    DecodingFile attribution(name, format_name(format));
    if (format == Format::kGif) return detail::decode_gif(bytes, name, options);
    if (format == Format::kRaw) return detail::decode_raw(bytes, name, options);
    return detail::decode_heif(bytes, name, options, format_name(format));
  }
  const HeaderInfo& info = *parsed;
  if (info.truncated) {
    return decode_error(ErrorCode::kTruncated, name,
                        std::string("truncated ") + format_name(format) + " (file ends early)");
  }
  if (info.width < 0 || info.height < 0) return decode_error(ErrorCode::kCorrupt, name, "invalid image size");
  // In double: header sizes go up to 2^32 each (TIFF), whose product overflows int64; the limit
  // (at most 1e12 pixels) is exact in double.
  const double pixels = static_cast<double>(info.width) * static_cast<double>(info.height);
  if (pixels > static_cast<double>(options.max_pixels)) {
    return detail::too_large_error(name, info.width, info.height, options.max_pixels);
  }

  if (format == Format::kWebp && info.animated) {
    DecodingFile attribution(name, format_name(format));
    return detail::decode_webp_animation(bytes, name, options);
  }

  int flags = cv::IMREAD_UNCHANGED;
  int scale_denom = 1;  // JPEG: DCT-scaled decoding
  if (format == Format::kJpeg) {
    flags = cv::IMREAD_COLOR;  // (gray JPEGs come out as RGB, R=G=B)
    if (options.reduced_decode_min_side > 0 && info.width > 0 && info.height > 0) {
      const int64_t shortest = std::min(info.width, info.height);
      if (shortest / 8 >= options.reduced_decode_min_side) flags = cv::IMREAD_REDUCED_COLOR_8, scale_denom = 8;
      else if (shortest / 4 >= options.reduced_decode_min_side) flags = cv::IMREAD_REDUCED_COLOR_4, scale_denom = 4;
      else if (shortest / 2 >= options.reduced_decode_min_side) flags = cv::IMREAD_REDUCED_COLOR_2, scale_denom = 2;
    }
    if (!options.apply_exif_orientation) flags |= cv::IMREAD_IGNORE_ORIENTATION;
  }
  cv::Mat raw;
  DecodingFile attribution(name, format_name(format));  // libjpeg/libpng warnings are reported under this name
  if (format == Format::kJpeg && info.components == 4) {
    // CMYK stays CMYK until after the resize, as in Pillow (see decode_cmyk_jpeg).
    auto cmyk = decode_cmyk_jpeg(bytes, name, scale_denom);
    if (!cmyk) return cmyk.error();
    DecodedImage out;
    out.pixels = std::move(cmyk.value());
    if (options.apply_exif_orientation) apply_exif_orientation(out.pixels, info.exif_orientation);
    out.mode = PixelMode::kCMYK;
    out.format = format_name(format);
    out.original_width = static_cast<int>(info.width);
    out.original_height = static_cast<int>(info.height);
    return out;
  }
  try {
    raw = cv::imdecode(cv::Mat(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<uint8_t*>(bytes.data())), flags);
  } catch (const cv::Exception& e) {
    return decode_error(ErrorCode::kCorrupt, name,
                        std::string("cannot decode ") + format_name(format) + " (" + e.err + ")");
  }
  if (raw.empty()) {
    return decode_error(ErrorCode::kCorrupt, name,
                        std::string("cannot decode ") + format_name(format) + " (corrupt or unsupported variant)");
  }
  if (raw.depth() == CV_16U) {
    // Pillow 9.4 keeps the high byte of each 16-bit sample.
    cv::Mat high(raw.rows, raw.cols, CV_8UC(raw.channels()));
    for (int y = 0; y < raw.rows; ++y) {
      const uint16_t* s = raw.ptr<uint16_t>(y);
      uint8_t* d = high.ptr<uint8_t>(y);
      for (int x = 0; x < raw.cols * raw.channels(); ++x) d[x] = static_cast<uint8_t>(s[x] >> 8);
    }
    raw = high;
  } else if (raw.depth() != CV_8U) {
    return decode_error(ErrorCode::kUnsupportedFormat, name, "unsupported sample type (not 8 or 16 bit)");
  }

  DecodedImage out;
  out.format = format_name(format);
  out.original_width = static_cast<int>(info.width > 0 ? info.width : raw.cols);
  out.original_height = static_cast<int>(info.height > 0 ? info.height : raw.rows);
  const int ch = raw.channels();
  PixelMode mode = info.mode_known ? info.mode_hint
                                   : (ch == 1   ? PixelMode::kGray
                                      : ch == 4 ? PixelMode::kRGBA
                                                : PixelMode::kRGB);
  if (format == Format::kBmp && ch == 4) mode = PixelMode::kRGB;  // Pillow reads 32-bit BMP as RGB
  if (mode == PixelMode::kGray && ch != 1) mode = ch == 4 ? PixelMode::kRGBA : PixelMode::kRGB;
  switch (ch) {
    case 1:
      if (mode == PixelMode::kGray) {
        out.pixels = raw;
      } else {
        cv::cvtColor(raw, out.pixels, cv::COLOR_GRAY2RGB);
      }
      break;
    case 3:
      cv::cvtColor(raw, out.pixels, cv::COLOR_BGR2RGB);
      if (mode == PixelMode::kRGBA) mode = PixelMode::kRGB;
      break;
    case 4:
      if (mode == PixelMode::kRGBA) {
        cv::cvtColor(raw, out.pixels, cv::COLOR_BGRA2RGBA);
      } else {
        // A tRNS chunk or padding byte; Pillow keeps these images without alpha.
        cv::cvtColor(raw, out.pixels, cv::COLOR_BGRA2RGB);
      }
      break;
    default:
      return decode_error(ErrorCode::kUnsupportedFormat, name, "unsupported channel count " + std::to_string(ch));
  }
  out.mode = mode;
  out.alpha_premultiplied = mode == PixelMode::kRGBA && format == Format::kTiff;
  return out;
}

Result<ImageHeader> read_image_header(const std::vector<uint8_t>& bytes, const std::string& name) {
  const Format format = bytes.empty() ? Format::kUnknown : sniff(bytes, name);
  const std::optional<HeaderInfo> parsed = parse_header(format, bytes);
  // Formats read by other libraries: the size where it is cheap to get (container boxes, RAW
  // metadata, GIF's logical screen), already upright; 0 when the bytes do not reach it.
  if (!parsed &&
      (format == Format::kHeif || format == Format::kAvif || format == Format::kRaw || format == Format::kGif)) {
    int64_t w = 0, h = 0;
    if (format == Format::kGif) {
      if (bytes.size() >= 10) w = le16(bytes.data() + 6), h = le16(bytes.data() + 8);
    } else if (!(format == Format::kRaw ? detail::raw_size(bytes, &w, &h) : detail::heif_size(bytes, &w, &h))) {
      w = h = 0;
    }
    return ImageHeader{format_name(format), w, h, 1};
  }
  if (!parsed) {
    return decode_error(ErrorCode::kUnsupportedFormat, name,
                        std::string("unsupported format (") + format_name(format) + ")");
  }
  const HeaderInfo& info = *parsed;
  return ImageHeader{format_name(format), std::max<int64_t>(info.width, 0), std::max<int64_t>(info.height, 0),
                     info.exif_orientation};
}

Result<DecodedImage> decode_image_file(const std::string& path, const DecodeOptions& options) {
  auto bytes = read_file_bytes(path);
  if (!bytes) return bytes.error();
  return decode_image(bytes.value(), path, options);
}

Status preprocess_image(const std::vector<uint8_t>& bytes, const std::string& name, const Normalization& norm,
                        const DecodeOptions& options, float* out) {
  auto decoded = decode_image(bytes, name, options);
  if (!decoded) return decoded.error();
  cv::Mat rgb = resize_like_pillow(decoded.value(), norm.size, norm.size);
  normalize_to_chw(rgb, norm, out);
  return {};
}

Status preprocess_image_file(const std::string& path, const Normalization& norm, const DecodeOptions& options,
                             float* out) {
  auto bytes = read_file_bytes(path);
  if (!bytes) return bytes.error();
  return preprocess_image(bytes.value(), path, norm, options, out);
}

}  // namespace cnclip
