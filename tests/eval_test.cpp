// `cnclip eval` (include/cnclip/eval.h): scoring by hand-made ranks, the figures against an
// independent numpy computation from embed-image / embed-text output on a generated labelled set in
// both layouts (folder and TSV), the files Chinese-CLIP's scripts read, and bad data. Also the
// encode options' worker-split rule.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <filesystem>
#include <random>

#include "cnclip/encode_options.h"
#include "cnclip/eval.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace cnclip;
using nlohmann::json;

namespace {

// One-hot rows: candidate c scores w[c] against a query with weights w.
std::vector<float> one_hot_rows(int n) {
  std::vector<float> v(static_cast<size_t>(n) * n, 0.f);
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i) * n + i] = 1.f;
  return v;
}

TEST(EvalScoring, HandMadeRanksGiveKnownRecall) {
  // 12 images (ids 100..111); one query vector ranks them 100, 101, ..., 111 (descending weights).
  const int n = 12;
  std::vector<int64_t> ids;
  std::vector<float> query(n);
  for (int i = 0; i < n; ++i) {
    ids.push_back(100 + i);
    query[i] = static_cast<float>(n - i) / n;
  }
  std::vector<float> queries;
  for (int t = 0; t < 6; ++t) queries.insert(queries.end(), query.begin(), query.end());
  const auto top = top_k_ids(queries, one_hot_rows(n), ids, n, 10);
  ASSERT_EQ(top.size(), 6u);
  ASSERT_EQ(top[0], (std::vector<int64_t>{100, 101, 102, 103, 104, 105, 106, 107, 108, 109}));
  // Positives at rank 1; 5; 6; 12 (beyond the top 10); {11th, 3rd} (one of several suffices);
  // an id with no image.
  const std::vector<std::vector<int64_t>> positives = {{100}, {104}, {105}, {111}, {110, 102}, {999}};
  const Recall r = recall_at_1_5_10(top, positives);
  EXPECT_DOUBLE_EQ(r.r1, 1.0 / 6 * 100);
  EXPECT_DOUBLE_EQ(r.r5, 3.0 / 6 * 100);
  EXPECT_DOUBLE_EQ(r.r10, 4.0 / 6 * 100);
  EXPECT_DOUBLE_EQ(r.mean_recall, (1.0 / 6 + 3.0 / 6 + 4.0 / 6) / 3 * 100);
  // A query with no predictions at all (its text could not be embedded) is a miss, not left out.
  auto with_empty = top;
  with_empty[0].clear();
  EXPECT_DOUBLE_EQ(recall_at_1_5_10(with_empty, positives).r1, 0.0);
  EXPECT_THROW(recall_at_1_5_10(top, {{100}}), Exception);
  EXPECT_DOUBLE_EQ(recall_at_1_5_10({}, {}).mean_recall, 0.0);
}

TEST(EvalScoring, TiesKeepCandidateOrderAndFewCandidatesGiveShortLists) {
  // Candidates 7 and 9 are the same vector: equal scores rank in candidate order, whichever is asked.
  const std::vector<float> cand = {1, 0, 0, 1, 1, 0};
  const std::vector<int64_t> ids = {7, 8, 9};
  EXPECT_EQ(top_k_ids({1, 0}, cand, ids, 2, 10)[0], (std::vector<int64_t>{7, 9, 8}));
  EXPECT_EQ(top_k_ids({1, 0}, cand, {9, 8, 7}, 2, 10)[0], (std::vector<int64_t>{9, 7, 8}));
  EXPECT_EQ(top_k_ids({0, 1}, cand, ids, 2, 2)[0], (std::vector<int64_t>{8, 7}));
  EXPECT_EQ(top_k_ids({1, 0}, cand, ids, 2, 1)[0], (std::vector<int64_t>{7}));
  EXPECT_THROW(top_k_ids({1, 0}, cand, {7, 8}, 2, 1), Exception);
}

TEST(EvalScoring, Base64BothAlphabetsWithAndWithoutPadding) {
  const std::vector<uint8_t> bytes = {0xfb, 0xff, 0xbf, 0x00, 0x41};
  for (const char* text : {"+/+/AEE=", "-_-_AEE=", "-_-_AEE", "+/+/\nAEE=\r"}) {
    auto r = decode_base64(text);
    ASSERT_TRUE(r.ok()) << text;
    EXPECT_EQ(r.value(), bytes) << text;
  }
  for (const char* bad : {"-_-_A", "-_-_AE*=", "AA==AA", "AAA==="}) {
    auto r = decode_base64(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, ErrorCode::kCorrupt);
  }
}

