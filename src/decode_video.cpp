// Video frames through FFmpeg's libraries, loaded with dlopen the first time a video is decoded.
// Debian's libavformat, libavcodec and libswscale need 132 shared libraries (ldd: x264, x265, dav1d,
// vpx, the GnuTLS stack, ...); mapping them at start-up (LD_PRELOAD of the three, 15 runs, p50)
// made `cnclip --version` take 212-222 ms instead of 55-76 ms on the loaded 2-core machine, a cost
// every command would pay, as with OpenCV's imgcodecs (imgcodecs_loader.cpp). The functions are the C API of the
// headers; their addresses are looked up by name in the libraries of the SONAMEs the headers were built against.
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
}

#include <dlfcn.h>
#include <sys/stat.h>

#include <opencv2/core.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <string>

#include "cnclip/image.h"
#include "cnclip/video.h"

namespace cnclip {

const std::vector<std::string>& video_extensions() {
  static const std::vector<std::string> kExtensions{"mp4", "m4v", "mov", "mkv", "webm", "avi"};
  return kExtensions;
}

bool is_video_path(const std::string& path) {
  const auto dot = path.find_last_of("./");
  if (dot == std::string::npos || path[dot] != '.') return false;
  std::string ext = path.substr(dot + 1);
  for (auto& c : ext) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  const auto& all = video_extensions();
  return std::find(all.begin(), all.end(), ext) != all.end();
}

namespace {

#define CNCLIP_SONAME(lib, major) "lib" #lib ".so." AV_STRINGIFY(major)

// X(library index, function)
#define CNCLIP_AV_FUNCTIONS(X)        \
  X(0, av_frame_alloc)                \
  X(0, av_frame_free)                 \
  X(0, av_frame_unref)                \
  X(0, av_strerror)                   \
  X(0, av_log_set_callback)           \
  X(0, av_dict_get)                   \
  X(0, av_display_rotation_get)       \
  X(1, sws_getCachedContext)          \
  X(1, sws_scale)                     \
  X(1, sws_freeContext)               \
  X(1, sws_getCoefficients)           \
  X(1, sws_setColorspaceDetails)      \
  X(2, avcodec_find_decoder)          \
  X(2, avcodec_alloc_context3)        \
  X(2, avcodec_parameters_to_context) \
  X(2, avcodec_open2)                 \
  X(2, avcodec_send_packet)           \
  X(2, avcodec_receive_frame)         \
  X(2, avcodec_free_context)          \
  X(2, avcodec_flush_buffers)         \
  X(2, av_packet_alloc)               \
  X(2, av_packet_free)                \
  X(2, av_packet_unref)               \
  X(3, avformat_open_input)           \
  X(3, avformat_find_stream_info)     \
  X(3, av_find_best_stream)           \
  X(3, av_read_frame)                 \
  X(3, av_seek_frame)                 \
  X(3, avformat_close_input)          \
  X(3, av_stream_get_side_data)

struct Av {
#define CNCLIP_AV_FIELD(lib, name) decltype(&::name) name = nullptr;
  CNCLIP_AV_FUNCTIONS(CNCLIP_AV_FIELD)
#undef CNCLIP_AV_FIELD
};

// The last error line FFmpeg logged on this thread (decoding runs on the caller's thread only:
// the decoder is opened with one thread).
thread_local std::string t_last_log;

void log_callback(void* /*avcl*/, int level, const char* fmt, va_list vl) {
  if (level > AV_LOG_ERROR) return;
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, vl);
  std::string s = buf;
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (!s.empty()) t_last_log = s;
}

// Loaded once (thread-safe); a failure is thrown to every caller, naming the library.
const Av& av() {
  static std::once_flag once;
  static Av fns;
  static std::string failure;
  std::call_once(once, [] {
    const char* sonames[] = {
        CNCLIP_SONAME(avutil, LIBAVUTIL_VERSION_MAJOR), CNCLIP_SONAME(swscale, LIBSWSCALE_VERSION_MAJOR),
        CNCLIP_SONAME(avcodec, LIBAVCODEC_VERSION_MAJOR), CNCLIP_SONAME(avformat, LIBAVFORMAT_VERSION_MAJOR)};
    void* handles[4] = {};
    for (int i = 0; i < 4; ++i) {
      handles[i] = ::dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL);
      if (!handles[i]) {
        const char* why = ::dlerror();
        failure = std::string("cannot load FFmpeg's ") + sonames[i] + " (" + (why ? why : "dlopen failed") +
                  "); install Debian's libavformat59, libavcodec59 and libswscale6 to index videos";
        return;
      }
    }
#define CNCLIP_AV_LOOKUP(lib, name)                                                  \
  fns.name = reinterpret_cast<decltype(&::name)>(::dlsym(handles[lib], #name));      \
  if (!fns.name) {                                                                   \
    failure = std::string("cannot load FFmpeg: ") + sonames[lib] + " has no " #name; \
    return;                                                                          \
  }
    CNCLIP_AV_FUNCTIONS(CNCLIP_AV_LOOKUP)
#undef CNCLIP_AV_LOOKUP
    fns.av_log_set_callback(&log_callback);
  });
  if (!failure.empty()) throw Exception(ErrorCode::kInternal, failure);
  return fns;
}

std::string av_error_text(const Av& f, int err) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  f.av_strerror(err, buf, sizeof buf);
  return buf;
}

std::optional<int64_t> parse_creation_time(const char* s) {
  if (!s) return std::nullopt;
  std::tm tm{};
  int consumed = 0;
  if (std::sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                  &tm.tm_sec, &consumed) != 6) {
    return std::nullopt;
  }
  if (tm.tm_year < 1971) return std::nullopt;  // QuickTime's zero date (1904) and other placeholders
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(::timegm(&tm));
}

