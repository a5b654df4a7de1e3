#include "cnclip/model.h"

#include <gtest/gtest.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cnclip/image.h"
#include "cnclip/npy.h"
#include "test_util.h"

namespace cnclip {
namespace {

const std::vector<std::string> kImageOrder = {"astronaut_palette", "camera_gray_1000x100",
                                              "chelsea_rgba",      "coffee_2048x1366_exif6",
                                              "pokemon",           "rocket_rgb16_17x9"};
const std::vector<std::string> kImageFiles = {"astronaut_palette.png", "camera_gray_1000x100.png",
                                              "chelsea_rgba.png",      "coffee_2048x1366_exif6.jpg",
                                              "pokemon.jpeg",          "rocket_rgb16_17x9.png"};

using test::max_abs_diff;
using test::normalized_rows;

std::vector<float> reference_pixels() {
  std::vector<float> pixels;
  for (const auto& name : kImageOrder) {
    auto t = read_npy(test::fixtures("preprocess/" + name + ".npy")).value().as_float();
    pixels.insert(pixels.end(), t.begin(), t.end());
  }
  return pixels;
}

TEST(Model, ImageFeaturesMatchReference) {
  auto model = Model::open(test::tiny_bundle());
  const auto ref = normalized_rows(read_npy(test::fixtures("reference/image_features.npy")).value().as_float(), 32);
  const auto pixels = reference_pixels();
  const auto ours = model->encode_images(pixels.data(), 6);
  EXPECT_LE(max_abs_diff(ours, ref), 1e-5f);
  // One at a time gives the same.
  const auto one = model->encode_images(pixels.data() + 4 * 3 * 224 * 224, 1);
  EXPECT_LE(max_abs_diff(one, std::vector<float>(ref.begin() + 4 * 32, ref.begin() + 5 * 32)), 1e-5f);
}

TEST(Model, TextFeaturesMatchReferenceFromIds) {
  auto model = Model::open(test::tiny_bundle());
  const auto ids = read_npy(test::fixtures("reference/text_tokens.npy")).value().as_int64();
  const auto ref = normalized_rows(read_npy(test::fixtures("reference/text_features.npy")).value().as_float(), 32);
  const auto ours = model->encode_token_ids(ids.data(), 20, 52);
  EXPECT_LE(max_abs_diff(ours, ref), 1e-5f);
}

TEST(Model, TextFeaturesMatchReferenceFromTexts) {
  auto model = Model::open(test::tiny_bundle());
  std::ifstream in(test::fixtures("reference/manifest.json"));
  auto manifest = nlohmann::json::parse(in);
  const auto texts = manifest["texts"].get<std::vector<std::string>>();
  const auto ref = normalized_rows(read_npy(test::fixtures("reference/text_features.npy")).value().as_float(), 32);
  EXPECT_LE(max_abs_diff(model->encode_texts(texts), ref), 1e-5f);
}

TEST(Model, OurPreprocessingGivesTheReferenceEmbeddings) {
  auto model = Model::open(test::tiny_bundle());
  const auto ref = normalized_rows(read_npy(test::fixtures("reference/image_features.npy")).value().as_float(), 32);
  DecodeOptions parity;
  parity.apply_exif_orientation = false;
  for (size_t i = 0; i < kImageFiles.size(); ++i) {
    std::vector<float> pixels(3 * 224 * 224);
    auto bytes = read_file_bytes(test::fixtures("images/" + kImageFiles[i])).value();
    ASSERT_TRUE(preprocess_image(bytes, kImageFiles[i], model->manifest().image, parity, pixels.data()).ok());
    const auto e = model->encode_images(pixels.data(), 1);
    double cosine = 0;
    for (int d = 0; d < 32; ++d) cosine += double(e[d]) * ref[i * 32 + d];
    EXPECT_GE(cosine, 0.99999) << kImageFiles[i];
  }
}

TEST(Model, PokemonLabelProbabilities) {
  auto model = Model::open(test::tiny_bundle());
  const auto pixels = read_npy(test::fixtures("preprocess/pokemon.npy")).value().as_float();
  const auto img = model->encode_images(pixels.data(), 1);
  const auto txt = model->encode_texts({"杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"});
  const auto ref = read_npy(test::fixtures("reference/pokemon_label_probs.npy")).value().as_float();
  std::vector<double> logits(4);
  double denom = 0;
  for (int t = 0; t < 4; ++t) {
    double c = 0;
    for (int d = 0; d < 32; ++d) c += double(img[d]) * txt[t * 32 + d];
    logits[t] = std::exp(model->manifest().logit_scale * c);
    denom += logits[t];
  }
  for (int t = 0; t < 4; ++t) EXPECT_NEAR(logits[t] / denom, ref[t], 1e-5);
}

TEST(Model, TowersLoadLazily) {
  auto model = Model::open(test::tiny_bundle());
  EXPECT_FALSE(model->image_tower_loaded());
  EXPECT_FALSE(model->text_tower_loaded());
  model->encode_texts({"小狗"});
  EXPECT_TRUE(model->text_tower_loaded());
  EXPECT_FALSE(model->image_tower_loaded());
}

TEST(Model, Int8TowersKeepOneDnnPrimitiveCacheSmall) {
  // Without the limit, indexing with an int8 tower filled oneDNN's cache with ~1 MB primitives that
  // are not reused (1.9 GB peak instead of 0.8 GB for 64 photos).
  ASSERT_EQ(std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), nullptr);
  ASSERT_EQ(std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY"), nullptr);
  auto model = Model::open(test::tiny_int8_bundle());
  model->encode_texts({"小狗"});
  // LibTorch (and its oneDNN) come with the model module, loaded by the first encode.
  using GetCapacity = int (*)(int*);  // dnnl_status_t dnnl_get_primitive_cache_capacity(int*)
  auto get = reinterpret_cast<GetCapacity>(dlsym(RTLD_DEFAULT, "dnnl_get_primitive_cache_capacity"));
  ASSERT_NE(get, nullptr) << "LibTorch's oneDNN (libdnnl) is not loaded";
  int capacity = -1;
  ASSERT_EQ(get(&capacity), 0);
  EXPECT_EQ(capacity, 16);
}

class BrokenBundle : public ::testing::Test {
 protected:
  test::TempDir dir;
  std::string bundle = dir / "bundle";
  void SetUp() override {
    std::filesystem::copy(test::tiny_bundle(), bundle, std::filesystem::copy_options::recursive);
  }
  std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Exception& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
      return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }
};

TEST_F(BrokenBundle, TextOnlyBundleEncodesText) {
  std::filesystem::remove(bundle + "/image_encoder.pt");
  auto model = Model::open(bundle);
  EXPECT_EQ(model->encode_texts({"小狗"}).size(), 32u);
  std::vector<float> pixels(3 * 224 * 224);
  const auto msg = error_of([&] { model->encode_images(pixels.data(), 1); });
  EXPECT_NE(msg.find("image_encoder.pt"), std::string::npos) << msg;
}

TEST_F(BrokenBundle, TruncatedEncoderNamed) {
  std::filesystem::resize_file(bundle + "/text_encoder.pt", 1000);
  auto model = Model::open(bundle);
  const auto msg = error_of([&] { model->encode_texts({"小狗"}); });
  EXPECT_NE(msg.find("text_encoder.pt"), std::string::npos) << msg;
}

TEST_F(BrokenBundle, GarbageEncoderOfTheRightSizeNamed) {
  const auto size = std::filesystem::file_size(bundle + "/text_encoder.pt");
  test::write_text(bundle + "/text_encoder.pt", std::string(size, 'x'));
  auto model = Model::open(bundle);
  const auto msg = error_of([&] { model->encode_texts({"小狗"}); });
  EXPECT_NE(msg.find("text_encoder.pt"), std::string::npos) << msg;
}

TEST_F(BrokenBundle, BadManifestNamed) {
  test::write_text(bundle + "/bundle.json", "{ not json");
  auto msg = error_of([&] { Model::open(bundle); });
  EXPECT_NE(msg.find("bundle.json"), std::string::npos) << msg;
  std::filesystem::remove(bundle + "/bundle.json");
  msg = error_of([&] { Model::open(bundle); });
  EXPECT_NE(msg.find("bundle.json"), std::string::npos) << msg;
  msg = error_of([&] { Model::open(dir / "missing"); });
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
}

// Numbers in bundle.json that the field's type cannot hold (the bundle fuzzer found 8.9e71 read as an
// int, undefined behaviour) are a damaged manifest naming the field, never cast into range.
TEST_F(BrokenBundle, ManifestNumbersThatDoNotFitNamed) {
  const auto good = nlohmann::json::parse(test::read_text(bundle + "/bundle.json"));
  struct Case {
    nlohmann::json::json_pointer field;
    nlohmann::json value;
    std::string named;
  };
  const std::vector<Case> cases = {
      {nlohmann::json::json_pointer("/format_version"), 8.88889e71, "format_version"},
      {nlohmann::json::json_pointer("/format_version"), -1e300, "format_version"},
      {nlohmann::json::json_pointer("/embedding_dim"), 512.5, "embedding_dim"},
      {nlohmann::json::json_pointer("/embedding_dim"), 4294967328ULL, "embedding_dim"},
      {nlohmann::json::json_pointer("/embedding_dim"), true, "embedding_dim"},
      {nlohmann::json::json_pointer("/image/size"), 1e10, "image.size"},
      {nlohmann::json::json_pointer("/image/mean/1"), 1e300, "image.mean"},
      {nlohmann::json::json_pointer("/image/std/0"), -3.5e38, "image.std"},
      {nlohmann::json::json_pointer("/text/context_length"), 52.000001, "text.context_length"},
      {nlohmann::json::json_pointer("/logit_scale"), "4.6", "logit_scale"},
      {nlohmann::json::json_pointer("/files/vocab.txt/bytes"), 9.3e18, "vocab.txt"},
  };
  for (const auto& c : cases) {
    auto j = good;
    j[c.field] = c.value;
    test::write_text(bundle + "/bundle.json", j.dump());
    try {
      load_bundle_manifest(bundle);
      ADD_FAILURE() << c.field.to_string() << " = " << c.value.dump() << " accepted";
    } catch (const Exception& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt) << msg;
      EXPECT_NE(msg.find("bundle.json"), std::string::npos) << msg;
      EXPECT_NE(msg.find(c.named), std::string::npos) << msg;
    }
  }
  // The same numbers written as integral floats are what they say.
  auto j = good;
  j["embedding_dim"] = static_cast<double>(good["embedding_dim"].get<int>());
  test::write_text(bundle + "/bundle.json", j.dump());
  EXPECT_EQ(load_bundle_manifest(bundle).embedding_dim, good["embedding_dim"].get<int>());
}

TEST_F(BrokenBundle, MissingVocabNamed) {
  std::filesystem::remove(bundle + "/vocab.txt");
  auto model = Model::open(bundle);
  const auto msg = error_of([&] { model->encode_texts({"小狗"}); });
  EXPECT_NE(msg.find("vocab.txt"), std::string::npos) << msg;
}

}  // namespace
}  // namespace cnclip
