// HEIF (HEIC) and AVIF through libheif: the primary image, 8 bits per sample.
//
// Orientation: HEIF does not use the EXIF Orientation tag (the HEIF standard says a reader must
// ignore it); the file's transformation properties say how to show the image: irot (rotation), imir
// (mirror) and clap (clean-aperture crop). libheif applies them while decoding, as viewers do; with
// apply_exif_orientation off (--ignore-exif) they are all left out and the image comes as coded.
// Bit depth: 10- and 12-bit images are asked of libheif as 8-bit RGB (convert_hdr_to_8bit), which
// keeps the high 8 bits of each sample, as pillow-heif's default (HDR to 8 bit) gives them.
// Alpha: an image with an alpha plane is RGBA (straight, or premultiplied when the file says so),
// resized premultiplied as Pillow resizes RGBA.
#include <libheif/heif.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "image_formats.h"

namespace cnclip::detail {
namespace {

struct CtxFree {
  void operator()(heif_context* c) const { heif_context_free(c); }
};
struct HandleFree {
  void operator()(heif_image_handle* h) const { heif_image_handle_release(h); }
};
struct ImageFree {
  void operator()(heif_image* i) const { heif_image_release(i); }
};
struct OptionsFree {
  void operator()(heif_decoding_options* o) const { heif_decoding_options_free(o); }
};

Error heif_failure(const std::string& name, const char* format, const heif_error& e) {
  ErrorCode code = ErrorCode::kCorrupt;
  if (e.code == heif_error_Invalid_input && e.subcode == heif_suberror_End_of_data) code = ErrorCode::kTruncated;
  if (e.code == heif_error_Unsupported_feature || e.code == heif_error_Unsupported_filetype) {
    code = ErrorCode::kUnsupportedFormat;
  }
  if (e.code == heif_error_Memory_allocation_error && e.subcode == heif_suberror_Security_limit_exceeded) {
    code = ErrorCode::kTooLarge;
  }
  return Error{code, name + ": cannot decode " + format +
                         " (libheif: " + std::string(e.message && *e.message ? e.message : "unknown error") + ")"};
}

}  // namespace

bool heif_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height) {
  std::unique_ptr<heif_context, CtxFree> ctx(heif_context_alloc());
  if (!ctx) return false;
  if (heif_context_read_from_memory_without_copy(ctx.get(), bytes.data(), bytes.size(), nullptr).code !=
      heif_error_Ok) {
    return false;
  }
  heif_image_handle* raw_handle = nullptr;
  if (heif_context_get_primary_image_handle(ctx.get(), &raw_handle).code != heif_error_Ok) return false;
  std::unique_ptr<heif_image_handle, HandleFree> handle(raw_handle);
  *width = heif_image_handle_get_width(handle.get());
  *height = heif_image_handle_get_height(handle.get());
  return *width > 0 && *height > 0;
}

Result<DecodedImage> decode_heif(const std::vector<uint8_t>& bytes, const std::string& name,
                                 const DecodeOptions& options, const char* format) {
  std::unique_ptr<heif_context, CtxFree> ctx(heif_context_alloc());
  if (!ctx) return Error{ErrorCode::kInternal, name + ": cannot decode " + format + " (out of memory)"};
  // The caller decodes files on several threads already: libheif decodes a grid's tiles in this one.
  heif_context_set_max_decoding_threads(ctx.get(), 0);
  heif_error e = heif_context_read_from_memory_without_copy(ctx.get(), bytes.data(), bytes.size(), nullptr);
  if (e.code != heif_error_Ok) return heif_failure(name, format, e);
  heif_image_handle* raw_handle = nullptr;
  e = heif_context_get_primary_image_handle(ctx.get(), &raw_handle);
  if (e.code != heif_error_Ok) return heif_failure(name, format, e);
  std::unique_ptr<heif_image_handle, HandleFree> handle(raw_handle);

  // The pixel limit, before decoding: the stored size (ispe) and the shown one (after irot/clap).
  const int64_t w = heif_image_handle_get_width(handle.get()), h = heif_image_handle_get_height(handle.get());
  const int64_t iw = heif_image_handle_get_ispe_width(handle.get());
  const int64_t ih = heif_image_handle_get_ispe_height(handle.get());
  const int64_t cw = std::max(w, iw), ch = std::max(h, ih);
  if (static_cast<double>(cw) * static_cast<double>(ch) > static_cast<double>(options.max_pixels)) {
    return too_large_error(name, cw, ch, options.max_pixels);
  }
  if (w <= 0 || h <= 0) return Error{ErrorCode::kCorrupt, name + ": cannot decode " + format + " (no image size)"};
  // The boxes above are not what libheif allocates: a grid image is as large as its grid data says
  // (an 800-byte file found by fuzzing declares 48x32 in ispe and has a 20039x19744 grid: 395 MP,
  // over 2 GB and minutes of work). libheif refuses a grid larger than its per-side limit (its own
  // test is width >= limit), so no side may exceed the declared largest side; the product is checked
  // against --max-pixels again after decoding, before any copy (the coded frame of a single image
  // comes from the codec's stream, which libheif 1.15 does not check against these boxes).
  heif_context_set_maximum_image_size_limit(ctx.get(),
                                            static_cast<int>(std::min<int64_t>(std::max(cw, ch), INT32_MAX - 1) + 1));

  const bool alpha = heif_image_handle_has_alpha_channel(handle.get()) != 0;
  std::unique_ptr<heif_decoding_options, OptionsFree> decoding(heif_decoding_options_alloc());
  decoding->ignore_transformations = options.apply_exif_orientation ? 0 : 1;
  decoding->convert_hdr_to_8bit = 1;
  heif_image* raw_image = nullptr;
  e = heif_decode_image(handle.get(), &raw_image, heif_colorspace_RGB,
                        alpha ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB, decoding.get());
  if (e.code == heif_error_Memory_allocation_error && e.subcode == heif_suberror_Security_limit_exceeded) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode " + format + " (its coded image is larger than the " +
                                          std::to_string(cw) + "x" + std::to_string(ch) + " it declares)"};
  }
  if (e.code != heif_error_Ok) return heif_failure(name, format, e);
  std::unique_ptr<heif_image, ImageFree> image(raw_image);
  int stride = 0;
  const uint8_t* plane = heif_image_get_plane_readonly(image.get(), heif_channel_interleaved, &stride);
  const int out_w = heif_image_get_width(image.get(), heif_channel_interleaved);
  const int out_h = heif_image_get_height(image.get(), heif_channel_interleaved);
  const int bits = heif_image_get_bits_per_pixel_range(image.get(), heif_channel_interleaved);
  const int channels = alpha ? 4 : 3;
  if (static_cast<double>(out_w) * static_cast<double>(out_h) > static_cast<double>(options.max_pixels)) {
    return too_large_error(name, out_w, out_h, options.max_pixels);
  }
  if (!plane || out_w <= 0 || out_h <= 0 || bits != 8 || stride < out_w * channels) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode " + format + " (libheif gave no 8-bit RGB image)"};
  }
  DecodedImage out;
  out.format = format;
  out.original_width = static_cast<int>(w);
  out.original_height = static_cast<int>(h);
  out.mode = alpha ? PixelMode::kRGBA : PixelMode::kRGB;
  out.alpha_premultiplied = alpha && heif_image_is_premultiplied_alpha(image.get()) != 0;
  // Copied out: the plane belongs to the heif_image released on return.
  cv::Mat(out_h, out_w, CV_8UC(channels), const_cast<uint8_t*>(plane), static_cast<size_t>(stride)).copyTo(out.pixels);
  return out;
}

}  // namespace cnclip::detail
