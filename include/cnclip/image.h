// Image files -> the model's input tensor, exactly as Chinese-CLIP's Python preprocessing makes it
// (PIL.Image.open, resize to RxR with Pillow's BICUBIC, convert("RGB"), ToTensor, Normalize).
//
// Decoding is OpenCV's; the resize is our own reimplementation of Pillow 9.4's resampling (separable
// bicubic with fixed-point weights, palette images nearest, RGBA premultiplied) because no OpenCV or
// LibTorch filter reproduces it (see ../shared/fixtures/README.md). All functions are thread-safe.
#pragma once

#include <opencv2/core/mat.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/error.h"
#include "cnclip/image_options.h"

namespace cnclip {

// How Pillow would hold the decoded pixels; it decides how the image is resized.
enum class PixelMode {
  kGray,     // "L": resized as one channel, then copied to R, G, B
  kRGB,      // "RGB"
  kRGBA,     // "RGBA": resized premultiplied, alpha then dropped without compositing
  kPalette,  // "P" or "1": Pillow forces NEAREST resampling
  kCMYK,     // "CMYK" (4-component JPEG): the 4 inks resized, then Pillow's CMYK -> RGB conversion
};

struct DecodedImage {
  cv::Mat pixels;  // CV_8UC1 (kGray) or CV_8UC3 / CV_8UC4, channels in R, G, B(, A) order;
                   // kCMYK: CV_8UC4 C, M, Y, K as Pillow holds them (0 = no ink)
  PixelMode mode = PixelMode::kRGB;
  std::string format;  // "jpeg", "png", "webp", "bmp", "tiff", "gif", "heif", "avif", "raw"
  // kRGBA only: colour already multiplied by alpha (libtiff's RGBA reader does that for TIFF).
  bool alpha_premultiplied = false;
  int original_width = 0, original_height = 0;  // as stored, before any reduced decode
};

// File name extensions (lower case, no dot) of the camera RAW formats decoded through LibRaw.
const std::vector<std::string>& raw_extensions();
// What the header alone says (no decoding): the format ("jpeg", ...), the size as stored, and a
// JPEG's EXIF orientation (1 when absent; the decoder turns JPEGs by it). Bytes that stop early (a
// file's first part) are fine: width and height are 0 when the header was not reached. Errors:
// kUnsupportedFormat (not a format the decoder reads).
struct ImageHeader {
  std::string format;
  int64_t width = 0, height = 0;
  int exif_orientation = 1;
};
Result<ImageHeader> read_image_header(const std::vector<uint8_t>& bytes, const std::string& name);

// Reads a whole file; errors name the file (missing, a directory, unreadable, empty).
Result<std::vector<uint8_t>> read_file_bytes(const std::string& path);

// Decodes image bytes; the format is found from the content. `name` is used in error messages, and
// decides only for TIFF-based RAW files without a signature of their own (NEF, ARW, PEF...: a TIFF
// named with one of raw_extensions() is decoded as RAW). Formats: JPEG, PNG (an APNG's default
// image, Pillow's first frame), WebP (an animation's first frame), BMP, TIFF and GIF (first frame),
// as Pillow 9.4 reads them; HEIF/HEIC and AVIF (libheif: primary image), camera RAW (LibRaw).
// The size in the header is checked against max_pixels before any pixel is decoded. Errors:
// kUnsupportedFormat, kTruncated, kCorrupt, kTooLarge.
Result<DecodedImage> decode_image(const std::vector<uint8_t>& bytes, const std::string& name,
                                  const DecodeOptions& options);
Result<DecodedImage> decode_image_file(const std::string& path, const DecodeOptions& options);

// Pillow's Image.resize((out_w, out_h), BICUBIC) followed by convert("RGB"): a CV_8UC3 RGB image.
cv::Mat resize_like_pillow(const DecodedImage& image, int out_w, int out_h);

// ToTensor + Normalize of a CV_8UC3 RGB image of size norm.size: writes 3*size*size floats (CHW).
void normalize_to_chw(const cv::Mat& rgb, const Normalization& norm, float* out);

// decode + resize + normalize; `out` holds 3*R*R floats.
Status preprocess_image(const std::vector<uint8_t>& bytes, const std::string& name, const Normalization& norm,
                        const DecodeOptions& options, float* out);
// The same from a file (read errors name it too).
Status preprocess_image_file(const std::string& path, const Normalization& norm, const DecodeOptions& options,
                             float* out);

}  // namespace cnclip
