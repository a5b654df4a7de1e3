// A damaged model bundle must never yield a stored or printed embedding: the embedding check
// (Model::encode_*, embedding_problem) through the model API, the encode pipeline, `index`,
// `embed-image`, `embed-text` and `search-text`; and the bundle file checks (sizes on load,
// `model-info` warnings, `model-info --verify`).
#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cnclip/embed_files.h"
#include "cnclip/index_store.h"
#include "cnclip/model.h"
#include "test_util.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;
constexpr int kDim = 32;

// Broken copies of the tiny bundle, made by tests/make_broken_bundle.py --all (see its modes): by the
// ctest fixture make_broken_bundles, or here when the test binary runs on its own.
class Broken : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // --all renames a complete set into place; made from the current tiny bundle, it has its fingerprint.
    if (fs::exists(root() + "/stale/bundle.json") &&
        load_bundle_manifest(bundle("stale")).fingerprint == load_bundle_manifest(test::tiny_bundle()).fingerprint) {
      return;
    }
    const std::string cmd = std::string(CNCLIP_PYTHON) + " " + CNCLIP_SOURCE_DIR +
                            "/tests/make_broken_bundle.py --all " + test::shell_quote(test::tiny_bundle()) + " " +
                            test::shell_quote(root());
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  static std::string root() { return std::string(CNCLIP_TEST_DATA) + "/broken"; }
  static std::string bundle(const std::string& name) { return root() + "/" + name; }
};

// A flat-colour PNG: grey level 255 makes a "bright" image (mean normalized pixel > 0), 0..60 dark ones.
void write_png(const std::string& path, int level) {
  cv::Mat m(48, 64, CV_8UC3, cv::Scalar(level, level, level));
  m.at<cv::Vec3b>(1, 1) = cv::Vec3b(static_cast<uchar>(level ^ 1), 0, 0);  // not quite flat, so different levels differ
  ASSERT_TRUE(cv::imwrite(path, m));
}

std::vector<float> pixels_of(int level) {
  return std::vector<float>(3 * 224 * 224, (static_cast<float>(level) / 255.0f - 0.46f) / 0.27f);
}

bool all_finite(const std::vector<float>& v) {
  for (float x : v) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

TEST(EmbeddingProblem, NamesWhatIsWrong) {
  std::vector<float> e(kDim, 0.0f);
  e[0] = 1.0f;
  EXPECT_FALSE(embedding_problem(e.data(), kDim, true));
  e[3] = NAN;
  EXPECT_NE(embedding_problem(e.data(), kDim, true)->find("1 of its 32 values are NaN"), std::string::npos);
  e[3] = -INFINITY;
  EXPECT_NE(embedding_problem(e.data(), kDim, true)->find("infinite"), std::string::npos);
  e[3] = 0.0f;
  e[0] = 1e-9f;
  EXPECT_NE(embedding_problem(e.data(), kDim, false)->find("not a direction"), std::string::npos);
  e[0] = 3.0f;
  EXPECT_FALSE(embedding_problem(e.data(), kDim, false));  // raw features may have any length
  EXPECT_NE(embedding_problem(e.data(), kDim, true)->find("length is 3"), std::string::npos);
  e[0] = 1.0005f;  // float rounding of a normalized vector is fine
  EXPECT_FALSE(embedding_problem(e.data(), kDim, true));
}

// Every kind of bad output, from both towers: one bad input throws without row_errors, and with
// row_errors fails that input only, with zeros in its row.
TEST_F(Broken, EveryBadKindIsCaughtInBothTowers) {
  const std::map<std::string, std::string> reasons = {{"nan", "values are NaN"},
                                                      {"inf", "values are infinite"},
                                                      {"zero", "its length is 0,"},
                                                      {"double", "its length is 2,"},
                                                      {"nan-weight", "values are NaN"}};
  const auto pixels = pixels_of(30);
  for (const auto& [mode, reason] : reasons) {
    SCOPED_TRACE(mode);
    auto model = Model::open(bundle(mode));
    try {
      model->encode_images(pixels.data(), 1);
      ADD_FAILURE() << "no exception";
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
      EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(bundle(mode)), std::string::npos) << e.what();
    }
    RowErrors errors;
    const auto e = model->encode_texts({"小狗", "猫"}, &errors);
    ASSERT_EQ(errors.size(), 2u);
    for (const auto& err : errors) {
      ASSERT_TRUE(err.has_value());
      EXPECT_EQ(err->code, ErrorCode::kCorrupt);
      EXPECT_NE(err->message.find(reason), std::string::npos) << err->message;
      EXPECT_NE(err->message.find("model-info --verify"), std::string::npos) << err->message;
    }
    EXPECT_EQ(e, std::vector<float>(2 * kDim, 0.0f));  // bad rows are zeros, never NaN
    EXPECT_THROW(model->encode_texts({"小狗"}), Exception);
  }
}

