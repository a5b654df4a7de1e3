// Decoders beside OpenCV's, called by decode_image (image_decode.cpp) once the header checks passed:
// HEIF/AVIF (libheif), camera RAW (LibRaw), GIF (giflib), animated WebP (libwebp's demuxer).
// Internal to the library. Each returns pixels in the layout DecodedImage documents, or a typed
// error naming `name`; each refuses an image over options.max_pixels before allocating its pixels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/image.h"

namespace cnclip::detail {

// The primary image of a HEIF (HEIC) or AVIF file, 8 bits per sample.
Result<DecodedImage> decode_heif(const std::vector<uint8_t>& bytes, const std::string& name,
                                 const DecodeOptions& options, const char* format);

// A camera RAW file: its embedded JPEG preview when large enough, else a half-size demosaic.
Result<DecodedImage> decode_raw(const std::vector<uint8_t>& bytes, const std::string& name,
                                const DecodeOptions& options);

// The first frame of a GIF, as Pillow 9.4 holds it (mode P or L, on the logical screen).
Result<DecodedImage> decode_gif(const std::vector<uint8_t>& bytes, const std::string& name,
                                const DecodeOptions& options);

// The first frame of an animated WebP, composited on its canvas as Pillow's WebPAnimDecoder does.
Result<DecodedImage> decode_webp_animation(const std::vector<uint8_t>& bytes, const std::string& name,
                                           const DecodeOptions& options);

// The upright size of a HEIF/AVIF file's primary image (its transformations applied), from the
// container's boxes alone (nothing is decoded); false when libheif cannot read them.
bool heif_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height);
// The upright size of a camera RAW image (LibRaw's metadata parse, nothing unpacked); false when
// LibRaw cannot open it.
bool raw_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height);

// A JPEG's size from its first frame header; false when the header is not found.
bool jpeg_size(const std::vector<uint8_t>& bytes, int64_t* width, int64_t* height);

// The error for an image over the pixel limit (the same wording for every format).
Error too_large_error(const std::string& name, int64_t width, int64_t height, int64_t max_pixels);

}  // namespace cnclip::detail
