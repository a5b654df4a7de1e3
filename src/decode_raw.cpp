// Camera RAW through LibRaw (thread-safe libraw_r; one LibRaw object per call).
//
// What is decoded: the embedded JPEG preview, when its shorter side is at least
// options.raw_preview_min_side (twice the model's input side: 448 px for ViT-B-16, so the bicubic
// resize still has twice the detail it keeps). A camera's preview is its own rendering of the photo
// (white balance, tone curve) and costs a JPEG decode. Measured (`cnclip preprocess`, CPU time less
// the process start-up, 2026-11-29) on a 24 MP uncompressed DNG: its 6 MP preview 0.1 s, the
// half-size demosaic 0.4 s (a full-size one would cost several times that). Otherwise (no preview, a small one, or a
// format LibRaw gives as a bitmap) the raw data is demosaiced at half size (LibRaw's half_size: one RGB pixel per 2x2
// Bayer block, no interpolation), with the camera's white balance, sRGB output, 8 bits and LibRaw's default BT.709
// gamma and auto-brightness (what `dcraw_emu -w -h` writes). Orientation: the RAW's own orientation (LibRaw's flip,
// from the file's EXIF or maker notes) is applied to either, unless options.apply_exif_orientation is off; a preview's
// own EXIF is ignored (previews are stored in sensor orientation).
#include <libraw/libraw.h>

#include <opencv2/core.hpp>

#include <algorithm>
#include <memory>

#include "image_formats.h"

namespace cnclip::detail {
namespace {

// LibRaw's default callbacks print to stderr; its return codes already say what went wrong.
void quiet_data_error(void*, const char*, const int) {}
void quiet_memory_error(void*, const char*, const char*) {}

Error raw_failure(const std::string& name, int code) {
  ErrorCode ec = ErrorCode::kCorrupt;
  if (code == LIBRAW_FILE_UNSUPPORTED) ec = ErrorCode::kUnsupportedFormat;
  if (code == LIBRAW_IO_ERROR) ec = ErrorCode::kTruncated;
  if (code == LIBRAW_TOO_BIG || code == LIBRAW_UNSUFFICIENT_MEMORY) ec = ErrorCode::kTooLarge;
  return Error{ec, name + ": cannot decode raw (LibRaw: " + libraw_strerror(code) + ")"};
}

// dcraw's flip as its writer applies it: out(r, c) = in(flip_index(r, c)) where flip_index swaps row
// and column (bit 4), then mirrors rows (bit 2) and columns (bit 1) of the source.
void apply_flip(cv::Mat& m, int flip) {
  if (flip & 2) cv::flip(m, m, 0);
  if (flip & 1) cv::flip(m, m, 1);
  if (flip & 4) cv::transpose(m, m);
}

struct MemImageFree {
  void operator()(libraw_processed_image_t* p) const { LibRaw::dcraw_clear_mem(p); }
};

}  // namespace

bool raw_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height) {
  auto raw = std::make_unique<LibRaw>(LIBRAW_OPTIONS_NONE);
  raw->set_dataerror_handler(quiet_data_error, nullptr);
  raw->set_memerror_handler(quiet_memory_error, nullptr);
  if (raw->open_buffer(const_cast<uint8_t*>(bytes.data()), bytes.size()) != LIBRAW_SUCCESS) return false;
  const libraw_image_sizes_t& sizes = raw->imgdata.sizes;
  const bool turned = (sizes.flip & 4) != 0;
  *width = turned ? sizes.height : sizes.width;
  *height = turned ? sizes.width : sizes.height;
  return *width > 0 && *height > 0;
}

Result<DecodedImage> decode_raw(const std::vector<uint8_t>& bytes, const std::string& name,
                                const DecodeOptions& options) {
  auto raw = std::make_unique<LibRaw>(LIBRAW_OPTIONS_NONE);
  raw->set_dataerror_handler(quiet_data_error, nullptr);
  raw->set_memerror_handler(quiet_memory_error, nullptr);
  int rc = raw->open_buffer(const_cast<uint8_t*>(bytes.data()), bytes.size());
  if (rc != LIBRAW_SUCCESS) return raw_failure(name, rc);
  const libraw_image_sizes_t& sizes = raw->imgdata.sizes;
  // The pixel limit, before anything is unpacked: the sensor's full size and the image's.
  const int64_t rw = std::max<int64_t>(sizes.raw_width, sizes.width);
  const int64_t rh = std::max<int64_t>(sizes.raw_height, sizes.height);
  if (static_cast<double>(rw) * static_cast<double>(rh) > static_cast<double>(options.max_pixels)) {
    return too_large_error(name, rw, rh, options.max_pixels);
  }
  if (sizes.width <= 0 || sizes.height <= 0)
    return Error{ErrorCode::kCorrupt, name + ": cannot decode raw (no image size)"};
  const int flip = options.apply_exif_orientation ? sizes.flip : 0;

  if (options.raw_preview_min_side > 0 && raw->imgdata.thumbnail.tlength > 0 && raw->unpack_thumb() == LIBRAW_SUCCESS &&
      raw->imgdata.thumbnail.tformat == LIBRAW_THUMBNAIL_JPEG && raw->imgdata.thumbnail.thumb &&
      raw->imgdata.thumbnail.tlength > 0) {
    const auto* t = reinterpret_cast<const uint8_t*>(raw->imgdata.thumbnail.thumb);
    std::vector<uint8_t> preview(t, t + raw->imgdata.thumbnail.tlength);
    int64_t pw = 0, ph = 0;
    if (jpeg_size(preview, &pw, &ph) && std::min(pw, ph) >= options.raw_preview_min_side) {
      DecodeOptions p = options;
      p.apply_exif_orientation = false;
      auto decoded = decode_image(preview, name + " (embedded preview)", p);
      if (decoded) {
        DecodedImage out = std::move(decoded.value());
        apply_flip(out.pixels, flip);
        out.format = "raw";
        out.original_width = static_cast<int>(sizes.width);
        out.original_height = static_cast<int>(sizes.height);
        return out;
      }
      // A damaged preview: the raw data may still be good.
    }
  }

  raw->imgdata.params.half_size = 1;
  raw->imgdata.params.use_camera_wb = 1;
  raw->imgdata.params.output_bps = 8;
  raw->imgdata.params.user_flip = flip;
  if ((rc = raw->unpack()) != LIBRAW_SUCCESS) return raw_failure(name, rc);
  if ((rc = raw->dcraw_process()) != LIBRAW_SUCCESS) return raw_failure(name, rc);
  int err = 0;
  std::unique_ptr<libraw_processed_image_t, MemImageFree> img(raw->dcraw_make_mem_image(&err));
  if (!img) return raw_failure(name, err ? err : LIBRAW_UNSPECIFIED_ERROR);
  if (img->type != LIBRAW_IMAGE_BITMAP || img->bits != 8 || (img->colors != 3 && img->colors != 1) || img->width == 0 ||
      img->height == 0 || size_t{img->width} * img->height * img->colors > img->data_size) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode raw (LibRaw gave no 8-bit image)"};
  }
  DecodedImage out;
  out.format = "raw";
  out.original_width = static_cast<int>(sizes.width);
  out.original_height = static_cast<int>(sizes.height);
  out.mode = img->colors == 1 ? PixelMode::kGray : PixelMode::kRGB;
  cv::Mat(img->height, img->width, img->colors == 1 ? CV_8UC1 : CV_8UC3, img->data).copyTo(out.pixels);
  return out;
}

}  // namespace cnclip::detail
