// cnclip classify: Chinese-CLIP's zero-shot probabilities (the reference's pokemon numbers, the 80
// Chinese templates against an independent PyTorch computation), labels of indexed photos from
// their stored embeddings, output formats, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "cnclip/classify.h"
#include "cnclip/npy.h"
#include "cnclip/tokenizer.h"
#include "test_util.h"

namespace cnclip {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const std::vector<std::string> kPokemon = {"杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"};
constexpr int kDim = 32;  // the tiny bundle's embedding size

std::string pokemon_jpeg() { return test::fixtures("images/pokemon.jpeg"); }

double bundle_logit_scale() {
  return json::parse(test::read_text(test::tiny_bundle() + "/bundle.json"))["logit_scale"].get<double>();
}

// label -> (probability, score) from one classify object.
std::map<std::string, std::pair<double, double>> by_label(const json& image) {
  std::map<std::string, std::pair<double, double>> out;
  for (const auto& l : image["labels"]) {
    out[l["label"].get<std::string>()] = {l["probability"].get<double>(), l["score"].get<double>()};
  }
  return out;
}

TEST(Classify, ReproducesTheReferencePokemonProbabilities) {
  // Chinese-CLIP's quick-start: pokemon.jpeg against four labels, no template.
  auto r = test::run_cnclip({"classify", pokemon_jpeg(), "--labels", "杰尼龟,妙蛙种子,小火龙,皮卡丘", "--format",
                             "jsonl", "--ignore-exif", "--full-decode", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = test::lines(r.out);
  ASSERT_EQ(lines.size(), 1u);
  const json j = json::parse(lines[0]);
  EXPECT_EQ(j["path"], pokemon_jpeg());
  const auto got = by_label(j);
  ASSERT_EQ(got.size(), 4u);

  const auto probs = read_npy(test::fixtures("reference/pokemon_label_probs.npy")).value().as_float();
  const auto logits =
      read_npy(test::fixtures("reference/logits_per_image.npy")).value().as_float();  // [6 images, 20 texts]
  const json manifest = json::parse(test::read_text(test::fixtures("reference/manifest.json")));
  const auto texts = manifest["texts"].get<std::vector<std::string>>();
  const auto images = manifest["image_order"].get<std::vector<std::string>>();
  const size_t pokemon = std::find(images.begin(), images.end(), "pokemon") - images.begin();
  ASSERT_LT(pokemon, images.size());
  const double scale = bundle_logit_scale();
  EXPECT_NEAR(scale, 13.809393882751465, 1e-5);  // the fixture README's exp(logit_scale)
  double sum = 0;
  for (size_t i = 0; i < kPokemon.size(); ++i) {
    SCOPED_TRACE(kPokemon[i]);
    EXPECT_NEAR(got.at(kPokemon[i]).first, probs[i], 1e-4);
    // The score is the cosine: the reference logit divided by exp(logit_scale).
    const size_t t = std::find(texts.begin(), texts.end(), kPokemon[i]) - texts.begin();
    ASSERT_LT(t, texts.size());
    EXPECT_NEAR(got.at(kPokemon[i]).second, logits[pokemon * texts.size() + t] / scale, 1e-5);
    sum += got.at(kPokemon[i]).first;
  }
  EXPECT_NEAR(sum, 1.0, 4e-6);  // six decimals each
  // Most probable first.
  for (size_t i = 1; i < j["labels"].size(); ++i) {
    EXPECT_GE(j["labels"][i - 1]["probability"].get<double>(), j["labels"][i]["probability"].get<double>());
  }
}

TEST(Classify, ChineseTemplatesMatchAnIndependentPyTorchComputation) {
  auto r =
      test::run_cnclip({"classify", pokemon_jpeg(), "--labels", "杰尼龟,妙蛙种子,小火龙,皮卡丘", "--templates", "zh",
                        "--format", "json", "--ignore-exif", "--full-decode", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out);
  ASSERT_EQ(out.size(), 1u);
  const auto got = by_label(out[0]);

  std::string cmd = std::string(CNCLIP_PYTHON) + " " +
                    test::shell_quote(std::string(CNCLIP_SOURCE_DIR) + "/tests/classify_zh_reference.py") + " " +
                    test::shell_quote(CNCLIP_BINARY) + " " + test::shell_quote(test::tiny_bundle()) + " " +
                    test::shell_quote(test::fixtures("preprocess/pokemon.npy"));
  for (const auto& l : kPokemon) cmd += " " + l;
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) text.append(buf, n);
  ASSERT_EQ(::pclose(p), 0) << text;
  const json want = json::parse(text);
  // Without templates the numbers differ: the check below can fail.
  auto plain = test::run_cnclip({"classify", pokemon_jpeg(), "--labels", "杰尼龟,妙蛙种子,小火龙,皮卡丘", "--format",
                                 "json", "--ignore-exif", "--full-decode", "--model", test::tiny_bundle()});
  const auto plain_got = by_label(json::parse(plain.out)[0]);
  double largest_plain_difference = 0;
  for (const auto& l : kPokemon) {
    SCOPED_TRACE(l);
    EXPECT_NEAR(got.at(l).first, want[l]["probability"].get<double>(), 1e-5);
    EXPECT_NEAR(got.at(l).second, want[l]["score"].get<double>(), 1e-5);
    largest_plain_difference =
        std::max(largest_plain_difference, std::fabs(plain_got.at(l).first - want[l]["probability"].get<double>()));
  }
  EXPECT_GT(largest_plain_difference, 1e-3);
}

TEST(Classify, TemplatesAreChineseClipsEighty) {
  const auto& t = chinese_imagenet_templates();
  ASSERT_EQ(t.size(), 80u);
  for (const auto& s : t) {
    const size_t at = s.find("{}");
    ASSERT_NE(at, std::string::npos) << s;
    EXPECT_EQ(s.find("{}", at + 2), std::string::npos) << s;
  }
  EXPECT_EQ(t.front(), "{}的照片。");
  EXPECT_EQ(t[37], "一张{}的照片。");
  EXPECT_EQ(t.back(), "{}的刺青。");
  // cn_clip's list holds two prompts twice; kept, so they weigh as in cn_clip's mean.
  EXPECT_EQ(std::count(t.begin(), t.end(), "{}的裁剪照片。"), 2);
  EXPECT_EQ(std::count(t.begin(), t.end(), "{}的涂鸦照。"), 2);
  EXPECT_EQ(label_prompts("猫", LabelPrompts{"一张{}的照片", false}), std::vector<std::string>{"一张猫的照片"});
  EXPECT_EQ(label_prompts("猫", LabelPrompts{}), std::vector<std::string>{"猫"});
}

TEST(Classify, TemplateWrapsEveryLabel) {
  // --template "一张{}的照片" gives the probabilities of the wrapped texts, computed here from
  // embed-text's embeddings of those texts and embed-image's embedding of the photo.
  auto r = test::run_cnclip({"classify", pokemon_jpeg(), "--labels", "杰尼龟,皮卡丘", "--template", "一张{}的照片",
                             "--format", "jsonl", "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto got = by_label(json::parse(r.out));
  auto texts = test::run_cnclip({"embed-text", "一张杰尼龟的照片", "一张皮卡丘的照片", "--model", test::tiny_bundle()});
  auto image = test::run_cnclip({"embed-image", pokemon_jpeg(), "--model", test::tiny_bundle()});
  ASSERT_EQ(texts.exit_code, 0) << texts.err;
  ASSERT_EQ(image.exit_code, 0) << image.err;
  const auto e_img = json::parse(image.out)["embedding"].get<std::vector<double>>();
  std::vector<double> cos;
  for (const auto& l : test::lines(texts.out)) {
    const auto e = json::parse(l)["embedding"].get<std::vector<double>>();
    cos.push_back(std::inner_product(e.begin(), e.end(), e_img.begin(), 0.0));
  }
  const double scale = bundle_logit_scale();
  const double p0 = 1.0 / (1.0 + std::exp(scale * (cos[1] - cos[0])));
  EXPECT_NEAR(got.at("杰尼龟").first, p0, 2e-6);
  EXPECT_NEAR(got.at("皮卡丘").first, 1 - p0, 2e-6);
  EXPECT_NEAR(got.at("杰尼龟").second, cos[0], 2e-6);
}

TEST(Classify, ClassifierSoftmaxTopAndTies) {
  // Three labels on the axes; an image at known cosines. Probabilities over all labels even when
  // --top keeps fewer; equal scores keep the labels' order.
  std::vector<float> labels(3 * 4, 0.0f);
  labels[0 * 4 + 0] = labels[1 * 4 + 1] = labels[2 * 4 + 2] = 1.0f;
  const Classifier c({"a", "b", "c"}, labels, 4, 10.0);
  const float x[4] = {0.6f, 0.0f, 0.0f, 0.8f};              // cos 0.6, 0, 0
  const float y[4] = {0.0f, 0.6f, 0.6f, std::sqrt(0.28f)};  // a tie between b and c
  std::vector<float> both(x, x + 4);
  both.insert(both.end(), y, y + 4);
  const auto all = c.classify(both.data(), 2, 0);
  ASSERT_EQ(all.size(), 2u);
  ASSERT_EQ(all[0].size(), 3u);
  const double z = std::exp(6.0) + 2.0;
  EXPECT_EQ(all[0][0].label, 0);
  EXPECT_NEAR(all[0][0].probability, std::exp(6.0) / z, 1e-6);
  EXPECT_NEAR(all[0][1].probability, 1.0 / z, 1e-6);
  EXPECT_NEAR(all[0][0].score, 0.6f, 1e-6);
  EXPECT_EQ(all[1][0].label, 1);
  EXPECT_EQ(all[1][1].label, 2);
  EXPECT_DOUBLE_EQ(all[1][0].probability, all[1][1].probability);
  const auto top1 = c.classify(x, 1, 1);
  ASSERT_EQ(top1[0].size(), 1u);
  EXPECT_NEAR(top1[0][0].probability, std::exp(6.0) / z, 1e-6);  // still over all three labels
}

class ClassifyIndexed : public ::testing::Test {
 protected:
  void SetUp() override {
    // Three photos under a/ and two under b/, with embeddings between the texts 猫 and 狗 (from
    // embed-text), imported: the folders exist, the photos do not, so nothing can be decoded.
    auto r = test::run_cnclip({"embed-text", "猫", "狗", "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto l = test::lines(r.out);
    cat_ = json::parse(l[0])["embedding"].get<std::vector<double>>();
    dog_ = json::parse(l[1])["embedding"].get<std::vector<double>>();
    std::string jsonl;
    fs::create_directories(dir_ / "photos/a");
    fs::create_directories(dir_ / "photos/b");
    const std::vector<std::pair<std::string, double>> photos = {{photo("a/1.jpg"), 0.9},
                                                                {photo("a/2.jpg"), 0.2},
                                                                {photo("a/3.jpg"), 0.6},
                                                                {photo("b/4.jpg"), 0.1},
                                                                {photo("b/5.jpg"), 0.75}};
    for (const auto& [path, t] : photos) {
      std::vector<double> e(kDim);
      double n = 0;
      for (int d = 0; d < kDim; ++d) n += (e[d] = t * cat_[d] + (1 - t) * dog_[d]) * e[d];
      for (auto& v : e) v /= std::sqrt(n);
      embeddings_[path] = e;
      jsonl += json{{"path", path}, {"embedding", e}}.dump() + "\n";
    }
    test::write_text(dir_ / "import.jsonl", jsonl);
    r = test::run_cnclip({"import", dir_ / "import.jsonl", "--index", index(), "--model", test::tiny_bundle()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string index() const { return dir_ / "index"; }
  std::string photo(const std::string& rel) const { return fs::canonical(dir_.path()).string() + "/photos/" + rel; }
  // P(猫) by the formula, from the imported embedding.
  double p_cat(const std::string& path) const {
    const auto& e = embeddings_.at(path);
    const double c = std::inner_product(e.begin(), e.end(), cat_.begin(), 0.0);
    const double d = std::inner_product(e.begin(), e.end(), dog_.begin(), 0.0);
    return 1.0 / (1.0 + std::exp(bundle_logit_scale() * (d - c)));
  }

  test::TempDir dir_;
  std::vector<double> cat_, dog_;
  std::map<std::string, std::vector<double>> embeddings_;
};

TEST_F(ClassifyIndexed, LabelsEveryIndexedPhotoFromItsStoredEmbedding) {
  // A copy of the bundle without its image tower: --indexed must not need it.
  const std::string text_only = dir_ / "text-only";
  fs::copy(test::tiny_bundle(), text_only);
  fs::remove(text_only + "/image_encoder.pt");
  auto r = test::run_cnclip(
      {"classify", "--indexed", "--labels", "猫,狗", "--format", "jsonl", "--index", index(), "--model", text_only});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = test::lines(r.out);
  ASSERT_EQ(lines.size(), 5u);
  std::vector<std::string> order;
  for (const auto& l : lines) {
    const json j = json::parse(l);
    const std::string path = j["path"];
    order.push_back(path);
    const auto got = by_label(j);
    EXPECT_NEAR(got.at("猫").first, p_cat(path), 2e-6) << path;
    EXPECT_NEAR(got.at("狗").first, 1 - p_cat(path), 2e-6) << path;
    EXPECT_EQ(j["labels"][0]["label"], p_cat(path) >= 0.5 ? "猫" : "狗") << path;
  }
  EXPECT_EQ(order, (std::vector<std::string>{photo("a/1.jpg"), photo("a/2.jpg"), photo("a/3.jpg"), photo("b/4.jpg"),
                                             photo("b/5.jpg")}));  // path order
}

TEST_F(ClassifyIndexed, UnderTopAndJson) {
  auto r = test::run_cnclip({"classify", "--indexed", "--under", dir_ / "photos/b", "--top", "1", "--labels", "猫,狗",
                             "--format", "json", "--index", index(), "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["path"], photo("b/4.jpg"));
  EXPECT_EQ(j[1]["path"], photo("b/5.jpg"));
  EXPECT_EQ(j[0]["labels"][0]["label"], "狗");
  EXPECT_EQ(j[1]["labels"][0]["label"], "猫");
  for (const auto& image : j) EXPECT_EQ(image["labels"].size(), 1u);
}

TEST_F(ClassifyIndexed, TableForPeople) {
  auto r = test::run_cnclip({"classify", "--indexed", "--labels", "猫,狗", "--format", "table", "--top", "1", "--index",
                             index(), "--model", test::tiny_bundle()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = test::lines(r.out);
  ASSERT_EQ(lines.size(), 5u * 3 - 1);  // a block of two lines per photo, blank lines between
  EXPECT_EQ(lines[0], "image: " + photo("a/1.jpg"));
  char want[64];
  std::snprintf(want, sizeof(want), "  %7.2f%%", 100 * p_cat(photo("a/1.jpg")));
  EXPECT_EQ(lines[1].substr(0, std::string(want).size()), want);
  EXPECT_NE(lines[1].find("猫"), std::string::npos);
  EXPECT_EQ(lines[2], "");
}

TEST(Classify, ImagesFromStdinAndSeveralFilesInOrder) {
  test::TempDir dir;
  const std::string bytes = test::read_text(pokemon_jpeg());
  auto from_stdin = test::run_cnclip(
      {"classify", "-", "--labels", "猫,狗", "--format", "jsonl", "--model", test::tiny_bundle()}, bytes);
  ASSERT_EQ(from_stdin.exit_code, 0) << from_stdin.err;
  const json s = json::parse(from_stdin.out);
  EXPECT_EQ(s["path"], "-");
  // The same photo as a file, between two others: printed in the order given, same numbers.
  auto files = test::run_cnclip({"classify", test::fixtures("images/chelsea_rgba.png"), "-", pokemon_jpeg(), "--labels",
                                 "猫,狗", "--format", "jsonl", "--model", test::tiny_bundle()},
                                bytes);
  ASSERT_EQ(files.exit_code, 0) << files.err;
  const auto lines = test::lines(files.out);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(json::parse(lines[0])["path"], test::fixtures("images/chelsea_rgba.png"));
  EXPECT_EQ(json::parse(lines[1])["labels"], s["labels"]);
  EXPECT_EQ(json::parse(lines[2])["labels"], s["labels"]);
}

// One bad input: exit status, exactly one stderr line, and (for usage errors) nothing on stdout.
void expect_refused(const std::vector<std::string>& args, int status, const std::string& message,
                    const std::string& in = "") {
  SCOPED_TRACE(args.size() > 1 ? args[0] + " " + args[1] : "");
  auto r = test::run_cnclip(test::concat(test::concat({"classify"}, args), {"--model", test::tiny_bundle()}), in);
  EXPECT_EQ(r.exit_code, status);
  EXPECT_EQ(r.err, "cnclip: error: " + message + "\n");
  if (status == 2) {
    EXPECT_EQ(r.out, "");
  }
}

TEST(Classify, BadLabelsGetOneLineEach) {
  test::TempDir dir;
  const std::string img = pokemon_jpeg();
  expect_refused({img, "--labels", "猫,,狗"}, 2, "label 2 is empty");
  expect_refused({img, "--labels", "猫,狗,"}, 2, "label 3 is empty");
  expect_refused({img, "--labels", "猫, ,狗"}, 2, "label 2 is empty");
  expect_refused({img, "--labels", "猫,狗,猫"}, 2, "label 3 '猫' is the same as label 1 '猫': give each label once");
  expect_refused({img, "--labels", "Cat,cat"}, 2,
                 "label 2 'cat' is the same as label 1 'Cat' to the model (the same tokens): give each label once");
  std::string han;
  for (int i = 0; i < 51; ++i) han += "猫";
  expect_refused({img, "--labels", "狗," + han}, 2,
                 "label 2 '猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫…' is too long: 51 tokens, the model reads 50");
  // With a template, the prompt must fit.
  std::string han48;
  for (int i = 0; i < 48; ++i) han48 += "猫";
  expect_refused({img, "--labels", "狗," + han48, "--template", "一张{}的照片"}, 2,
                 "label 2 '猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫猫…' is too long: its prompt '一张" + han48 +
                     "的照片' has 53 tokens, the model reads 50");
  expect_refused({img, "--labels", "猫", "--template", "照片"}, 2,
                 "the template '照片' must hold '{}' exactly once, where the label goes");
  expect_refused({img, "--labels", "猫", "--template", "{}和{}"}, 2,
                 "the template '{}和{}' must hold '{}' exactly once, where the label goes");
  expect_refused({img, "--labels", "猫", "--template", "一张{}的照片", "--templates", "zh"}, 2,
                 "give --template or --templates, not both");
  expect_refused({img}, 2, "give the labels: --labels a,b,c or --labels-file FILE");
  test::write_text(dir / "labels.txt", "猫\n狗\n");
  expect_refused({img, "--labels", "猫", "--labels-file", dir / "labels.txt"}, 2,
                 "give --labels or --labels-file, not both");
  expect_refused({img, "--labels-file", dir / "none.txt"}, 1,
                 dir / "none.txt" + ": cannot read: No such file or directory");
  test::write_text(dir / "empty.txt", "\n\n");
  expect_refused({img, "--labels-file", dir / "empty.txt"}, 2, dir / "empty.txt" + ": no labels in the file");
  test::write_text(dir / "blank.txt", "猫\n   \n狗\n");
  expect_refused({img, "--labels-file", dir / "blank.txt"}, 2, "label 2 '   ' is blank: it has no words");
  expect_refused({img, "--labels", "猫,狗", "--format", "paths"}, 2,
                 "--format: expects table, json, jsonl or auto, not 'paths' (see 'cnclip classify --help')");
}

TEST(Classify, LabelsFromAFile) {
  test::TempDir dir;
  test::write_text(dir / "labels.txt", "杰尼龟\r\n妙蛙种子\n\n  小火龙  \n皮卡丘");  // CRLF, blank line, spaces
  auto a = test::run_cnclip({"classify", pokemon_jpeg(), "--labels-file", dir / "labels.txt", "--format", "jsonl",
                             "--model", test::tiny_bundle()});
  auto b = test::run_cnclip({"classify", pokemon_jpeg(), "--labels", "杰尼龟,妙蛙种子,小火龙,皮卡丘", "--format",
                             "jsonl", "--model", test::tiny_bundle()});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(Classify, BadImagesAreReportedAndTheOthersClassified) {
  test::TempDir dir;
  test::write_text(dir / "text.jpg", "not an image\n");
  // (A folder is a usage error before anything is classified: FrontOptions.AFolderWhereAnImage...)
  auto r = test::run_cnclip({"classify", dir / "missing.jpg", dir / "text.jpg", pokemon_jpeg(), "--labels", "猫,狗",
                             "--format", "jsonl", "--model", test::tiny_bundle()});
  EXPECT_EQ(r.exit_code, 1);
  const auto err = test::lines(r.err);
  ASSERT_EQ(err.size(), 2u) << r.err;
  EXPECT_EQ(err[0], "cnclip: error: " + dir / "missing.jpg" + ": cannot open: No such file or directory");
  EXPECT_EQ(err[1], "cnclip: error: " + dir / "text.jpg" +
                        ": unsupported format (not JPEG, PNG, WebP, BMP, TIFF, GIF, HEIF, AVIF or camera RAW)");
  const auto out = test::lines(r.out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(json::parse(out[0])["path"], pokemon_jpeg());
  // Empty stdin.
  expect_refused({"-", "--labels", "猫,狗"}, 1, "standard input: no image bytes (empty)");
}

TEST(Classify, UsageMistakes) {
  const std::string img = pokemon_jpeg();
  expect_refused({"--labels", "猫,狗"}, 2, "give images to classify, '-' for one on stdin, or --indexed");
  expect_refused({img, "--indexed", "--labels", "猫,狗"}, 2,
                 "--indexed labels the indexed photos: give no IMAGE with it");
  expect_refused({img, "--under", "/tmp", "--labels", "猫,狗"}, 2,
                 "--under goes with --indexed (it picks indexed photos)");
  expect_refused({"-", "-", "--labels", "猫,狗"}, 2, "'-' (an image on stdin) can be given only once");
  expect_refused({"-", "--labels-file", "-"}, 2, "'-' (an image on stdin) and '--labels-file -' both want stdin");
  expect_refused({img, "--labels", "猫", "--templates", "en"}, 2,
                 "--templates: expects zh, not 'en' (see 'cnclip classify --help')");
  expect_refused({img, "--labels", "猫", "--top", "0"}, 2,
                 "--top: expects a whole number from 1 to 2147483647, not '0' (see 'cnclip classify --help')");
  test::TempDir dir;
  expect_refused({"--indexed", "--labels", "猫,狗", "--index", dir / "none"}, 1,
                 dir / "none" + ": no index here yet (run 'cnclip index PATH' first, or give --index DIR)");
}

}  // namespace
}  // namespace cnclip
