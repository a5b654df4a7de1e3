// The options of image decoding and the model's input normalization: plain values, without OpenCV,
// so that headers which only pass them on (bundle.h, model.h, indexer.h, server.h...) do not pull
// OpenCV into every includer. The decoders and the preprocessing are in image.h.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace cnclip {

struct DecodeOptions {
  // Photos are shown upright by viewers; apply the EXIF Orientation tag (JPEG) unless parity with
  // Chinese-CLIP's Python code (which ignores it) is wanted.
  bool apply_exif_orientation = true;
  // Refuse images with more pixels than this (decompression bombs), before decoding them.
  int64_t max_pixels = 100'000'000;
  // When > 0, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) as long as both
  // sides of the reduced image stay >= this many pixels. 0 decodes at full size (exact parity).
  int reduced_decode_min_side = 0;
  // Camera RAW: decode the embedded JPEG preview when its shorter side is at least this many pixels
  // (the CLI passes twice the model's input side, 448 for ViT-B-16), else demosaic the raw data at
  // half size. 0 always demosaics.
  int raw_preview_min_side = 448;
};

// A pixel count in megapixels as --max-pixels takes it, for messages: "100", "12.192768", "0.000001"
// (at most six decimals, trailing zeros dropped; a count below half a pixel's millionth shows as "0").
std::string megapixels_text(double pixels);

// Mean and std of Normalize, and the square input size R. A model's own come from its bundle
// (bundle.json "image", which the exporter writes from scripts/cnclip_towers.py; BundleManifest::image).
// The defaults are what every released Chinese-CLIP model uses, for what runs without a bundle:
// `cnclip preprocess` without --model, the reference-fixture tests (made by Chinese-CLIP's own
// preprocessing), the image fuzzer and the decoding benchmark.
struct Normalization {
  int size = 224;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};
};

}  // namespace cnclip
