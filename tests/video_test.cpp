// Videos (issue 14): frames chosen every --frame-interval seconds plus scene changes, each a vector of
// the index with its time; adjacent matching frames merged into one result with a time range; the
// output formats; broken and truncated videos; --no-video and the default extensions; a run killed
// mid-video; the schema-4 migration; and serve's poster frames, Range requests and media types.
// Every video is made by the test with FFmpeg's lavfi sources (Debian's ffmpeg).
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>
#include <opencv2/imgcodecs.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cnclip/catalog.h"
#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "cnclip/search.h"
#include "cnclip/video.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string q(const std::string& s) { return test::shell_quote(s); }
// A copy of `from` cut to `bytes`.
void cut_copy(const std::string& from, const std::string& to, uintmax_t bytes) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
  fs::resize_file(to, bytes);
}
void sh(const std::string& cmd) { ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd; }
std::string ffmpeg() { return "ffmpeg -nostdin -hide_banner -loglevel error -y "; }
std::string model_arg() { return " --model " + q(test::tiny_bundle()); }

// Three scenes of 3 s at 25 fps, 320x240: red, FFmpeg's moving test pattern, blue.
void make_scenes(const std::string& out, const std::string& codec = "-c:v libx264 -pix_fmt yuv420p") {
  sh(ffmpeg() + "-f lavfi -i color=c=red:s=320x240:d=3:r=25 -f lavfi -i testsrc=s=320x240:d=3:r=25 " +
     "-f lavfi -i color=c=blue:s=320x240:d=3:r=25 -filter_complex '[0][1][2]concat=n=3:v=1:a=0' " + codec + " " +
     q(out));
}

struct Kept {
  double time;
  bool scene;
  int width, height;
};

Result<std::vector<Kept>> kept_frames(const std::string& path, VideoOptions o = {}) {
  std::vector<Kept> out;
  auto r = decode_video(path, o, [&](const VideoFrame& f) {
    out.push_back(Kept{f.time, f.scene_change, f.rgb.cols, f.rgb.rows});
    return true;
  });
  if (!r) return r.error();
  return out;
}

class Videos : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const std::string d = dir_->path();
    make_scenes(d + "/scenes.mp4");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string file(const std::string& name) { return dir_->path() + "/" + name; }
  static test::TempDir* dir_;
};
test::TempDir* Videos::dir_ = nullptr;

TEST_F(Videos, FramesEveryIntervalPlusSceneChanges) {
  auto frames = kept_frames(file("scenes.mp4"));
  ASSERT_TRUE(frames) << frames.error().message;
  // 0 (first), 2 (interval), 3 (the test pattern starts), 5 (interval), 6 (blue starts), 8 (interval).
  const std::vector<double> want{0, 2, 3, 5, 6, 8};
  const std::vector<bool> scene{false, false, true, false, true, false};
  ASSERT_EQ(frames.value().size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(frames.value()[i].time, want[i], 0.045) << i;
    EXPECT_EQ(frames.value()[i].scene, scene[i]) << i;
    EXPECT_EQ(frames.value()[i].width, 320);
    EXPECT_EQ(frames.value()[i].height, 240);
  }
  // Another interval; scene detection off: only the clock.
  VideoOptions o;
  o.frame_interval = 1.5;
  o.scene_threshold = 2;
  auto clock = kept_frames(file("scenes.mp4"), o);
  ASSERT_TRUE(clock);
  ASSERT_EQ(clock.value().size(), 6u);  // 0, 1.5, 3, 4.5, 6, 7.5
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(clock.value()[i].time, 1.5 * static_cast<double>(i), 0.045);
}

