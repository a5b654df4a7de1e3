// libFuzzer target: any bytes as an image file (JPEG, PNG, WebP and its animations, BMP, TIFF, GIF,
// HEIF/AVIF through libheif, camera RAW through LibRaw, or anything else), through
// decode_image and the whole preprocessing (Pillow-exact resize, normalization) the index runs.
// It must return a typed error, or a tensor of finite values in the range Normalize can produce.
// The pixel limit is 4 MP (the index's default is 100 MP) so that a header announcing a huge image is
// refused instead of exhausting the fuzzer's memory; scripts/fuzz.sh also caps OpenCV's own limit.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cnclip/image.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  // Decode options from the last byte: image formats ignore trailing bytes, so it does not change
  // what the file is, and every combination the CLI can ask for gets explored.
  const uint8_t flags = size ? data[size - 1] : 0;
  cnclip::DecodeOptions options;
  options.max_pixels = 4'000'000;
  options.apply_exif_orientation = flags & 1;
  options.reduced_decode_min_side = (flags & 2) ? 16 << ((flags >> 2) & 3) : 0;
  options.raw_preview_min_side = (flags & 0x20) ? 8 : 448;  // RAW: the preview path or the demosaic

  cnclip::Normalization norm;
  norm.size = (flags & 0x10) ? 7 : 32;  // small outputs keep executions fast; odd sizes included
  std::vector<float> out(3 * norm.size * norm.size, NAN);
  const auto r = cnclip::preprocess_image(bytes, "fuzz-input", norm, options, out.data());
  if (!r) {
    if (r.error().message.empty()) cnclip_fuzz::fail("error without a message");
    return 0;
  }
  // ToTensor gives [0, 1]; Normalize with the CLIP mean/std maps that into about [-1.8, 2.2].
  for (float v : out) {
    if (!std::isfinite(v) || v < -2.0f || v > 2.5f) cnclip_fuzz::fail("preprocessed value out of range");
  }
  return 0;
}