TEST(EncodeOptions, WorkerSplitRule) {
  // The default: one single-threaded call per core on a CPU, at most 4; one call elsewhere.
  auto p = choose_parallelism(2, true, 0);
  EXPECT_EQ(p.workers, 2);
  EXPECT_EQ(p.threads_of(0) + p.threads_of(1), 2);
  p = choose_parallelism(8, true, 0);
  EXPECT_EQ(p.workers, 4);
  for (int w = 0; w < 4; ++w) EXPECT_EQ(p.threads_of(w), 2);
  p = choose_parallelism(4, false, 0);
  EXPECT_EQ(p.workers, 1);
  EXPECT_EQ(p.threads_of(0), 4);
  // Asked for: taken, capped at the threads; the remainder goes to the first workers.
  p = choose_parallelism(3, true, 2);
  EXPECT_EQ(p.threads_of(0), 2);
  EXPECT_EQ(p.threads_of(1), 1);
  EXPECT_EQ(choose_parallelism(1, true, 3).workers, 1);
  EXPECT_EQ(choose_parallelism(0, true, 0).threads, 1);
  // Named fields: the defaults documented in encode_options.h.
  const EncodeOptions defaults;
  EXPECT_EQ(defaults.batch_size, 4);
  EXPECT_EQ(defaults.decode_threads, 0);
  EXPECT_EQ(defaults.model_workers, 0);
}

// ---- the command, on a generated labelled set ---------------------------------------------------

std::string base64_url(const std::vector<uint8_t>& b) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  for (size_t i = 0; i < b.size(); i += 3) {
    uint32_t v = static_cast<uint32_t>(b[i]) << 16;
    if (i + 1 < b.size()) v |= static_cast<uint32_t>(b[i + 1]) << 8;
    if (i + 2 < b.size()) v |= b[i + 2];
    out += a[(v >> 18) & 63];
    out += a[(v >> 12) & 63];
    out += i + 1 < b.size() ? a[(v >> 6) & 63] : '=';
    out += i + 2 < b.size() ? a[v & 63] : '=';
  }
  return out;
}

constexpr int kImages = 36;
int64_t image_id(int i) { return 5 * i + 3; }  // ids that are not positions

// A labelled set: 36 images (shapes and colours, JPEG and PNG) as a folder and as a TSV (in reverse
// order, URL-safe base64 as Chinese-CLIP writes it), and 30 texts, every third with three positives,
// one with curly quotes; the last 6 images are named by no text.
struct LabelledSet {
  test::TempDir dir;
  std::string folder = dir / "valid_imgs";
  std::string tsv = dir / "valid_imgs.tsv";
  std::string texts = dir / "valid_texts.jsonl";
  LabelledSet() {
    fs::create_directories(folder);
    std::mt19937 rng(19);
    std::vector<std::string> tsv_lines;
    for (int i = 0; i < kImages; ++i) {
      cv::Mat img(48 + 4 * (i % 5), 64, CV_8UC3,
                  cv::Scalar(static_cast<double>(rng() % 256), static_cast<double>(rng() % 256),
                             static_cast<double>(rng() % 256)));
      for (int s = 0; s < 3; ++s) {
        cv::circle(img, cv::Point(static_cast<int>(rng() % 64), static_cast<int>(rng() % 48)),
                   6 + static_cast<int>(rng() % 14),
                   cv::Scalar(static_cast<double>(rng() % 256), static_cast<double>(rng() % 256),
                              static_cast<double>(rng() % 256)),
                   -1);
      }
      const std::string ext = i % 3 == 0 ? ".png" : ".jpg";
      std::vector<uint8_t> bytes;
      cv::imencode(ext, img, bytes);
      const std::string path = folder + "/" + std::to_string(image_id(i)) + ext;
      test::write_text(path, std::string(bytes.begin(), bytes.end()));
      tsv_lines.push_back(std::to_string(image_id(i)) + "\t" + base64_url(bytes));
    }
    std::string tsv_text;
    for (auto it = tsv_lines.rbegin(); it != tsv_lines.rend(); ++it) tsv_text += *it + "\n";
    test::write_text(tsv, tsv_text);
    const char* words[] = {"红色的圆", "蓝天", "一只小狗", "夕阳", "绿色的草地", "城市夜景"};
    std::string lines;
    for (int t = 0; t < 30; ++t) {
      json j;
      j["text_id"] = 1000 + t;
      std::string text = std::string(words[t % 6]) + std::to_string(t);
      if (t == 4) text = "\xe2\x80\x9c" + text + "\xe2\x80\x9d";  // “...”: straight quotes as Chinese-CLIP
      j["text"] = text;
      std::vector<int64_t> ids = {image_id(t)};
      if (t % 3 == 0) ids = {image_id(t), image_id((t + 7) % 30), image_id((t + 13) % 30)};
      j["image_ids"] = ids;
      lines += j.dump() + "\n";
    }
    test::write_text(texts, lines);
  }
};