TEST_F(Videos, ReducedSizeAndRotation) {
  const std::string big = file("big.mp4");
  sh(ffmpeg() + "-f lavfi -i testsrc=s=1280x720:d=1:r=10 -c:v libx264 -pix_fmt yuv420p " + q(big));
  VideoOptions o;
  o.reduced_min_side = 448;
  auto f = kept_frames(big, o);
  ASSERT_TRUE(f) << f.error().message;
  ASSERT_FALSE(f.value().empty());
  EXPECT_EQ(f.value()[0].height, 448);
  EXPECT_EQ(f.value()[0].width, 796);  // 1280 * 448 / 720, rounded
  o.reduced_min_side = 0;
  f = kept_frames(big, o);
  ASSERT_TRUE(f);
  EXPECT_EQ(f.value()[0].width, 1280);
  // A phone video recorded sideways: its display matrix turns it upright.
  const std::string turned = file("turned.mp4");
  sh(ffmpeg() + "-i " + q(big) + " -c copy -metadata:s:v:0 rotate=90 " + q(turned));
  f = kept_frames(turned, o);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f.value()[0].width, 720);
  EXPECT_EQ(f.value()[0].height, 1280);
  o.apply_rotation = false;
  f = kept_frames(turned, o);
  ASSERT_TRUE(f);
  EXPECT_EQ(f.value()[0].width, 1280);
}

TEST_F(Videos, ContainersAndCodecs) {
  struct Case {
    const char* name;
    const char* codec;
  };
  for (const Case& c : {Case{"a.mkv", "-c:v libx264 -pix_fmt yuv420p"},
                        Case{"a.webm", "-c:v libvpx-vp9 -deadline realtime -cpu-used 8"}, Case{"a.avi", "-c:v mpeg4"},
                        Case{"a.mov", "-c:v mjpeg"}, Case{"A.MP4", "-c:v libx264"}}) {
    make_scenes(file(c.name), c.codec);
    auto f = kept_frames(file(c.name));
    ASSERT_TRUE(f) << c.name << ": " << f.error().message;
    ASSERT_EQ(f.value().size(), 6u) << c.name;
    EXPECT_NEAR(f.value()[2].time, 3, 0.045) << c.name;
    EXPECT_TRUE(is_video_path(file(c.name)));
  }
  EXPECT_FALSE(is_video_path("/a/b.jpg"));
  EXPECT_FALSE(is_video_path("/a.mp4/b"));
}

TEST_F(Videos, BrokenAndTruncatedFilesFailWithOneLine) {
  // Not a video at all.
  const std::string junk = file("junk.mp4");
  std::ofstream(junk) << std::string(5000, 'x');
  auto r = kept_frames(junk);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kCorrupt) << r.error().message;
  // An MP4 cut before its index (moov at the end, as cameras write it).
  const std::string longer = file("long.mp4");
  sh(ffmpeg() + "-f lavfi -i testsrc=s=320x240:d=10:r=25 -c:v libx264 -pix_fmt yuv420p " + q(longer));
  const auto size = fs::file_size(longer);
  const std::string cut = file("cut.mp4");
  cut_copy(longer, cut, size / 2);
  r = kept_frames(cut);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated) << r.error().message;
  // The same with its index first (faststart): frames stop early, the duration says 10 s.
  const std::string fast = file("fast.mp4");
  sh(ffmpeg() + "-i " + q(longer) + " -c copy -movflags +faststart " + q(fast));
  const std::string cut_fast = file("cut_fast.mp4");
  cut_copy(fast, cut_fast, fs::file_size(fast) / 2);
  r = kept_frames(cut_fast);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated) << r.error().message;
  EXPECT_NE(r.error().message.find("of 10.0 s"), std::string::npos) << r.error().message;
  // Empty, missing, and no video stream (audio only).
  const std::string empty = file("empty.mp4");
  std::ofstream(empty).flush();
  r = kept_frames(empty);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated);
  r = kept_frames(file("missing.mp4"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  const std::string audio = file("audio.mp4");
  sh(ffmpeg() + "-f lavfi -i sine=d=1 -c:a aac " + q(audio));
  r = kept_frames(audio);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kUnsupportedFormat);
  // The pixel limit is checked before decoding.
  VideoOptions small;
  small.max_pixels = 320 * 240 - 1;
  r = kept_frames(file("scenes.mp4"), small);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTooLarge);
  // Every message: one line naming the file.
  for (const auto& p : {junk, cut, cut_fast, audio}) {
    auto e = kept_frames(p);
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error().message.find('\n'), std::string::npos) << e.error().message;
    EXPECT_EQ(e.error().message.rfind(p + ": ", 0), 0u) << e.error().message;
  }
}

