// Every command that reads images applies EXIF orientation by default and ignores it with --ignore-exif.
// The library's default is tested in image_test.cpp; these tests fail on their own when one command
// stops passing the option through (a mutation check found that no test noticed a CLI that always
// ignored orientation). Expected values come from the library: preprocess_image_file + Model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cnclip/image.h"
#include "cnclip/index_store.h"
#include "cnclip/model.h"
#include "cnclip/npy.h"
#include "test_util.h"

using namespace cnclip;
using nlohmann::json;

namespace {

// A 2048x1366 JPEG whose EXIF orientation 6 turns it upright as 1366x2048.
const std::string& photo() {
  static const std::string p = test::fixtures("images/coffee_2048x1366_exif6.jpg");
  return p;
}

class ExifInCommands : public ::testing::Test {
 protected:
  test::TempDir dir;
  // What the command is given for each reading: nothing (the default) or --ignore-exif.
  static std::vector<std::string> exif(bool upright) {
    return upright ? std::vector<std::string>{} : std::vector<std::string>{"--ignore-exif"};
  }

  static BundleManifest manifest() { return load_bundle_manifest(test::tiny_bundle()); }

  // What the CLI is documented to decode: reduced JPEG decoding down to twice the input side unless
  // --full-decode, orientation unless --ignore-exif.
  static DecodeOptions decode(bool upright) {
    DecodeOptions d;
    d.apply_exif_orientation = upright;
    d.reduced_decode_min_side = 2 * manifest().image.size;
    return d;
  }
  static std::vector<float> pixels(bool upright) {
    const auto m = manifest();
    std::vector<float> px(3 * static_cast<size_t>(m.image.size) * m.image.size);
    auto ok = preprocess_image_file(photo(), m.image, decode(upright), px.data());
    EXPECT_TRUE(ok.ok()) << ok.error().message;
    return px;
  }
  static std::vector<float> embedding(bool upright) {
    static std::vector<float> cached[2];
    if (cached[upright].empty()) {
      auto model = Model::open(test::tiny_bundle());
      auto px = pixels(upright);
      cached[upright] = model->encode_images(px.data(), 1);
    }
    return cached[upright];
  }
};

TEST_F(ExifInCommands, TheTwoReadingsDifferSoEachCheckBelowCanFail) {
  EXPECT_GT(test::max_abs_diff(pixels(true), pixels(false)), 0.5);
  EXPECT_GT(test::max_abs_diff(embedding(true), embedding(false)), 1e-3);
}

TEST_F(ExifInCommands, Preprocess) {
  for (bool upright : {true, false}) {
    const std::string npy = dir / (upright ? "up.npy" : "side.npy");
    auto r = test::run_cnclip(test::concat({"preprocess", photo(), "--npy", npy}, exif(upright)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(read_npy(npy).value().as_float(), pixels(upright)) << (upright ? "default" : "--ignore-exif");
  }
}

TEST_F(ExifInCommands, EmbedImage) {
  for (bool upright : {true, false}) {
    auto r = test::run_cnclip(test::concat({"embed-image", photo(), "--model", test::tiny_bundle()}, exif(upright)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto row = json::parse(r.out);
    EXPECT_LT(test::max_abs_diff(row["embedding"].get<std::vector<float>>(), embedding(upright)), 1e-5)
        << (upright ? "default" : "--ignore-exif");
  }
}

TEST_F(ExifInCommands, IndexStoresWhatTheOptionSays) {
  for (bool upright : {true, false}) {
    const std::string idx = dir / (upright ? "up" : "side");
    auto r = test::run_cnclip(
        test::concat({"index", photo(), "--index", idx, "--model", test::tiny_bundle()}, exif(upright)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto store = IndexStore::open(idx, IndexAccess::kRead);
    auto record = store->catalog().find(std::filesystem::canonical(photo()).string());  // as indexed
    ASSERT_TRUE(record.has_value());
    EXPECT_LT(test::max_abs_diff(store->catalog().embedding(record->id), embedding(upright)), 1e-5)
        << (upright ? "default" : "--ignore-exif");
  }
}

TEST_F(ExifInCommands, SearchImageQueriesWithWhatTheOptionSays) {
  // An index holding the library's two readings under two names: the query's reading is the one
  // found at score 1.
  const std::string idx = dir / "index";
  json up = {{"path", (dir / "up.jpg")}, {"embedding", embedding(true)}};
  json side = {{"path", (dir / "side.jpg")}, {"embedding", embedding(false)}};
  test::write_text(dir / "e.jsonl", up.dump() + "\n" + side.dump() + "\n");
  test::write_text(dir / "up.jpg", "x");
  test::write_text(dir / "side.jpg", "y");
  auto r = test::run_cnclip({"import", dir / "e.jsonl", "--index", idx, "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (bool upright : {true, false}) {
    r = test::run_cnclip(test::concat(
        {"search-image", photo(), "-k", "1", "--format", "jsonl", "--index", idx, "--model", test::tiny_bundle()},
        exif(upright)));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto hit = json::parse(r.out);
    EXPECT_EQ(hit["path"], dir / (upright ? "up.jpg" : "side.jpg")) << r.out;
    EXPECT_NEAR(hit["score"].get<double>(), 1.0, 1e-5);
  }
}

}  // namespace