// One open video stream and its decoder.
class Reader {
 public:
  Reader(const std::string& path, const VideoOptions& options) : path_(path), options_(options), f_(av()) {}
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  ~Reader() {
    f_.sws_freeContext(thumb_sws_);
    f_.sws_freeContext(rgb_sws_);
    f_.av_frame_free(&frame_);
    f_.av_packet_free(&packet_);
    f_.avcodec_free_context(&codec_);
    if (fmt_) f_.avformat_close_input(&fmt_);
  }

  Error error(ErrorCode code, const std::string& why) const {
    return Error{code, path_ + ": cannot read the video (" + why + ")"};
  }
  std::string with_log(const std::string& why) const {
    return t_last_log.empty() || why.find(t_last_log) != std::string::npos ? why : why + ": " + t_last_log;
  }

  std::optional<Error> open() {
    t_last_log.clear();
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) return errno_error(path_, errno, "cannot read the video");
    if (S_ISDIR(st.st_mode)) return Error{ErrorCode::kIoError, path_ + ": is a directory"};
    if (st.st_size == 0) return error(ErrorCode::kTruncated, "the file is empty");
    int rc = f_.avformat_open_input(&fmt_, path_.c_str(), nullptr, nullptr);
    if (rc < 0) {
      if (rc == AVERROR(EACCES)) return errno_error(path_, EACCES, "cannot read the video");
      // FFmpeg's mov demuxer says "moov atom not found" for an MP4 cut before its index.
      const std::string why = with_log(av_error_text(f_, rc));
      // An MP4/MOV whose first box is there (ftyp) but whose index (moov) is not: cut short. FFmpeg
      // says the same of any file it takes for an MP4 by its name.
      char head[12] = {};
      if (FILE* f = std::fopen(path_.c_str(), "rb")) {
        if (std::fread(head, 1, sizeof head, f) != sizeof head) head[4] = 0;
        std::fclose(f);
      }
      const bool cut = rc == AVERROR_EOF || why.find("End of file") != std::string::npos ||
                       (why.find("moov atom not found") != std::string::npos && std::memcmp(head + 4, "ftyp", 4) == 0);
      return error(cut ? ErrorCode::kTruncated : ErrorCode::kCorrupt, cut ? "the file ends early: " + why : why);
    }
    rc = f_.avformat_find_stream_info(fmt_, nullptr);
    if (rc < 0) return error(ErrorCode::kCorrupt, with_log(av_error_text(f_, rc)));
    const AVCodec* decoder = nullptr;
    stream_index_ = f_.av_find_best_stream(fmt_, AVMEDIA_TYPE_VIDEO, -1, -1, &decoder, 0);
    if (stream_index_ == AVERROR_STREAM_NOT_FOUND) return error(ErrorCode::kUnsupportedFormat, "no video stream");
    if (stream_index_ < 0 || !decoder) {
      return error(ErrorCode::kUnsupportedFormat, "no decoder for its video stream");
    }
    stream_ = fmt_->streams[stream_index_];
    const AVCodecParameters* par = stream_->codecpar;
    if (par->width <= 0 || par->height <= 0) return error(ErrorCode::kCorrupt, "its video stream has no frame size");
    if (int64_t{par->width} * par->height > options_.max_pixels) {
      return Error{ErrorCode::kTooLarge, path_ + ": video frames of " + std::to_string(par->width) + "x" +
                                             std::to_string(par->height) + " are over the limit of " +
                                             megapixels_text(static_cast<double>(options_.max_pixels)) +
                                             " MP (--max-pixels)"};
    }
    codec_ = f_.avcodec_alloc_context3(decoder);
    if (!codec_) return error(ErrorCode::kInternal, "out of memory");
    rc = f_.avcodec_parameters_to_context(codec_, par);
    if (rc < 0) return error(ErrorCode::kCorrupt, with_log(av_error_text(f_, rc)));
    codec_->thread_count = 1;  // the model is the bottleneck; one thread keeps FFmpeg's log on ours
    rc = f_.avcodec_open2(codec_, decoder, nullptr);
    if (rc < 0)
      return error(ErrorCode::kUnsupportedFormat, "cannot open its " + std::string(decoder->name) + " decoder");
    frame_ = f_.av_frame_alloc();
    packet_ = f_.av_packet_alloc();
    if (!frame_ || !packet_) return error(ErrorCode::kInternal, "out of memory");
    if (options_.apply_rotation) {
      if (const uint8_t* m = f_.av_stream_get_side_data(stream_, AV_PKT_DATA_DISPLAYMATRIX, nullptr)) {
        double theta = -f_.av_display_rotation_get(reinterpret_cast<const int32_t*>(m));
        if (std::isfinite(theta)) {
          theta = std::fmod(std::fmod(theta, 360.0) + 360.0, 360.0);
          rotation_ = static_cast<int>(std::lround(theta / 90.0)) % 4 * 90;
        }
      }
    }
    info_.width = rotation_ % 180 ? par->height : par->width;
    info_.height = rotation_ % 180 ? par->width : par->height;
    if (fmt_->duration > 0 && fmt_->duration != AV_NOPTS_VALUE) {
      info_.duration = static_cast<double>(fmt_->duration) / AV_TIME_BASE;
    } else if (stream_->duration > 0 && stream_->duration != AV_NOPTS_VALUE) {
      info_.duration = static_cast<double>(stream_->duration) * av_q2d(stream_->time_base);
    }
    if (const AVDictionaryEntry* e = f_.av_dict_get(fmt_->metadata, "creation_time", nullptr, 0)) {
      info_.creation_time = parse_creation_time(e->value);
    }
    return std::nullopt;
  }

  // The next decoded frame into frame_, with its time; false at the end. Read errors past the first
  // frame end the stream (the caller checks the duration); decode errors of single packets are
  // concealed as players do.
  Result<bool> next(double* time) {
    while (true) {
      if (!draining_) {
        int rc = f_.avcodec_receive_frame(codec_, frame_);
        if (rc == 0) return take(time);
        if (rc != AVERROR(EAGAIN)) return finish(rc);
        rc = f_.av_read_frame(fmt_, packet_);
        if (rc < 0) {
          if (rc != AVERROR_EOF) read_error_ = rc;
          draining_ = true;
          f_.avcodec_send_packet(codec_, nullptr);
          continue;
        }
        if (packet_->stream_index == stream_index_) {
          rc = f_.avcodec_send_packet(codec_, packet_);
          if (rc < 0 && rc != AVERROR(EAGAIN)) ++decode_errors_;
        }
        f_.av_packet_unref(packet_);
      } else {
        const int rc = f_.avcodec_receive_frame(codec_, frame_);
        if (rc == 0) return take(time);
        return finish(rc);
      }
    }
  }

  // Seeks to the key frame at or before `time` seconds.
  void seek(double time) {
    const double tb = av_q2d(stream_->time_base);
    const int64_t start = stream_->start_time == AV_NOPTS_VALUE ? 0 : stream_->start_time;
    const auto target = static_cast<int64_t>(time / tb) + start;
    if (f_.av_seek_frame(fmt_, stream_index_, target, AVSEEK_FLAG_BACKWARD) >= 0) {
      f_.avcodec_flush_buffers(codec_);
      first_ts_.reset();  // times stay relative to the stream start below
      seeked_ = true;
    }
  }

  // The scene-analysis thumbnail (64x36 luma) of frame_.
  const cv::Mat& thumbnail() {
    constexpr int kW = 64, kH = 36;
    thumb_sws_ =
        f_.sws_getCachedContext(thumb_sws_, frame_->width, frame_->height, static_cast<AVPixelFormat>(frame_->format),
                                kW, kH, AV_PIX_FMT_GRAY8, SWS_AREA, nullptr, nullptr, nullptr);
    if (thumb_.empty()) thumb_.create(kH, kW, CV_8UC1);
    if (thumb_sws_) {
      uint8_t* dst[4] = {thumb_.data, nullptr, nullptr, nullptr};
      int stride[4] = {static_cast<int>(thumb_.step[0]), 0, 0, 0};
      f_.sws_scale(thumb_sws_, frame_->data, frame_->linesize, 0, frame_->height, dst, stride);
    }
    return thumb_;
  }

  // frame_ as upright RGB, reduced so that the shorter side is options_.reduced_min_side.
  Result<cv::Mat> rgb() {
    int w = frame_->width, h = frame_->height;
    const int shorter = std::min(w, h);
    if (options_.reduced_min_side > 0 && shorter > options_.reduced_min_side) {
      const double s = static_cast<double>(options_.reduced_min_side) / shorter;
      w = std::max(1, static_cast<int>(std::lround(w * s)));
      h = std::max(1, static_cast<int>(std::lround(h * s)));
    }
    rgb_sws_ =
        f_.sws_getCachedContext(rgb_sws_, frame_->width, frame_->height, static_cast<AVPixelFormat>(frame_->format), w,
                                h, AV_PIX_FMT_RGB24, SWS_AREA | SWS_ACCURATE_RND, nullptr, nullptr, nullptr);
    if (!rgb_sws_) return error(ErrorCode::kUnsupportedFormat, "cannot convert its pixel format to RGB");
    // The frame's own colour matrix and range (HD video is BT.709; swscale assumes BT.601).
    int space = SWS_CS_DEFAULT;
    if (frame_->colorspace == AVCOL_SPC_BT709) space = SWS_CS_ITU709;
    else if (frame_->colorspace == AVCOL_SPC_BT2020_NCL || frame_->colorspace == AVCOL_SPC_BT2020_CL)
      space = SWS_CS_BT2020;
    const int src_range = frame_->color_range == AVCOL_RANGE_JPEG ? 1 : 0;
    f_.sws_setColorspaceDetails(rgb_sws_, f_.sws_getCoefficients(space), src_range,
                                f_.sws_getCoefficients(SWS_CS_DEFAULT), 1, 0, 1 << 16, 1 << 16);
    cv::Mat out(h, w, CV_8UC3);
    uint8_t* dst[4] = {out.data, nullptr, nullptr, nullptr};
    int stride[4] = {static_cast<int>(out.step[0]), 0, 0, 0};
    f_.sws_scale(rgb_sws_, frame_->data, frame_->linesize, 0, frame_->height, dst, stride);
    if (rotation_ == 90) cv::rotate(out, out, cv::ROTATE_90_CLOCKWISE);
    else if (rotation_ == 180) cv::rotate(out, out, cv::ROTATE_180);
    else if (rotation_ == 270) cv::rotate(out, out, cv::ROTATE_90_COUNTERCLOCKWISE);
    return out;
  }

  // After the last frame: an error for a stream that could not be read to its end.
  std::optional<Error> check_end(double last_time) {
    if (info_.frames_decoded == 0) {
      if (read_error_) return error(ErrorCode::kCorrupt, with_log(av_error_text(f_, *read_error_)));
      return error(decode_errors_ ? ErrorCode::kCorrupt : ErrorCode::kTruncated,
                   decode_errors_ ? with_log("no frame decodes") : "no frame: the file ends early");
    }
    if (info_.duration > 0 && last_time < 0.9 * info_.duration && info_.duration - last_time > 1.0) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "the frames stop at %.1f s of %.1f s", last_time, info_.duration);
      return Error{read_error_ ? ErrorCode::kCorrupt : ErrorCode::kTruncated,
                   path_ + ": cannot read the video (" + (read_error_ ? std::string() : "the file ends early: ") + buf +
                       (read_error_ ? ": " + with_log(av_error_text(f_, *read_error_)) : std::string()) + ")"};
    }
    return std::nullopt;
  }

  VideoInfo& info() { return info_; }
  // Frames per second as the stream declares them (0 when unknown).
  double frame_rate() const {
    const double avg = av_q2d(stream_->avg_frame_rate), r = av_q2d(stream_->r_frame_rate);
    return avg > 0 && avg < 1000 ? avg : (r > 0 && r < 1000 ? r : 0.0);
  }

 private:
  Result<bool> take(double* time) {
    int64_t ts = frame_->best_effort_timestamp;
    if (ts == AV_NOPTS_VALUE) ts = frame_->pts;
    const double tb = av_q2d(stream_->time_base);
    double t;
    if (ts == AV_NOPTS_VALUE) {
      // No timestamps (some AVI): count frames at the stream's frame rate.
      const double fps = av_q2d(stream_->avg_frame_rate) > 0 ? av_q2d(stream_->avg_frame_rate) : 25.0;
      t = static_cast<double>(info_.frames_decoded) / fps;
    } else {
      if (!first_ts_) first_ts_ = stream_->start_time != AV_NOPTS_VALUE && !seeked_ ? stream_->start_time : ts;
      if (seeked_ && stream_->start_time != AV_NOPTS_VALUE) first_ts_ = stream_->start_time;
      t = static_cast<double>(ts - *first_ts_) * tb;
    }
    ++info_.frames_decoded;
    *time = std::max(0.0, t);
    return true;
  }
  Result<bool> finish(int rc) {
    if (rc == AVERROR_EOF || rc == AVERROR(EAGAIN)) return false;
    return error(ErrorCode::kCorrupt, with_log(av_error_text(f_, rc)));
  }

  std::string path_;
  VideoOptions options_;
  const Av& f_;
  AVFormatContext* fmt_ = nullptr;
  AVCodecContext* codec_ = nullptr;
  AVStream* stream_ = nullptr;
  AVFrame* frame_ = nullptr;
  AVPacket* packet_ = nullptr;
  SwsContext* thumb_sws_ = nullptr;
  SwsContext* rgb_sws_ = nullptr;
  cv::Mat thumb_;
  int stream_index_ = -1;
  int rotation_ = 0;  // clockwise degrees that make the frame upright
  bool draining_ = false;
  bool seeked_ = false;
  std::optional<int64_t> first_ts_;
  std::optional<int> read_error_;
  int64_t decode_errors_ = 0;
  VideoInfo info_;
};