TEST_F(Videos, PosterFrameAtATime) {
  auto f = video_frame_at(file("scenes.mp4"), 7.0, VideoOptions{});
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_NEAR(f.value().time, 7.0, 0.045);
  const cv::Vec3b px = f.value().rgb.at<cv::Vec3b>(120, 160);
  EXPECT_LT(px[0], 40);  // blue: R low, B high
  EXPECT_GT(px[2], 200);
  f = video_frame_at(file("scenes.mp4"), 1.0, VideoOptions{});
  ASSERT_TRUE(f);
  EXPECT_GT(f.value().rgb.at<cv::Vec3b>(120, 160)[0], 200);  // red
  // Past the end: the last frame.
  f = video_frame_at(file("scenes.mp4"), 100.0, VideoOptions{});
  ASSERT_TRUE(f);
  EXPECT_NEAR(f.value().time, 8.96, 0.05);
}

// read_image_header learns the sizes of HEIC/AVIF (container boxes), camera RAW (LibRaw's metadata)
// and GIF (logical screen), so their capture size is stored like other photos'.
TEST(MediaHeader, SizesOfHeifAvifRawAndGif) {
  test::TempDir tmp;
  const std::string d = tmp.path();
  cv::Mat img(90, 120, CV_8UC3, cv::Scalar(10, 120, 240));
  ASSERT_TRUE(cv::imwrite(d + "/src.png", img));
  sh("heif-enc -q 80 -o " + q(d + "/a.heic") + " " + q(d + "/src.png"));
  sh("avifenc " + q(d + "/src.png") + " " + q(d + "/a.avif"));
  const std::string py = std::string(CNCLIP_PYTHON) + " " + q(std::string(CNCLIP_SOURCE_DIR) + "/tests/media_files.py");
  sh(py + " gif " + q(d + "/a.gif"));
  sh(py + " dng " + q(d + "/a.dng"));
  auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
  };
  for (const char* name : {"a.heic", "a.avif"}) {
    auto h = read_image_header(bytes(d + "/" + name), name);
    ASSERT_TRUE(h) << name << ": " << h.error().message;
    EXPECT_EQ(h.value().width, 120) << name;
    EXPECT_EQ(h.value().height, 90) << name;
  }
  // The sensor's size for RAW (media_files.py writes 320x240; a decode demosaics at half size), the
  // logical screen for GIF (as its decoder lays the frame out).
  auto dng = read_image_header(bytes(d + "/a.dng"), "a.dng");
  ASSERT_TRUE(dng) << dng.error().message;
  EXPECT_EQ(dng.value().format, "raw");
  EXPECT_EQ(dng.value().width, 320);
  EXPECT_EQ(dng.value().height, 240);
  const auto gif_bytes = bytes(d + "/a.gif");
  auto gif = read_image_header(gif_bytes, "a.gif");
  ASSERT_TRUE(gif) << gif.error().message;
  auto decoded = decode_image(gif_bytes, "a.gif", DecodeOptions{});
  ASSERT_TRUE(decoded);
  EXPECT_EQ(gif.value().width, decoded.value().pixels.cols);
  EXPECT_EQ(gif.value().height, decoded.value().pixels.rows);
  // A first part that does not reach the size: 0, not an error.
  auto cut = bytes(d + "/a.heic");
  cut.resize(40);
  auto h = read_image_header(cut, "a.heic");
  ASSERT_TRUE(h);
  EXPECT_EQ(h.value().width, 0);
}

