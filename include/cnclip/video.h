// Videos: the frames cnclip indexes, read through FFmpeg's libraries (libavformat, libavcodec,
// libswscale). Those libraries are loaded the first time a video is decoded, not at start-up (see
// decode_video.cpp for the measured cost), so commands that meet no video do not pay for them.
#pragma once

#include <opencv2/core/mat.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/error.h"

namespace cnclip {

// File name extensions (lower case, no dot) taken as videos: mp4, m4v, mov, mkv, webm, avi.
const std::vector<std::string>& video_extensions();
// Whether `path`'s extension is one of video_extensions() (any case).
bool is_video_path(const std::string& path);

// Default of --frame-interval, in seconds (issue 14).
inline constexpr double kDefaultFrameInterval = 2.0;

struct VideoOptions {
  // A frame is kept when it is at least this many seconds after the last kept frame (the first frame
  // is always kept); > 0.
  double frame_interval = kDefaultFrameInterval;
  // Scene changes: a frame whose scene score (FFmpeg's select filter formula: min(mafd, |mafd -
  // previous mafd|) / 100, mafd the mean absolute luma difference to the frame before, on a 64x36
  // thumbnail) reaches this is kept too, when at least min_scene_gap seconds after the last kept
  // frame. 0.3 is the value FFmpeg's documentation uses for select='gt(scene,0.3)'. > 1 disables.
  double scene_threshold = 0.3;
  double min_scene_gap = 0.5;
  // The kept frames are scaled (area averaging) so that their shorter side is this many pixels when
  // it was longer (the CLI passes twice the model's input side, as for JPEG reduced decoding); 0
  // keeps the full size.
  int reduced_min_side = 448;
  // Turn frames upright by the stream's display matrix (phones record rotated), as EXIF for photos.
  bool apply_rotation = true;
  int64_t max_pixels = 100'000'000;  // a larger frame size is refused (kTooLarge) before decoding
};

struct VideoFrame {
  double time = 0;  // seconds from the start of the video (the first kept frame is 0)
  bool scene_change = false;
  cv::Mat rgb;  // CV_8UC3, R, G, B order, upright
};

struct VideoInfo {
  double duration = 0;        // seconds, as the container says (0 when it does not)
  int width = 0, height = 0;  // upright, as stored
  int64_t frames_decoded = 0;
  int64_t frames_kept = 0;
  std::optional<int64_t> creation_time;  // the container's creation_time tag (unix seconds, UTC)
};

// Decodes the best video stream of the file at `path` and calls on_frame for each kept frame, in
// time order. on_frame returning false stops the decoding: the result is then kInterrupted. Errors
// name the path, in one line: kUnsupportedFormat (no video stream, no decoder), kCorrupt (FFmpeg
// cannot read it, or no frame decodes), kTruncated (the frames stop well before the duration the
// container gives: less than 90% of it, and over a second short), kTooLarge (max_pixels), kNotFound /
// kPermissionDenied, kInternal (FFmpeg's libraries cannot be loaded). Thread-safe: each call has its
// own FFmpeg contexts; FFmpeg's log goes nowhere (its last error line is put in the message).
Result<VideoInfo> decode_video(const std::string& path, const VideoOptions& options,
                               const std::function<bool(const VideoFrame&)>& on_frame);

// One frame at `time` seconds (the first frame decoded at or after it; the last one when the video
// ends first), scaled as above: for posters. Same errors as decode_video.
Result<VideoFrame> video_frame_at(const std::string& path, double time, const VideoOptions& options);

}  // namespace cnclip
