// Pillow 9.4's resampling (libImaging/Resample.c and Geometry.c), reproduced bit for bit:
// separable bicubic (a = -0.5) widened by the downscale factor, weights normalized and turned into
// 22-bit fixed point, horizontal pass first with rounding and clamping to uint8, then the vertical
// pass. Palette images use Pillow's NEAREST (affine scale with accumulated double coordinates) and
// RGBA images are resized premultiplied.
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <cstring>

#include <cmath>
#include <vector>

#include "cnclip/image.h"

namespace cnclip {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Per output index: first source index, tap count, and `ksize` fixed-point weights.
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Coefficients precompute(int in_size, int out_size) {
  constexpr double support_unit = 2.0;  // bicubic
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_unit * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      c.weights[static_cast<size_t>(xx) * c.ksize + x] = w < 0 ? static_cast<int32_t>(-0.5 + w * (1 << kPrecisionBits))
                                                               : static_cast<int32_t>(0.5 + w * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift, as in Pillow
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

template <int C>
void horizontal_pass(const cv::Mat& in, int row0, int rows, const Coefficients& c, cv::Mat& out) {
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(row0 + y);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int xx = 0; xx < out.cols; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx) * c.ksize];
      const uint8_t* s = src + static_cast<size_t>(c.first[xx]) * C;
      int32_t acc[C];
      for (int ch = 0; ch < C; ++ch) acc[ch] = 1 << (kPrecisionBits - 1);
      for (int x = 0; x < c.count[xx]; ++x) {
        for (int ch = 0; ch < C; ++ch) acc[ch] += s[x * C + ch] * k[x];
      }
      for (int ch = 0; ch < C; ++ch) dst[xx * C + ch] = clip8(acc[ch]);
    }
  }
}

template <int C>
void vertical_pass(const cv::Mat& in, int row_offset, const Coefficients& c, cv::Mat& out) {
  const int width = in.cols * C;
  std::vector<int32_t> acc(width);
  for (int yy = 0; yy < out.rows; ++yy) {
    const int32_t* k = &c.weights[static_cast<size_t>(yy) * c.ksize];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int y = 0; y < c.count[yy]; ++y) {
      const uint8_t* src = in.ptr<uint8_t>(c.first[yy] - row_offset + y);
      const int32_t w = k[y];
      for (int x = 0; x < width; ++x) acc[x] += src[x] * w;
    }
    uint8_t* dst = out.ptr<uint8_t>(yy);
    for (int x = 0; x < width; ++x) dst[x] = clip8(acc[x]);
  }
}

template <int C>
cv::Mat resample_bicubic(const cv::Mat& in, int out_w, int out_h) {
  if (in.cols == out_w && in.rows == out_h) return in.clone();  // Pillow copies, unfiltered
  cv::Mat current = in;
  int row_offset = 0;
  Coefficients vert = precompute(in.rows, out_h);
  if (in.cols != out_w) {
    // Only the source rows that the vertical pass reads are filtered horizontally.
    const int first_row = vert.first[0];
    const int last_row = vert.first[out_h - 1] + vert.count[out_h - 1];
    const bool need_vertical = in.rows != out_h;
    const int r0 = need_vertical ? first_row : 0;
    const int rows = need_vertical ? last_row - first_row : in.rows;
    cv::Mat tmp(rows, out_w, CV_8UC(C));
    horizontal_pass<C>(in, r0, rows, precompute(in.cols, out_w), tmp);
    current = tmp;
    row_offset = r0;
  }
  if (in.rows != out_h) {
    cv::Mat out(out_h, out_w, CV_8UC(C));
    vertical_pass<C>(current, row_offset, vert, out);
    return out;
  }
  return current;
}

// Pillow's NEAREST resize: source position starts at 0.5*in/out and accumulates in/out per step.
std::vector<int> nearest_positions(int in_size, int out_size) {
  std::vector<int> pos(out_size);
  const double step = static_cast<double>(in_size) / out_size;
  double v = step * 0.5;
  for (int i = 0; i < out_size; ++i) {
    int p = v < 0.0 ? -1 : static_cast<int>(v);
    pos[i] = p < 0 ? 0 : p >= in_size ? in_size - 1 : p;
    v += step;
  }
  return pos;
}

cv::Mat resample_nearest(const cv::Mat& in, int out_w, int out_h) {
  if (in.cols == out_w && in.rows == out_h) return in.clone();
  const std::vector<int> xs = nearest_positions(in.cols, out_w), ys = nearest_positions(in.rows, out_h);
  const size_t px = in.elemSize();
  cv::Mat out(out_h, out_w, in.type());
  for (int y = 0; y < out_h; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(ys[y]);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < out_w; ++x) std::memcpy(dst + x * px, src + xs[x] * px, px);
  }
  return out;
}