json parse_json(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << text;
    return json();
  }
}

// Computes the figures the way Chinese-CLIP's scripts do, from embed-image / embed-text output with
// numpy, and checks the eval output, the predictions and the features against them.
const char* kNumpyCheck = R"PY(
import json, os, sys
import numpy as np
eval_json, image_emb, text_emb, texts_path, predictions, img_feat, txt_feat = sys.argv[1:8]
texts = [json.loads(l) for l in open(texts_path, encoding="utf-8") if l.strip()]
img = {}
for l in open(image_emb, encoding="utf-8"):
    o = json.loads(l)
    img[int(os.path.splitext(os.path.basename(o["path"]))[0])] = o["embedding"]
image_ids = sorted(img)
I = np.array([img[i] for i in image_ids], dtype=np.float32)
T = np.array([json.loads(l)["embedding"] for l in open(text_emb, encoding="utf-8")], dtype=np.float32)
assert T.shape[0] == len(texts)

def topk(S, ids):
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:10]] for row in S]

def recall(tops, truth):
    hits = [0, 0, 0]
    for top, pos in zip(tops, truth):
        for n, k in enumerate((1, 5, 10)):
            if any(p in top[:k] for p in pos):
                hits[n] += 1
    f = [h * 1.0 / len(truth) for h in hits]
    return {"r1": f[0] * 100, "r5": f[1] * 100, "r10": f[2] * 100, "mean_recall": (f[0] + f[1] + f[2]) / 3.0 * 100}

t2i_top = topk(T @ I.T, image_ids)
t2i = recall(t2i_top, [t["image_ids"] for t in texts])
tr = {}
for t in texts:
    for i in t["image_ids"]:
        tr.setdefault(i, []).append(t["text_id"])
q = list(tr)
i2t = recall(topk(np.array([img[i] for i in q], dtype=np.float32) @ T.T, [t["text_id"] for t in texts]),
             [tr[i] for i in q])
ev = json.loads(open(eval_json, encoding="utf-8").read())
assert list(ev) == ["texts", "images", "text_to_image", "image_to_text"], list(ev)
assert ev["texts"] == len(texts) and ev["images"] == len(image_ids), (ev["texts"], ev["images"])
for name, mine in (("text_to_image", t2i), ("image_to_text", i2t)):
    assert list(ev[name]) == ["r1", "r5", "r10", "mean_recall"], list(ev[name])
    for k, v in mine.items():
        assert abs(ev[name][k] - v) < 1e-9, (name, k, ev[name][k], v)
assert 0 < t2i["r10"] < 100 and 0 < i2t["r10"] < 100, (t2i, i2t)  # figures that could differ
preds = [json.loads(l) for l in open(predictions, encoding="utf-8")]
assert [list(p) for p in preds] == [["text_id", "image_ids"]] * len(texts)
assert [p["text_id"] for p in preds] == [t["text_id"] for t in texts]
assert [p["image_ids"] for p in preds] == t2i_top, "predictions differ from numpy's top 10"
feats = [json.loads(l) for l in open(img_feat, encoding="utf-8")]
assert [list(f) for f in feats] == [["image_id", "feature"]] * len(image_ids)
assert [f["image_id"] for f in feats] == image_ids
assert all(isinstance(f["image_id"], int) for f in feats)
assert np.abs(np.array([f["feature"] for f in feats]) - I).max() < 1e-6
feats = [json.loads(l) for l in open(txt_feat, encoding="utf-8")]
assert [list(f) for f in feats] == [["text_id", "feature"]] * len(texts)
assert [f["text_id"] for f in feats] == [t["text_id"] for t in texts]
assert np.abs(np.array([f["feature"] for f in feats]) - T).max() < 1e-6
print("numpy check ok", t2i, i2t)
)PY";