// merge_video_hits on its own: runs of consecutive frames become one result, in best-first order.
TEST(VideoMerge, AdjacentFramesOfOneVideoMerge) {
  FrameMap map;
  // Video 7: frames 0 (its row), 1..5 at 2 s steps. Video 9: its row and one frame.
  for (int s = 1; s <= 5; ++s) map.frames[kFrameIdBase + s] = FramePosition{7, 2000 * s, s};
  map.frames[kFrameIdBase + 10] = FramePosition{9, 2000, 1};
  map.videos = {7, 9};
  const std::vector<SearchHit> hits{{kFrameIdBase + 2, 0.9f},
                                    {3, 0.8f},  // 3: a photo
                                    {kFrameIdBase + 1, 0.7f},
                                    {kFrameIdBase + 5, 0.6f},
                                    {7, 0.5f},
                                    {kFrameIdBase + 10, 0.4f}};
  const auto m = merge_video_hits(hits, map);
  ASSERT_EQ(m.size(), 4u);
  // Frames 0, 1, 2 of video 7: one result at the best (frame 2, 4 s), from 0 to 4 s.
  EXPECT_EQ(m[0].file_id, 7);
  EXPECT_FLOAT_EQ(m[0].score, 0.9f);
  EXPECT_EQ(m[0].time_ms, 4000);
  EXPECT_EQ(m[0].start_ms, 0);
  EXPECT_EQ(m[0].end_ms, 4000);
  EXPECT_EQ(m[1].file_id, 3);
  EXPECT_FALSE(m[1].has_frames);
  // Frame 5 is not next to 2: a result of its own.
  EXPECT_EQ(m[2].file_id, 7);
  EXPECT_EQ(m[2].start_ms, 10000);
  EXPECT_EQ(m[2].end_ms, 10000);
  EXPECT_EQ(m[3].file_id, 9);
  EXPECT_EQ(m[3].time_ms, 2000);
}

// Through the CLI: index a folder with a video and a photo, then search.
class VideoIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    media_ = tmp_ / "media";
    index_ = tmp_ / "index";
    fs::create_directories(media_);
    make_scenes(media_ + "/scenes.mp4");
    test::copy_file(test::fixtures("images/pokemon.jpeg"), media_ + "/pokemon.jpeg");
  }
  // For ServeRun (a shell command line) and for run_cnclip.
  std::string common() const { return model_arg() + " --index " + q(index_); }
  std::vector<std::string> common_args() const { return {"--model", test::tiny_bundle(), "--index", index_}; }
  test::RunResult index(const std::vector<std::string>& extra = {}) {
    return test::run_cnclip(
        test::concat(test::concat({"index", "-q", "--format", "json"}, extra), test::concat({media_}, common_args())));
  }
  test::TempDir tmp_;
  std::string media_, index_;
};