inline uint8_t muldiv255(uint32_t a, uint32_t b) {
  const uint32_t t = a * b + 128;
  return static_cast<uint8_t>(((t >> 8) + t) >> 8);
}

}  // namespace

cv::Mat resize_like_pillow(const DecodedImage& image, int out_w, int out_h) {
  const cv::Mat& in = image.pixels;
  cv::Mat rgb;
  switch (image.mode) {
    case PixelMode::kPalette: {
      cv::Mat small = resample_nearest(in, out_w, out_h);
      if (small.channels() == 1) cv::merge(std::vector<cv::Mat>{small, small, small}, rgb);
      else if (small.channels() == 4) cv::cvtColor(small, rgb, cv::COLOR_RGBA2RGB);
      else rgb = small;
      return rgb;
    }
    case PixelMode::kGray: {
      cv::Mat g = resample_bicubic<1>(in, out_w, out_h);
      cv::merge(std::vector<cv::Mat>{g, g, g}, rgb);
      return rgb;
    }
    case PixelMode::kRGB: return resample_bicubic<3>(in, out_w, out_h);
    case PixelMode::kCMYK: {
      // Pillow resizes the 4 inks, then converts (Convert.c cmyk2rgb): nk = 255 - K,
      // channel = nk - nk * ink / 255 (rounded as MULDIV255).
      cv::Mat small = resample_bicubic<4>(in, out_w, out_h);
      rgb.create(out_h, out_w, CV_8UC3);
      for (int y = 0; y < out_h; ++y) {
        const uint8_t* s = small.ptr<uint8_t>(y);
        uint8_t* d = rgb.ptr<uint8_t>(y);
        for (int x = 0; x < out_w; ++x) {
          const uint32_t nk = 255 - s[x * 4 + 3];
          for (int ch = 0; ch < 3; ++ch) d[x * 3 + ch] = static_cast<uint8_t>(nk - muldiv255(s[x * 4 + ch], nk));
        }
      }
      return rgb;
    }
    case PixelMode::kRGBA: {
      // RGBA -> RGBa (rounded premultiply), resize 4 bands, RGBa -> RGBA (truncating divide), drop A.
      cv::Mat pre = image.alpha_premultiplied ? in : cv::Mat(in.rows, in.cols, CV_8UC4);
      for (int y = 0; y < in.rows && !image.alpha_premultiplied; ++y) {
        const uint8_t* s = in.ptr<uint8_t>(y);
        uint8_t* d = pre.ptr<uint8_t>(y);
        for (int x = 0; x < in.cols * 4; x += 4) {
          const uint32_t a = s[x + 3];
          d[x] = muldiv255(s[x], a);
          d[x + 1] = muldiv255(s[x + 1], a);
          d[x + 2] = muldiv255(s[x + 2], a);
          d[x + 3] = static_cast<uint8_t>(a);
        }
      }
      cv::Mat small = resample_bicubic<4>(pre, out_w, out_h);
      rgb.create(out_h, out_w, CV_8UC3);
      for (int y = 0; y < out_h; ++y) {
        const uint8_t* s = small.ptr<uint8_t>(y);
        uint8_t* d = rgb.ptr<uint8_t>(y);
        for (int x = 0; x < out_w; ++x) {
          const uint32_t a = s[x * 4 + 3];
          for (int ch = 0; ch < 3; ++ch) {
            const uint32_t v = s[x * 4 + ch];
            d[x * 3 + ch] = (a == 255 || a == 0) ? static_cast<uint8_t>(v)
                                                 : static_cast<uint8_t>(std::min<uint32_t>(255, 255 * v / a));
          }
        }
      }
      return rgb;
    }
  }
  return rgb;
}

void normalize_to_chw(const cv::Mat& rgb, const Normalization& norm, float* out) {
  const int n = norm.size * norm.size;
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* s = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < rgb.cols; ++x) {
      for (int ch = 0; ch < 3; ++ch) {
        // float32 throughout, subtraction then division, as torchvision's ToTensor + Normalize.
        const float v = static_cast<float>(s[x * 3 + ch]) / 255.0f;
        out[ch * n + y * norm.size + x] = (v - norm.mean[ch]) / norm.std[ch];
      }
    }
  }
}

}  // namespace cnclip
