// Animated WebP, first frame, through libwebp's animation decoder: the same decoder and settings as
// Pillow 9.4 (WebPAnimDecoder, RGBA output, no threads), so the frame is composited on the canvas
// exactly as Pillow holds it: "RGBA" when the file declares alpha, else "RGB" (the 4th byte dropped).
#include <webp/decode.h>
#include <webp/demux.h>

#include <opencv2/imgproc.hpp>

#include <memory>

#include "image_formats.h"

namespace cnclip::detail {
namespace {

struct DecoderFree {
  void operator()(WebPAnimDecoder* d) const { WebPAnimDecoderDelete(d); }
};

}  // namespace

Result<DecodedImage> decode_webp_animation(const std::vector<uint8_t>& bytes, const std::string& name,
                                           const DecodeOptions& options) {
  WebPBitstreamFeatures features{};
  if (WebPGetFeatures(bytes.data(), bytes.size(), &features) != VP8_STATUS_OK) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode webp (bad animation header)"};
  }
  WebPAnimDecoderOptions decoder_options;
  if (!WebPAnimDecoderOptionsInit(&decoder_options)) {
    return Error{ErrorCode::kInternal, name + ": cannot decode webp (libwebp version mismatch)"};
  }
  decoder_options.color_mode = MODE_RGBA;
  decoder_options.use_threads = 0;
  const WebPData data{bytes.data(), bytes.size()};
  std::unique_ptr<WebPAnimDecoder, DecoderFree> decoder(WebPAnimDecoderNew(&data, &decoder_options));
  if (!decoder) return Error{ErrorCode::kCorrupt, name + ": cannot decode webp (damaged animation)"};
  WebPAnimInfo info{};
  if (!WebPAnimDecoderGetInfo(decoder.get(), &info) || info.canvas_width == 0 || info.canvas_height == 0) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode webp (damaged animation)"};
  }
  const int64_t w = info.canvas_width, h = info.canvas_height;
  if (static_cast<double>(w) * static_cast<double>(h) > static_cast<double>(options.max_pixels)) {
    return too_large_error(name, w, h, options.max_pixels);
  }
  uint8_t* frame = nullptr;
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(decoder.get(), &frame, &timestamp) || !frame) {
    return Error{ErrorCode::kCorrupt, name + ": cannot decode webp (first frame damaged or missing)"};
  }
  cv::Mat rgba(static_cast<int>(h), static_cast<int>(w), CV_8UC4, frame);
  DecodedImage out;
  out.format = "webp";
  out.original_width = static_cast<int>(w);
  out.original_height = static_cast<int>(h);
  if (features.has_alpha) {
    out.mode = PixelMode::kRGBA;
    rgba.copyTo(out.pixels);  // the frame buffer belongs to the decoder
  } else {
    out.mode = PixelMode::kRGB;
    cv::cvtColor(rgba, out.pixels, cv::COLOR_RGBA2RGB);
  }
  return out;
}

}  // namespace cnclip::detail