TEST(EvalCommand, RecallsEqualIndependentNumpyComputationInBothLayouts) {
  LabelledSet set;
  const std::string out = set.dir / "out";
  auto folder = test::run_cnclip({"eval", "--images", set.folder, "--texts", set.texts, "--model", test::tiny_bundle(),
                                  "--format", "json", "--predictions", set.dir / "pred.jsonl", "--features", out});
  ASSERT_EQ(folder.exit_code, 0) << folder.err;
  test::write_text(set.dir / "eval.json", folder.out);

  // The independent side: embeddings from embed-image and embed-text, texts prepared as Chinese-CLIP's
  // eval dataset prepares them (curly double quotes to straight ones).
  std::vector<std::string> embed{"embed-image"};
  std::string text_lines;
  for (int i = 0; i < kImages; ++i) {
    embed.push_back(set.folder + "/" + std::to_string(image_id(i)) + (i % 3 == 0 ? ".png" : ".jpg"));
  }
  auto images = test::run_cnclip(test::concat(embed, {"--model", test::tiny_bundle()}));
  ASSERT_EQ(images.exit_code, 0) << images.err;
  test::write_text(set.dir / "img.jsonl", images.out);
  for (const auto& line : test::lines(test::read_text(set.texts))) {
    std::string text = json::parse(line)["text"];
    for (const char* q : {"\xe2\x80\x9c", "\xe2\x80\x9d"}) {
      for (size_t at; (at = text.find(q)) != std::string::npos;) text.replace(at, 3, "\"");
    }
    text_lines += text + "\n";
  }
  auto texts = test::run_cnclip({"embed-text", "-", "--model", test::tiny_bundle()}, text_lines);
  ASSERT_EQ(texts.exit_code, 0) << texts.err;
  test::write_text(set.dir / "txt.jsonl", texts.out);
  test::write_text(set.dir / "check.py", kNumpyCheck);
  const std::string cmd = std::string(CNCLIP_PYTHON) + " " + test::shell_quote(set.dir / "check.py") + " " +
                          test::shell_quote(set.dir / "eval.json") + " " + test::shell_quote(set.dir / "img.jsonl") +
                          " " + test::shell_quote(set.dir / "txt.jsonl") + " " + test::shell_quote(set.texts) + " " +
                          test::shell_quote(set.dir / "pred.jsonl") + " " +
                          test::shell_quote(out + "/valid_imgs.img_feat.jsonl") + " " +
                          test::shell_quote(out + "/valid_texts.txt_feat.jsonl") + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string report;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) report.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << report;

  // The TSV layout (other order, URL-safe base64) gives the same figures.
  auto tsv = test::run_cnclip(
      {"eval", "--images", set.tsv, "--texts", set.texts, "--model", test::tiny_bundle(), "--format", "json"});
  ASSERT_EQ(tsv.exit_code, 0) << tsv.err;
  const json a = parse_json(folder.out), b = parse_json(tsv.out);
  for (const char* dir : {"text_to_image", "image_to_text"}) {
    for (const char* k : {"r1", "r5", "r10", "mean_recall"}) {
      EXPECT_NEAR(a[dir][k].get<double>(), b[dir][k].get<double>(), 1e-9) << dir << " " << k;
    }
  }
  EXPECT_EQ(b["images"], kImages);
  EXPECT_EQ(b["texts"], 30);
}