Result<VideoInfo> decode_impl(const std::string& path, const VideoOptions& options,
                              const std::function<bool(const VideoFrame&)>& on_frame) {
  if (!(options.frame_interval > 0)) {
    return Error{ErrorCode::kInvalidArgument, "the frame interval must be more than 0 seconds"};
  }
  Reader reader(path, options);
  if (auto e = reader.open()) return *e;
  cv::Mat previous;
  double previous_mafd = 0;
  double last_kept = 0, last_time = 0;
  // The regular frames are due on a clock that restarts at each scene change (anchor); a frame within
  // half a frame's duration of the due time is taken, so that 25 fps does not drift at 1.5 s steps.
  double anchor = 0;
  const double half_frame = reader.frame_rate() > 0 ? 0.5 / reader.frame_rate() : 0.0;
  bool any_kept = false;
  while (true) {
    double t = 0;
    auto more = reader.next(&t);
    if (!more) return more.error();
    if (!more.value()) break;
    last_time = t;
    // Scene score, FFmpeg's select filter formula (libavfilter/f_select.c), on a thumbnail.
    const cv::Mat& thumb = reader.thumbnail();
    double score = 0;
    if (!previous.empty()) {
      const double mafd = cv::norm(thumb, previous, cv::NORM_L1) / static_cast<double>(thumb.total());
      score = std::clamp(std::min(mafd, std::fabs(mafd - previous_mafd)) / 100.0, 0.0, 1.0);
      previous_mafd = mafd;
    }
    thumb.copyTo(previous);
    const double due = anchor + options.frame_interval;
    const bool regular = !any_kept || t >= due - half_frame - 1e-9;
    const bool scene = any_kept && score >= options.scene_threshold && t - last_kept >= options.min_scene_gap;
    if (!regular && !scene) continue;
    // A gap in the frames (a still, variable frame rate) restarts the clock at the frame taken.
    anchor = !any_kept || !regular || t - due > options.frame_interval ? t : due;
    auto rgb = reader.rgb();
    if (!rgb) return rgb.error();
    VideoFrame frame;
    frame.time = any_kept ? t : 0.0;
    frame.scene_change = !regular;
    frame.rgb = std::move(rgb.value());
    any_kept = true;
    last_kept = t;
    ++reader.info().frames_kept;
    if (!on_frame(frame)) return Error{ErrorCode::kInterrupted, path + ": interrupted"};
  }
  if (auto e = reader.check_end(last_time)) return *e;
  return reader.info();
}

}  // namespace