TEST_F(Broken, OnlyTheBadRowsOfABatchFail) {
  auto good = Model::open(test::tiny_bundle());
  auto bad = Model::open(bundle("bright"));
  std::vector<float> pixels = pixels_of(255);
  const auto dark = pixels_of(20);
  pixels.insert(pixels.end(), dark.begin(), dark.end());
  RowErrors errors;
  const auto e = bad->encode_images(pixels.data(), 2, &errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_TRUE(errors[0].has_value());
  EXPECT_FALSE(errors[1].has_value());
  const auto want = good->encode_images(dark.data(), 1);
  for (int d = 0; d < kDim; ++d) {
    EXPECT_EQ(e[d], 0.0f);
    EXPECT_NEAR(e[kDim + d], want[d], 1e-6f);
  }
  errors.clear();
  const auto t = bad->encode_texts({"猫", "一只可爱的小狗", "狗"}, &errors);
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_FALSE(errors[0]);
  EXPECT_TRUE(errors[1]);
  EXPECT_FALSE(errors[2]);
  EXPECT_NEAR(t[0], good->encode_texts({"猫"})[0], 1e-6f);
}

// A bundle whose towers return raw features ("normalized": false) is normalized by the model layer;
// zeros from it still fail.
TEST_F(Broken, UnnormalizedBundlesAreNormalizedAndStillChecked) {
  for (const std::string& mode : std::vector<std::string>{"double", "zero"}) {
    test::TempDir tmp;
    const std::string dir = tmp / ("raw-" + mode);
    fs::copy(bundle(mode), dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    auto j = nlohmann::json::parse(test::read_text(dir + "/bundle.json"));
    j["normalized"] = false;
    test::write_text(dir + "/bundle.json", j.dump());
    auto model = Model::open(dir);
    RowErrors errors;
    const auto e = model->encode_texts({"猫"}, &errors);
    if (mode == "zero") {
      EXPECT_TRUE(errors[0]);
      continue;
    }
    EXPECT_FALSE(errors[0]);
    const auto want = Model::open(test::tiny_bundle())->encode_texts({"猫"});
    for (int d = 0; d < kDim; ++d) EXPECT_NEAR(e[d], want[d], 1e-6f);
  }
}

TEST_F(Broken, EmbedFilesFailsTheFileNotTheRun) {
  test::TempDir photos;
  write_png(photos / "white.png", 255);
  write_png(photos / "black.png", 0);
  auto model = Model::open(bundle("bright"));
  std::vector<std::string> paths = {photos / "white.png", photos / "black.png", photos / "white.png"};
  int ok = 0, failed = 0;
  embed_image_files(*model, paths, EmbedFilesOptions{}, [&](size_t i, const float* e, const Error* error) {
    if (i == 1) {
      ASSERT_EQ(error, nullptr);
      ASSERT_NE(e, nullptr);
      EXPECT_FALSE(embedding_problem(e, kDim, true));
      ++ok;
    } else {
      ASSERT_NE(error, nullptr);
      EXPECT_EQ(error->code, ErrorCode::kCorrupt);
      EXPECT_EQ(error->message.rfind(paths[i] + ": the model returned an unusable embedding", 0), 0u) << error->message;
      ++failed;
    }
  });
  EXPECT_EQ(ok, 1);
  EXPECT_EQ(failed, 2);
}

TEST_F(Broken, EmbedImageAndEmbedTextPrintNoBadEmbedding) {
  test::TempDir photos;
  write_png(photos / "white.png", 255);
  write_png(photos / "black.png", 0);
  auto r = test::run_cnclip({"embed-image", "--model", bundle("bright"), photos / "white.png", photos / "black.png"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  auto out = test::lines(r.out);
  ASSERT_EQ(out.size(), 1u) << r.out;
  EXPECT_EQ(nlohmann::json::parse(out[0])["path"], photos / "black.png");
  EXPECT_NE(r.err.find(photos / "white.png" + ": the model returned an unusable embedding"), std::string::npos)
      << r.err;

  r = test::run_cnclip({"embed-text", "--model", bundle("bright"), "猫", "一只可爱的小狗"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  out = test::lines(r.out);
  ASSERT_EQ(out.size(), 1u) << r.out;
  EXPECT_EQ(nlohmann::json::parse(out[0])["text"], "猫");
  EXPECT_NE(r.err.find("text 2 \"一只可爱的小狗\": the model returned an unusable embedding"), std::string::npos)
      << r.err;

  // Every input bad (a NaN written into a weight): nothing on stdout, no null anywhere.
  for (const auto& args : std::vector<std::vector<std::string>>{{"embed-text", "猫", "狗"},
                                                                {"embed-image", photos / "black.png"},
                                                                {"search-text", "猫", "--index", photos / "index"}}) {
    const std::string& cmd = args[0];
    r = test::run_cnclip(test::concat(args, {"--model", bundle("nan-weight")}));
    EXPECT_EQ(r.exit_code, 1) << cmd << ": " << r.err;
    EXPECT_EQ(r.out, "") << cmd;
    EXPECT_NE(r.err.find("values are NaN"), std::string::npos) << cmd << ": " << r.err;
  }
}

std::map<std::string, std::vector<float>> catalog_embeddings(const std::string& index_dir) {
  auto store = IndexStore::open(index_dir, IndexAccess::kRead);
  std::map<std::string, std::vector<float>> out;
  for (const auto& f : store->catalog().files_under(""))
    out[fs::path(f.path).filename()] = store->catalog().embedding(f.id);
  return out;
}

// The bundle changes under an existing index (same fingerprint, damaged towers): new and changed
// files that get a bad embedding are counted failed and reported, nothing of theirs is stored, and
// what was indexed before is kept as it was.
TEST_F(Broken, IndexStoresNoBadEmbeddingAndKeepsWhatItHad) {
  test::TempDir dir;
  const std::string photos = dir / "photos", index = dir / "index";
  fs::create_directories(photos);
  write_png(photos + "/dark1.png", 10);
  write_png(photos + "/dark2.png", 40);
  write_png(photos + "/changes.png", 20);
  auto run = [&](const std::string& model) {
    auto r = test::run_cnclip({"index", "--format", "json", "-q", "--model", model, "--index", index, photos});
    return std::make_pair(nlohmann::json::parse(r.out.empty() ? "{}" : r.out), r);
  };
  auto [first, r1] = run(test::tiny_bundle());
  ASSERT_EQ(first.value("added", -1), 3) << r1.err;
  const auto before = catalog_embeddings(index);

  write_png(photos + "/white.png", 255);
  write_png(photos + "/dark3.png", 60);
  write_png(photos + "/changes.png", 250);  // now bright: re-encoded, and that fails
  fs::last_write_time(photos + "/changes.png", fs::last_write_time(photos + "/changes.png") + std::chrono::seconds(5));
  auto [second, r2] = run(bundle("bright"));
  EXPECT_EQ(second.value("added", -1), 1) << r2.out << r2.err;
  EXPECT_EQ(second.value("updated", -1), 0) << r2.out;
  EXPECT_EQ(second.value("failed", -1), 2) << r2.out;
  EXPECT_NE(r2.err.find(photos + "/white.png: the model returned an unusable embedding"), std::string::npos) << r2.err;
  EXPECT_NE(r2.err.find(photos + "/changes.png: the model returned an unusable embedding"), std::string::npos)
      << r2.err;

  auto after = catalog_embeddings(index);
  EXPECT_EQ(after.size(), 4u);
  EXPECT_EQ(after.count("white.png"), 0u);
  EXPECT_EQ(after.count("dark3.png"), 1u);
  for (const auto& [name, e] : before) EXPECT_EQ(after[name], e) << name;  // bit for bit
  for (const auto& [name, e] : after) {
    EXPECT_TRUE(all_finite(e)) << name;
    EXPECT_FALSE(embedding_problem(e.data(), kDim, true)) << name;
  }

  // A NaN in a weight: every new file fails, nothing is added.
  write_png(photos + "/dark4.png", 50);
  auto [third, r3] = run(bundle("nan-weight"));
  EXPECT_EQ(third.value("added", -1), 0) << r3.out << r3.err;
  EXPECT_GE(third.value("failed", -1), 1) << r3.out;
  EXPECT_EQ(catalog_embeddings(index).size(), 4u);
}

// The realistic case: a weight damaged on disk, bundle.json as exported. The embedding check stops
// it at once; `model-info --verify` names the file.
TEST_F(Broken, DamagedWeightIsFoundByVerify) {
  auto r = test::run_cnclip({"model-info", "--verify", "--model", bundle("stale")});
  EXPECT_EQ(r.exit_code, 1);
  ASSERT_EQ(test::lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find(bundle("stale") + "/image_encoder.pt: corrupt model bundle file (sha256"), std::string::npos)
      << r.err;
  r = test::run_cnclip({"embed-image", test::fixtures("images/pokemon.jpeg"), "--model", bundle("stale")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("pokemon.jpeg: the model returned an unusable embedding"), std::string::npos) << r.err;
}

// --- bundle files ---------------------------------------------------------------------------

std::string copy_bundle(const test::TempDir& dir, const std::string& name) {
  const std::string out = dir / name;
  fs::copy(test::tiny_bundle(), out, fs::copy_options::recursive);
  return out;
}

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.get(c);
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x20));
}

std::string model_info(const std::string& dir, bool verify, int expected_exit, std::string* err) {
  auto r = test::run_cnclip(verify ? std::vector<std::string>{"model-info", "--model", dir, "--verify"}
                                   : std::vector<std::string>{"model-info", "--model", dir});
  EXPECT_EQ(r.exit_code, expected_exit) << r.err;
  if (expected_exit == 0 || verify) {
    EXPECT_NO_THROW(nlohmann::json::parse(r.out)) << r.out;  // the manifest, still
  }
  *err = r.err;
  return r.out;
}

TEST(BundleFiles, VerifyChecksEveryFilesSha256) {
  test::TempDir dir;
  std::string err;
  model_info(test::tiny_bundle(), true, 0, &err);
  EXPECT_EQ(err.find("error"), std::string::npos) << err;
  EXPECT_NE(err.find("all 3 files match"), std::string::npos) << err;

  const std::string b = copy_bundle(dir, "flipped");
  flip_byte(b + "/vocab.txt", 1000);
  flip_byte(b + "/image_encoder.pt", static_cast<std::streamoff>(fs::file_size(b + "/image_encoder.pt") / 2));
  model_info(b, false, 0, &err);  // sizes are right: nothing to say without --verify
  EXPECT_EQ(err, "");
  model_info(b, true, 1, &err);
  const auto errs = test::lines(err);
  ASSERT_EQ(errs.size(), 2u) << err;  // one line per bad file
  EXPECT_NE(errs[0].find(b + "/image_encoder.pt: corrupt model bundle file (sha256 "), std::string::npos) << err;
  EXPECT_NE(errs[1].find(b + "/vocab.txt: corrupt model bundle file (sha256 "), std::string::npos) << err;
  // The library call says the same.
  const auto problems = verify_bundle_files(load_bundle_manifest(b), true);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].code, ErrorCode::kCorrupt);
}

TEST(BundleFiles, MissingOrTruncatedFilesAreNamed) {
  test::TempDir dir;
  std::string err;
  // Truncated text tower: model-info warns; loading it fails naming it, before LibTorch reads it.
  std::string b = copy_bundle(dir, "truncated");
  fs::resize_file(b + "/text_encoder.pt", 1000);
  model_info(b, false, 0, &err);
  EXPECT_NE(err.find("warning: " + b + "/text_encoder.pt: corrupt model bundle file (1000 bytes"), std::string::npos)
      << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  model_info(b, true, 1, &err);
  EXPECT_EQ(test::lines(err).size(), 1u) << err;
  try {
    Model::open(b)->encode_texts({"猫"});
    ADD_FAILURE() << "no exception";
  } catch (const Exception& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTruncated);
    EXPECT_NE(std::string(e.what()).find(b + "/text_encoder.pt"), std::string::npos) << e.what();
  }
  auto r = test::run_cnclip({"embed-text", "猫", "--model", b});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(b + "/text_encoder.pt"), std::string::npos) << r.err;

  // Missing image tower: a warning, text still works, images fail naming the file.
  b = copy_bundle(dir, "no-image");
  fs::remove(b + "/image_encoder.pt");
  model_info(b, false, 0, &err);
  EXPECT_NE(err.find("warning: " + b + "/image_encoder.pt: model bundle file missing"), std::string::npos) << err;
  EXPECT_EQ(test::run_cnclip({"embed-text", "猫", "--model", b}).exit_code, 0);
  r = test::run_cnclip({"embed-image", test::fixtures("images/pokemon.jpeg"), "--model", b});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(b + "/image_encoder.pt"), std::string::npos) << r.err;

  // A longer file than recorded, and a missing vocabulary.
  b = copy_bundle(dir, "grown");
  std::ofstream(b + "/image_encoder.pt", std::ios::app) << "x";
  fs::remove(b + "/vocab.txt");
  model_info(b, false, 0, &err);
  EXPECT_EQ(test::lines(err).size(), 2u) << err;
  EXPECT_NE(err.find(b + "/image_encoder.pt: corrupt model bundle file"), std::string::npos) << err;
  EXPECT_NE(err.find(b + "/vocab.txt: model bundle file missing"), std::string::npos) << err;
  r = test::run_cnclip({"embed-text", "猫", "--model", b});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(b + "/vocab.txt"), std::string::npos) << r.err;
}

TEST(BundleFiles, ManifestMustListEveryFileByPlainName) {
  test::TempDir dir;
  const std::string b = copy_bundle(dir, "b");
  const auto original = nlohmann::json::parse(test::read_text(b + "/bundle.json"));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = original;
    edit(j);
    test::write_text(b + "/bundle.json", j.dump());
    try {
      load_bundle_manifest(b);
      return std::string("loaded");
    } catch (const Exception& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCorrupt);
      return std::string(e.what());
    }
  };
  EXPECT_NE(with([](auto& j) { j["files"].erase("text_encoder.pt"); }).find("does not list text_encoder.pt"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["files"]["../x"] = j["files"]["vocab.txt"]; }).find("not a plain file name"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["files"]["vocab.txt"]["bytes"] = -1; }).find("invalid size or sha256"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["files"]["vocab.txt"]["sha256"] = "abc"; }).find("invalid size or sha256"),
            std::string::npos);
  EXPECT_EQ(with([](auto&) {}), "loaded");
}

}  // namespace
}  // namespace cnclip