TEST_F(VideoIndex, FramesAreStoredAndSearchReturnsMoments) {
  auto r = index();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto s = json::parse(r.out);
  EXPECT_EQ(s["added"], 2);
  EXPECT_EQ(s["video_frames"], 6);
  {
    auto c = Catalog::open_read_only(index_ + "/catalog.sqlite3");
    EXPECT_EQ(c->count(), 2);
    EXPECT_EQ(c->vector_count(), 7);  // the photo, the video's row (frame 0) and 5 more frames
    auto v = c->find(media_ + "/scenes.mp4");
    ASSERT_TRUE(v);
    EXPECT_EQ(v->meta.width, 320);
    const auto frames = c->frames_of(v->id);
    ASSERT_EQ(frames.size(), 5u);
    const int64_t want[] = {2000, 3000, 5000, 6000, 8000};
    for (size_t i = 0; i < 5; ++i)
      EXPECT_NEAR(static_cast<double>(frames[i].time_ms), static_cast<double>(want[i]), 45);
  }
  // Every frame matches (threshold -1): they are adjacent, so the video is one result spanning 0-8 s.
  r = test::run_cnclip(test::concat(
      {"search-text", "红色", "-k", "10", "--threshold", "-1", "--format", "jsonl", "--no-server"}, common_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto rows = test::lines(r.out);
  ASSERT_EQ(rows.size(), 2u) << r.out;
  bool saw_video = false;
  for (const auto& line : rows) {
    auto j = json::parse(line);
    if (j["path"] == media_ + "/scenes.mp4") {
      saw_video = true;
      ASSERT_TRUE(j["time"].is_number()) << line;
      EXPECT_EQ(j["start"], 0);
      EXPECT_NEAR(j["end"].get<double>(), 8, 0.045);
      EXPECT_GE(j["time"].get<double>(), 0);
      EXPECT_TRUE(j["taken"].is_string()) << line;  // the capture time moves aside for the moment
      EXPECT_EQ(j["width"], 320);
    } else {
      EXPECT_TRUE(j["time"].is_string()) << line;  // a photo's capture time, as before
      EXPECT_FALSE(j.contains("start"));
    }
  }
  EXPECT_TRUE(saw_video);
  // An example frame of the blue scene finds the video at the blue scene: 6 or 8 s.
  const std::string frame = tmp_ / "blue.png";
  sh(ffmpeg() + "-ss 7 -i " + q(media_ + "/scenes.mp4") + " -frames:v 1 " + q(frame));
  r = test::run_cnclip(
      test::concat({"search-image", frame, "-k", "1", "--format", "jsonl", "--no-server"}, common_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto best = json::parse(test::lines(r.out).at(0));
  EXPECT_EQ(best["path"], media_ + "/scenes.mp4");
  EXPECT_GE(best["time"].get<double>(), 5.9);
  EXPECT_LE(best["start"].get<double>(), best["time"].get<double>());
  EXPECT_GE(best["end"].get<double>(), best["time"].get<double>());
  // paths: path#t=SECONDS; table: the time of the moment.
  r = test::run_cnclip(
      test::concat({"search-image", frame, "-k", "1", "--format", "paths", "--no-server"}, common_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_match(r.out, m,
                               std::regex(std::regex_replace(media_, std::regex("[.^$|()\\[\\]{}*+?\\\\]"), "\\$&") +
                                          "/scenes\\.mp4#t=([0-9.]+)\n")))
      << r.out;
  EXPECT_NEAR(std::stod(m[1]), best["time"].get<double>(), 1e-3);
  r = test::run_cnclip(
      test::concat({"search-image", frame, "-k", "1", "--format", "table", "--no-server"}, common_args()));
  EXPECT_NE(r.out.find("scenes.mp4  @ 0:0"), std::string::npos) << r.out;
  // json: the same fields in an array.
  r = test::run_cnclip(
      test::concat({"search-image", frame, "-k", "1", "--format", "json", "--no-server"}, common_args()));
  auto arr = json::parse(r.out);
  ASSERT_EQ(arr.size(), 1u);
  EXPECT_EQ(arr[0]["time"], best["time"]);
  // The time filter and --under see videos through their rows.
  r = test::run_cnclip(test::concat(
      {"search-image", frame, "-k", "5", "--under", media_, "--format", "jsonl", "--no-server"}, common_args()));
  EXPECT_EQ(test::lines(r.out).size(), 2u) << r.out;
  // Unchanged: nothing decoded again; removed: its frames go with it.
  r = index();
  EXPECT_EQ(json::parse(r.out)["unchanged"], 2) << r.out;
  r = test::run_cnclip({"remove", media_ + "/scenes.mp4", "--index", index_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto c = Catalog::open_read_only(index_ + "/catalog.sqlite3");
  EXPECT_EQ(c->vector_count(), 1);
  EXPECT_TRUE(c->frames().empty());
}

TEST_F(VideoIndex, ChangedMovedBrokenAndNoVideo) {
  ASSERT_EQ(index().exit_code, 0);
  // A move keeps the frames (same content), without decoding.
  fs::rename(media_ + "/scenes.mp4", media_ + "/moved.mp4");
  auto r = index();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["moved"], 1) << r.out;
  {
    auto c = Catalog::open_read_only(index_ + "/catalog.sqlite3");
    auto v = c->find(media_ + "/moved.mp4");
    ASSERT_TRUE(v);
    EXPECT_EQ(c->frames_of(v->id).size(), 5u);
  }
  // A changed video: its frames are replaced, not added to.
  sh(ffmpeg() + "-f lavfi -i testsrc=s=160x120:d=4:r=10 -c:v libx264 -pix_fmt yuv420p " + q(media_ + "/moved.mp4"));
  r = index();
  EXPECT_EQ(json::parse(r.out)["updated"], 1) << r.out;
  {
    auto c = Catalog::open_read_only(index_ + "/catalog.sqlite3");
    auto v = c->find(media_ + "/moved.mp4");
    ASSERT_TRUE(v);
    EXPECT_EQ(c->frames_of(v->id).size(), 1u);  // 0 and 2 s
    EXPECT_EQ(c->vector_count(), 3);
  }
  // Broken and truncated videos: one line each, the rest indexed, exit 0; not tried again unchanged.
  std::ofstream(media_ + "/junk.mkv") << std::string(3000, 'j');
  sh(ffmpeg() + "-f lavfi -i testsrc=s=320x240:d=10:r=25 -c:v libx264 -pix_fmt yuv420p " + q(tmp_ / "long.mp4"));
  cut_copy(tmp_ / "long.mp4", media_ + "/cut.mp4", 30000);
  r = test::run_cnclip(test::concat({"index", "--format", "json", media_}, common_args()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["failed"], 2) << r.out;
  EXPECT_NE(r.err.find("cnclip: skipped: " + media_ + "/junk.mkv: cannot read the video ("), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("cnclip: skipped: " + media_ + "/cut.mp4: cannot read the video (the file ends early"),
            std::string::npos)
      << r.err;
  r = index();
  EXPECT_EQ(json::parse(r.out)["failed_before"], 2) << r.out;
  // --no-video: videos are left out of the folder (and removed from the index, as any exclusion).
  r = index({"--no-video"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto c = Catalog::open_read_only(index_ + "/catalog.sqlite3");
  EXPECT_EQ(c->count(), 1);
  EXPECT_EQ(c->vector_count(), 1);
  r = test::run_cnclip(test::concat({"index", "--no-video", "--ext", "mp4", media_}, common_args()));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--no-video"), std::string::npos) << r.err;
  r = test::run_cnclip(test::concat({"index", "--frame-interval", "0", media_}, common_args()));
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST(VideoWalk, DefaultExtensionsTakeVideos) {
  const auto d = WalkOptions::default_extensions();
  for (const auto& e : video_extensions()) EXPECT_NE(std::find(d.begin(), d.end(), e), d.end()) << e;
  test::TempDir tmp;
  fs::create_directories(tmp / "m");
  for (const char* n : {"a.mp4", "b.MOV", "c.mkv", "d.webm", "e.avi", "f.m4v", "g.txt"})
    std::ofstream((tmp / "m") + "/" + n) << "x";
  EXPECT_EQ(walk_folder(tmp / "m", WalkOptions{}).files.size(), 6u);
}

// A catalog of schema 3 (before frames) is upgraded in place: its rows are kept, frames can be added.
TEST(VideoCatalog, Schema3IsUpgraded) {
  test::TempDir tmp;
  const std::string path = tmp / "catalog.sqlite3";
  std::vector<float> e(4, 0.5f);
  {
    auto c = Catalog::open(path, true);
    CatalogTransaction tx(*c);
    c->insert(FileRecord{0, "/p/a.jpg", 1, 2, "h", 3}, e.data(), 4);
    tx.commit();
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "DROP TABLE frames; UPDATE meta SET value = '3' WHERE key = 'schema_version';", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  {
    auto ro = Catalog::open_read_only(path);  // read as it is: no frames, nothing written
    EXPECT_TRUE(ro->frames().empty());
    EXPECT_EQ(ro->vector_count(), 1);
    EXPECT_EQ(ro->meta("schema_version"), "3");
  }
  auto c = Catalog::open(path, false);
  EXPECT_EQ(c->meta("schema_version"), "4");
  EXPECT_EQ(c->count(), 1);
  CatalogTransaction tx(*c);
  const int64_t id = c->insert(FileRecord{0, "/p/v.mp4", 1, 2, "h2", 3}, e.data(), 4);
  std::vector<float> two(8, 0.5f);
  c->set_frames(id, {2000, 4000}, two.data(), 4);
  tx.commit();
  EXPECT_EQ(c->vector_count(), 4);
  std::vector<int64_t> ids;
  c->for_each_embedding(4, [&](int64_t i, const float*) { ids.push_back(i); });
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_GE(ids[2], kFrameIdBase);
  CatalogTransaction tx2(*c);
  c->remove(id);
  tx2.commit();
  EXPECT_TRUE(c->frames().empty());  // ON DELETE CASCADE
}

// Killed (SIGKILL) in the middle of the videos: every video in the index has all its frames, and the
// next run adds the rest without duplicates. Ctrl-C: exit 130, the video in progress left out.
TEST(VideoCrash, KillMidVideoThenResume) {
  test::TempDir tmp;
  const std::string media = tmp / "media";
  fs::create_directories(media);
  const int n = 5;
  for (int i = 0; i < n; ++i) {
    sh(ffmpeg() + "-f lavfi -i testsrc=s=160x120:d=20:r=10 -vf hue=h=" + std::to_string(i * 60) +
       " -c:v libx264 -pix_fmt yuv420p " + q(media + "/v" + std::to_string(i) + ".mp4"));
  }
  const std::string ref = tmp / "ref";
  auto r = test::run_cnclip(
      {"index", "-q", "--frame-interval", "0.1", media, "--model", test::tiny_bundle(), "--index", ref});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::map<std::string, size_t> want;
  {
    auto c = Catalog::open_read_only(ref + "/catalog.sqlite3");
    for (const auto& f : c->files_under("")) want[f.path] = c->frames_of(f.id).size();
  }
  ASSERT_EQ(want.size(), static_cast<size_t>(n));
  for (const auto& [p, k] : want) EXPECT_GE(k, 150u) << p;

  for (const int sig : {SIGKILL, SIGINT}) {
    const std::string idx = tmp / (sig == SIGKILL ? "killed" : "interrupted");
    const std::string err = tmp / "err";
    pid_t pid = ::fork();
    if (pid == 0) {
      const std::string cmd = std::string("exec ") + CNCLIP_BINARY + " index --frame-interval 0.1 " + q(media) +
                              model_arg() + " --index " + q(idx) + " 2> " + q(err);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Until the first video is committed.
    const std::string cat = idx + "/catalog.sqlite3";
    bool committed = false;
    for (int i = 0; i < 3000 && !committed; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (!fs::exists(cat)) continue;
      try {
        committed = Catalog::open_read_only(cat)->count() > 0;
      } catch (const Exception&) {
      }
    }
    ASSERT_TRUE(committed);
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (sig == SIGINT) {
      ASSERT_TRUE(WIFEXITED(status)) << test::read_text(err);
      EXPECT_EQ(WEXITSTATUS(status), 130) << test::read_text(err);
      EXPECT_NE(test::read_text(err).find("interrupted"), std::string::npos);
    }
    size_t kept = 0;
    {
      auto c = Catalog::open_read_only(cat);
      for (const auto& f : c->files_under("")) {
        EXPECT_EQ(c->frames_of(f.id).size(), want.at(f.path)) << "a video committed without all its frames: " << f.path;
        ++kept;
      }
    }
    EXPECT_LT(kept, static_cast<size_t>(n)) << "the run ended before the signal";
    r = test::run_cnclip({"index", "-q", "--format", "json", "--frame-interval", "0.1", media, "--model",
                          test::tiny_bundle(), "--index", idx});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["added"].get<size_t>(), n - kept) << r.out;
    auto c = Catalog::open_read_only(cat);
    size_t total = 0;
    for (const auto& f : c->files_under("")) {
      EXPECT_EQ(c->frames_of(f.id).size(), want.at(f.path)) << f.path;
      total += 1 + want.at(f.path);
    }
    EXPECT_EQ(c->count(), n);
    EXPECT_EQ(c->vector_count(), static_cast<int64_t>(total));  // no frame twice
  }
}

// `cnclip serve --port 0 ARGS` in the background, stopped when destroyed.
class ServeRun {
 public:
  explicit ServeRun(const std::string& args) {
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string cmd = std::string("exec ") + CNCLIP_BINARY + " serve --port 0 " + args + " 2> " +
                              q(err_ / "stderr") + " > /dev/null < /dev/null";
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const std::regex listening("listening on http://[^ ]*:([0-9]+)/");
    for (int i = 0; i < 600 && port_ == 0; ++i) {
      std::smatch m;
      const std::string text = test::read_text(err_ / "stderr");
      if (std::regex_search(text, m, listening)) port_ = std::stoi(m[1]);
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~ServeRun() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  int port() const { return port_; }
  std::string err() const { return test::read_text(err_ / "stderr"); }

 private:
  test::TempDir err_;
  pid_t pid_ = -1;
  int port_ = 0;
};

TEST_F(VideoIndex, ServePosterRangeAndMediaTypes) {
  sh(ffmpeg() + "-f lavfi -i testsrc=s=64x48:d=1 -frames:v 1 " + q(media_ + "/a.gif"));
  sh("heif-enc -q 60 -o " + q(media_ + "/b.heic") + " " + q(test::fixtures("images/pokemon.jpeg")));
  auto r = index();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(json::parse(r.out)["added"], 4) << r.out;
  ServeRun server(common());
  ASSERT_GT(server.port(), 0) << server.err();
  httplib::Client http("127.0.0.1", server.port());
  auto res = http.Get("/api/v1/search?q=x&k=10");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  std::map<std::string, json> by_name;
  const json found = json::parse(res->body);
  for (const auto& h : found["results"]) by_name[fs::path(h["path"].get<std::string>()).filename()] = h;
  ASSERT_EQ(by_name.size(), 4u) << res->body;
  const json& v = by_name["scenes.mp4"];
  ASSERT_TRUE(v.contains("video")) << v;
  EXPECT_TRUE(v["time"].is_number());
  EXPECT_TRUE(v["start"].is_number());
  EXPECT_NE(v["thumbnail"].get<std::string>().find("?t="), std::string::npos);
  EXPECT_FALSE(by_name["pokemon.jpeg"].contains("video"));
  EXPECT_EQ(by_name["pokemon.jpeg"]["viewable"], true);
  EXPECT_EQ(by_name["b.heic"]["viewable"], false);  // the page shows its thumbnail

  // The poster is the frame at the time asked: red at 1 s, blue at 7 s.
  const std::string id = std::to_string(v["id"].get<int64_t>());
  for (const auto& [t, red] : {std::pair<std::string, bool>{"1", true}, {"7.5", false}}) {
    auto p = http.Get("/api/v1/thumb/" + id + "?t=" + t);
    ASSERT_TRUE(p);
    ASSERT_EQ(p->status, 200) << p->body;
    EXPECT_EQ(p->get_header_value("Content-Type"), "image/jpeg");
    cv::Mat img = cv::imdecode(std::vector<uint8_t>(p->body.begin(), p->body.end()), cv::IMREAD_COLOR);
    ASSERT_FALSE(img.empty());
    const cv::Vec3b px = img.at<cv::Vec3b>(img.rows / 2, img.cols / 2);  // BGR
    EXPECT_EQ(px[2] > 200, red) << t;
    EXPECT_EQ(px[0] > 200, !red) << t;
  }
  auto bad = http.Get("/api/v1/thumb/" + id + "?t=-1");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);

  // The original: its type, and byte ranges for seeking.
  const std::string original = test::read_text(media_ + "/scenes.mp4");
  auto whole = http.Get(v["video"].get<std::string>());
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 200);
  EXPECT_EQ(whole->get_header_value("Content-Type"), "video/mp4");
  EXPECT_EQ(whole->get_header_value("Accept-Ranges"), "bytes");
  EXPECT_EQ(whole->body, original);
  auto part = http.Get(v["video"].get<std::string>(), httplib::Headers{{"Range", "bytes=100-199"}});
  ASSERT_TRUE(part);
  EXPECT_EQ(part->status, 206);
  EXPECT_EQ(part->get_header_value("Content-Range"), "bytes 100-199/" + std::to_string(original.size()));
  EXPECT_EQ(part->body, original.substr(100, 100));
  auto tail = http.Get(v["video"].get<std::string>(), httplib::Headers{{"Range", "bytes=-50"}});
  ASSERT_TRUE(tail);
  EXPECT_EQ(tail->status, 206);
  EXPECT_EQ(tail->body, original.substr(original.size() - 50));
  auto beyond = http.Get(v["video"].get<std::string>(),
                         httplib::Headers{{"Range", "bytes=" + std::to_string(original.size() + 10) + "-"}});
  ASSERT_TRUE(beyond);
  EXPECT_EQ(beyond->status, 416);
  for (const auto& [name, type] : std::map<std::string, std::string>{
           {"a.gif", "image/gif"}, {"b.heic", "image/heic"}, {"pokemon.jpeg", "image/jpeg"}}) {
    auto o = http.Get(by_name[name]["image"].get<std::string>());
    ASSERT_TRUE(o);
    EXPECT_EQ(o->status, 200);
    EXPECT_EQ(o->get_header_value("Content-Type"), type) << name;
  }
  // The HEIC's thumbnail is what the page shows for it.
  auto th = http.Get(by_name["b.heic"]["thumbnail"].get<std::string>());
  ASSERT_TRUE(th);
  EXPECT_EQ(th->status, 200);
  EXPECT_EQ(th->get_header_value("Content-Type"), "image/jpeg");
}

}  // namespace
}  // namespace cnclip
