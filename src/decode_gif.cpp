// GIF, first frame, through giflib, laid out as Pillow 9.4 holds it (GifImagePlugin, its default
// loading strategy): the canvas is the logical screen, grown to hold the first frame if it reaches
// past it; it starts as index 0, or the frame's transparent index when its graphic control extension
// has one; the frame's indices are written into its rectangle (transparent ones included). With a
// palette (the frame's own, else the global one) the image is mode "P": resized nearest, then looked
// up. Without one, or when the palette is the identity grey ramp (entry i = (i, i, i)), it is mode
// "L" and the indices are grey levels (resized bicubic). Only the first frame is read: a GIF of
// thousands of frames costs no more than one.
#include <gif_lib.h>

#include <array>
#include <cstring>
#include <memory>

#include "image_formats.h"

namespace cnclip::detail {
namespace {

struct Reader {
  const std::vector<uint8_t>* bytes;
  size_t at = 0;
};

int read_bytes(GifFileType* gif, GifByteType* out, int n) {
  auto* r = static_cast<Reader*>(gif->UserData);
  const size_t left = r->bytes->size() - r->at;
  const size_t take = n < 0 ? 0 : std::min(left, static_cast<size_t>(n));
  std::memcpy(out, r->bytes->data() + r->at, take);
  r->at += take;
  return static_cast<int>(take);
}

struct GifCloser {
  void operator()(GifFileType* g) const {
    int err = 0;
    DGifCloseFile(g, &err);
  }
};

// Pillow's _is_palette_needed: false when every entry i is (i, i, i).
bool palette_needed(const ColorMapObject* map) {
  for (int i = 0; i < map->ColorCount; ++i) {
    const GifColorType& c = map->Colors[i];
    if (!(c.Red == i && c.Green == i && c.Blue == i)) return true;
  }
  return false;
}

Error gif_error(const std::string& name, int code) {
  if (code == D_GIF_ERR_READ_FAILED || code == D_GIF_ERR_EOF_TOO_SOON) {
    return Error{ErrorCode::kTruncated, name + ": truncated gif (file ends early)"};
  }
  const char* why = GifErrorString(code);
  return Error{ErrorCode::kCorrupt,
               name + ": cannot decode gif (" + std::string(why ? why : "unknown giflib error") + ")"};
}

}  // namespace

Result<DecodedImage> decode_gif(const std::vector<uint8_t>& bytes, const std::string& name,
                                const DecodeOptions& options) {
  Reader reader{&bytes, 0};
  int err = 0;
  std::unique_ptr<GifFileType, GifCloser> gif(DGifOpen(&reader, read_bytes, &err));
  if (!gif) return gif_error(name, err);
  const int screen_w = gif->SWidth, screen_h = gif->SHeight;
  int transparency = -1;
  while (true) {
    GifRecordType type;
    if (DGifGetRecordType(gif.get(), &type) == GIF_ERROR) return gif_error(name, gif->Error);
    if (type == TERMINATE_RECORD_TYPE) {
      return Error{ErrorCode::kCorrupt, name + ": cannot decode gif (no image in the file)"};
    }
    if (type == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* block = nullptr;
      if (DGifGetExtension(gif.get(), &code, &block) == GIF_ERROR) return gif_error(name, gif->Error);
      // Graphic control extension: flags, delay (2 bytes), transparent index. Pillow reads the block
      // whatever its stated length (a short one reads past it: we require the 4 bytes).
      if (code == GRAPHICS_EXT_FUNC_CODE && block && block[0] >= 4) {
        if (block[1] & 1) transparency = block[4];
      }
      while (block) {
        if (DGifGetExtensionNext(gif.get(), &block) == GIF_ERROR) return gif_error(name, gif->Error);
      }
      continue;
    }
    if (type != IMAGE_DESC_RECORD_TYPE) continue;
    if (DGifGetImageDesc(gif.get()) == GIF_ERROR) return gif_error(name, gif->Error);
    break;
  }
  const GifImageDesc& desc = gif->Image;
  const int x0 = desc.Left, y0 = desc.Top, fw = desc.Width, fh = desc.Height;
  const int64_t width = std::max<int64_t>(screen_w, int64_t{x0} + fw);
  const int64_t height = std::max<int64_t>(screen_h, int64_t{y0} + fh);
  if (static_cast<double>(width) * static_cast<double>(height) > static_cast<double>(options.max_pixels)) {
    return too_large_error(name, width, height, options.max_pixels);
  }
  if (width <= 0 || height <= 0) return Error{ErrorCode::kCorrupt, name + ": cannot decode gif (empty image)"};

  const ColorMapObject* map = desc.ColorMap ? desc.ColorMap : gif->SColorMap;
  // Pillow: a local palette that is the grey ramp means "L" even when a global one exists.
  const bool paletted = map && palette_needed(map);

  cv::Mat indices(static_cast<int>(height), static_cast<int>(width), CV_8UC1,
                  cv::Scalar(transparency >= 0 ? transparency : 0));
  std::vector<GifPixelType> line(static_cast<size_t>(fw));
  auto read_row = [&](int y) -> bool {
    if (fw == 0) return true;  // an empty frame (its rows have no pixels)
    if (DGifGetLine(gif.get(), line.data(), fw) == GIF_ERROR) return false;
    std::memcpy(indices.ptr<uint8_t>(y0 + y) + x0, line.data(), line.size());
    return true;
  };
  if (desc.Interlace) {
    static const int start[] = {0, 4, 2, 1}, step[] = {8, 8, 4, 2};
    for (int pass = 0; pass < 4; ++pass) {
      for (int y = start[pass]; y < fh; y += step[pass]) {
        if (!read_row(y)) return gif_error(name, gif->Error);
      }
    }
  } else {
    for (int y = 0; y < fh; ++y) {
      if (!read_row(y)) return gif_error(name, gif->Error);
    }
  }

  DecodedImage out;
  out.format = "gif";
  out.original_width = static_cast<int>(width);
  out.original_height = static_cast<int>(height);
  if (!paletted) {
    out.mode = PixelMode::kGray;
    out.pixels = indices;
    return out;
  }
  // Pillow's palette starts as the grey ramp (entry i = (i, i, i)) and the file's entries replace
  // its first ones: an index past the file's palette reads grey.
  std::array<cv::Vec3b, 256> lut{};
  for (int i = 0; i < 256; ++i) lut[static_cast<size_t>(i)] = cv::Vec3b::all(static_cast<uint8_t>(i));
  for (int i = 0; i < map->ColorCount && i < 256; ++i) {
    lut[static_cast<size_t>(i)] = cv::Vec3b(map->Colors[i].Red, map->Colors[i].Green, map->Colors[i].Blue);
  }
  out.pixels.create(indices.rows, indices.cols, CV_8UC3);
  for (int y = 0; y < indices.rows; ++y) {
    const uint8_t* s = indices.ptr<uint8_t>(y);
    auto* d = out.pixels.ptr<cv::Vec3b>(y);
    for (int x = 0; x < indices.cols; ++x) d[x] = lut[s[x]];
  }
  out.mode = PixelMode::kPalette;
  return out;
}

}  // namespace cnclip::detail