Result<VideoInfo> decode_video(const std::string& path, const VideoOptions& options,
                               const std::function<bool(const VideoFrame&)>& on_frame) {
  try {
    return decode_impl(path, options, on_frame);
  } catch (const Exception& e) {
    return e.error();
  } catch (const std::exception& e) {
    return Error{ErrorCode::kInternal, path + ": cannot read the video (" + e.what() + ")"};
  }
}

Result<VideoFrame> video_frame_at(const std::string& path, double time, const VideoOptions& options) {
  try {
    Reader reader(path, options);
    if (auto e = reader.open()) return *e;
    if (time > 0) reader.seek(time);
    VideoFrame best;
    bool have = false;
    while (true) {
      double t = 0;
      auto more = reader.next(&t);
      if (!more) return more.error();
      if (!more.value()) break;
      if (have && t > time + 1e-6 && best.time >= time - 1e-6) break;
      auto rgb = reader.rgb();
      if (!rgb) return rgb.error();
      best.time = t;
      best.rgb = std::move(rgb.value());
      have = true;
      if (t >= time - 1e-6) break;
    }
    if (!have) return reader.check_end(0).value_or(reader.error(ErrorCode::kCorrupt, "no frame decodes"));
    return best;
  } catch (const Exception& e) {
    return e.error();
  }
}

}  // namespace cnclip