TEST(EvalCommand, TableAndDecodingOptionsAndImagePredictions) {
  LabelledSet set;
  auto r = test::run_cnclip({"eval", "--images", set.folder, "--texts", set.texts, "--model", test::tiny_bundle(),
                             "--format", "table", "--ignore-exif", "--full-decode", "-k", "3", "--image-predictions",
                             set.dir / "tr.jsonl", "--predictions", set.dir / "p.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("30 texts, 36 images (30 named by the texts)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("text→image"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("image→text"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("img/s"), std::string::npos) << r.err;
  // -k sets the length of the predictions; the named images get {"image_id", "text_ids"} lines.
  const auto preds = test::lines(test::read_text(set.dir / "p.jsonl"));
  ASSERT_EQ(preds.size(), 30u);
  EXPECT_EQ(json::parse(preds[0])["image_ids"].size(), 3u);
  const auto tr = test::lines(test::read_text(set.dir / "tr.jsonl"));
  ASSERT_EQ(tr.size(), 30u);  // images named by no text are not queries
  const json first = json::parse(tr[0]);
  EXPECT_EQ(first.begin().key(), "image_id");
  EXPECT_EQ(first["image_id"], image_id(0));
  EXPECT_EQ(first["text_ids"].size(), 3u);
  // A format eval has no use for is a usage error.
  auto bad = test::run_cnclip(
      {"eval", "--images", set.folder, "--texts", set.texts, "--model", test::tiny_bundle(), "--format", "paths"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
}

TEST(EvalCommand, BadDataIsReportedLineByLineAndMissingImagesCountAsMisses) {
  test::TempDir dir;
  // Four good images (ids 1..4), then: a line without a tab, an id that is not a number, a duplicate
  // id, an undecodable image, and base64 that is not base64.
  std::string tsv;
  std::vector<uint8_t> bytes;
  for (int i = 1; i <= 4; ++i) {
    cv::Mat img(40, 40, CV_8UC3, cv::Scalar(60 * i, 255 - 50 * i, 30 * i));
    cv::imencode(".png", img, bytes);
    tsv += std::to_string(i) + "\t" + base64_url(bytes) + "\n";
  }
  tsv += "no tab here\n";                                                                // line 5
  tsv += "x7\t" + base64_url(bytes) + "\n";                                              // line 6
  tsv += "2\t" + base64_url(bytes) + "\n";                                               // line 7: duplicate of 2
  tsv += "8\t" + base64_url({'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'g'}) + "\n";  // line 8
  tsv += "9\t%%%%\n";                                                                    // line 9
  test::write_text(dir / "imgs.tsv", tsv);
  const std::string texts = R"({"text_id": 1, "text": "一", "image_ids": [1]})"
                            "\n"
                            R"({"text_id": 2, "text": "二", "image_ids": [77]})"  // no such image: a miss
                            "\n"
                            "{not json\n"                                          // line 3
                            R"({"text_id": 1, "text": "重复", "image_ids": [2]})"  // line 4: duplicate text_id
                            "\n"
                            R"({"text_id": "5", "text": "五", "image_ids": [3]})"  // line 5: text_id not an integer
                            "\n"
                            R"({"text_id": 6, "text": "六", "image_ids": [8]})"  // the undecodable image: a miss
                            "\n"
                            R"({"text_id": 7, "text": "七", "image_ids": ["3"]})"  // line 7
                            "\n";
  test::write_text(dir / "texts.jsonl", texts);
  auto r = test::run_cnclip({"eval", "--images", dir / "imgs.tsv", "--texts", dir / "texts.jsonl", "--model",
                             test::tiny_bundle(), "--format", "json", "-j", "2"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  for (const char* expected :
       {"imgs.tsv line 5: no tab", "imgs.tsv line 6: the image_id 'x7' is not an integer",
        "imgs.tsv line 7: duplicate image_id 2 (first in imgs.tsv line 2)", "imgs.tsv line 8 (image_id 8)",
        "imgs.tsv line 9 (image_id 9): not base64", "texts.jsonl line 3: not a JSON object",
        "texts.jsonl line 4 (text_id 1): duplicate text_id (first on line 1)",
        "texts.jsonl line 5: \"text_id\" is missing or not an integer",
        "texts.jsonl line 7 (text_id 7): \"image_ids\" is missing or not a list of integers",
        "image_id 77 (named by text_id 2) has no image in imgs.tsv: counts as a miss",
        "image_id 8 (named by text_id 6) could not be embedded: counts as a miss"}) {
    EXPECT_NE(r.err.find(expected), std::string::npos) << expected << "\n" << r.err;
  }
  // Each problem on one line of its own.
  for (const auto& line : test::lines(r.err)) EXPECT_EQ(line.rfind("cnclip: ", 0), 0u) << line;
  // The figures are still given: 3 texts (1, 2, 6), 4 images; texts 2 and 6 can never be hits, and
  // with 4 candidates text 1 is always within the top 5.
  const json j = parse_json(r.out);
  EXPECT_EQ(j["texts"], 3);
  EXPECT_EQ(j["images"], 4);
  EXPECT_NEAR(j["text_to_image"]["r5"].get<double>(), 100.0 / 3, 1e-9);
  EXPECT_NEAR(j["text_to_image"]["r10"].get<double>(), 100.0 / 3, 1e-9);
  // Image→text queries: images 1, 77 and 8 (named); 77 and 8 have no image: misses; image 1 has 3
  // candidate texts, so its text is within its top 5.
  EXPECT_NEAR(j["image_to_text"]["r5"].get<double>(), 100.0 / 3, 1e-9);
}

TEST(EvalCommand, UnusableInputsStopWithOneLine) {
  LabelledSet set;
  auto missing =
      test::run_cnclip({"eval", "--images", set.dir / "nope", "--texts", set.texts, "--model", test::tiny_bundle()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("nope"), std::string::npos) << missing.err;
  EXPECT_TRUE(missing.out.empty());
  test::write_text(set.dir / "empty.jsonl", "\n");
  auto empty = test::run_cnclip(
      {"eval", "--images", set.folder, "--texts", set.dir / "empty.jsonl", "--model", test::tiny_bundle()});
  EXPECT_EQ(empty.exit_code, 1);
  EXPECT_NE(empty.err.find("empty.jsonl: no usable text line"), std::string::npos) << empty.err;
  // Outputs are checked before any work: a missing folder is a usage error naming the option.
  auto no_folder = test::run_cnclip({"eval", "--images", set.folder, "--texts", set.texts, "--model",
                                     test::tiny_bundle(), "--predictions", set.dir / "no/such/p.jsonl"});
  EXPECT_EQ(no_folder.exit_code, 2);
  EXPECT_NE(no_folder.err.find("--predictions: the folder"), std::string::npos) << no_folder.err;
  EXPECT_EQ(no_folder.err.find("img/s"), std::string::npos) << "ran before refusing: " << no_folder.err;
  auto no_texts = test::run_cnclip({"eval", "--images", set.folder, "--model", test::tiny_bundle()});
  EXPECT_EQ(no_texts.exit_code, 2);
  EXPECT_NE(no_texts.err.find("--texts"), std::string::npos) << no_texts.err;
  // An image file given as IMAGES is a usage error, not a TSV of garbage lines.
  auto image = test::run_cnclip(
      {"eval", "--images", set.folder + "/3.png", "--texts", set.texts, "--model", test::tiny_bundle()});
  EXPECT_EQ(image.exit_code, 2);
  EXPECT_NE(image.err.find("3.png: an image file; --images takes a folder"), std::string::npos) << image.err;
  // TEXTS given the TSV: the first 100 problems one by one, then one line, and the total.
  auto swapped = test::run_cnclip({"eval", "--images", set.folder, "--texts", set.tsv, "--model", test::tiny_bundle()});
  EXPECT_EQ(swapped.exit_code, 1);
  EXPECT_NE(swapped.err.find("valid_imgs.tsv line 36: not a JSON object"), std::string::npos) << swapped.err;
  EXPECT_NE(swapped.err.find("valid_imgs.tsv: no usable text line"), std::string::npos) << swapped.err;
  std::string junk;
  for (int i = 0; i < 150; ++i) junk += "x\n";
  test::write_text(set.dir / "junk.jsonl", junk);
  auto flood = test::run_cnclip(
      {"eval", "--images", set.folder, "--texts", set.dir / "junk.jsonl", "--model", test::tiny_bundle()});
  EXPECT_EQ(flood.exit_code, 1);
  const auto flood_lines = test::lines(flood.err);
  EXPECT_EQ(std::count_if(flood_lines.begin(), flood_lines.end(),
                          [](const std::string& l) { return l.find("not a JSON object") != std::string::npos; }),
            100);
  EXPECT_NE(flood.err.find("more data problems: not shown one by one"), std::string::npos) << flood.err;
  // A file name that is not an id is reported and left out; the rest is evaluated.
  test::copy_file(set.folder + "/3.png", set.folder + "/cat.png");
  auto named = test::run_cnclip(
      {"eval", "--images", set.folder, "--texts", set.texts, "--model", test::tiny_bundle(), "--format", "json"});
  EXPECT_EQ(named.exit_code, 1);
  EXPECT_NE(named.err.find("cat.png: the file name is not an integer image_id"), std::string::npos) << named.err;
  EXPECT_EQ(parse_json(named.out)["images"], kImages);
}

}  // namespace
