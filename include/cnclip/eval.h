// `cnclip eval`: the retrieval figures of Chinese-CLIP's paper (text→image and image→text R@1/5/10
// and mean recall) on a labelled set in Chinese-CLIP's layout, computed the way its scripts compute
// them (cn_clip/eval/make_topk_predictions*.py, evaluation.py, evaluation_tr.py), with the model,
// precision and decoding options cnclip runs.
//
// How Chinese-CLIP scores, and so how this does:
// - Features are L2-normalized; a query's score for each candidate is their inner product; the top k
//   are the k highest scores. Ties keep the candidates' order in the input (Python's sorted() is
//   stable and its scripts list candidates in the order of their feature files, which cnclip writes
//   in input order): candidates equal in score rank in the order IMAGES / TEXTS list them.
// - Text→image: a text is a hit at k when ANY of its image_ids is among the top k images (a text
//   with several positives needs only one of them). R@k is the share of the texts that are hits, in
//   percent; every text counts, also one whose positives have no image (a miss).
// - Image→text: the queries are the images that some text names (transform_ir_annotation_to_tr.py
//   turns the texts' image_ids around: image_id → the text_ids naming it); images named by no text
//   are candidates of nothing and are not scored. An image is a hit at k when any text naming it is
//   among its top k texts. A named image with no usable image counts as a miss.
// - mean_recall = (R@1 + R@5 + R@10) / 3.
// - Texts are prepared as its eval dataset prepares them: curly double quotes “ ” become ".
//   (Its lower-casing is the tokenizer's own.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cnclip/encode_options.h"
#include "cnclip/error.h"
#include "cnclip/image_options.h"
#include "cnclip/model.h"

namespace cnclip {

// One line of TEXTS.jsonl: {"text_id": int, "text": str, "image_ids": [int, ...]}.
struct EvalText {
  int64_t id = 0;
  std::string text;
  std::vector<int64_t> image_ids;
  int64_t line = 0;  // 1-based line in the file
};

// One image of IMAGES: a file of a folder (file name without extension = id), or a line of a TSV
// `image_id<TAB>base64` (the base64 is read when the image is decoded, from [offset, offset+length)).
struct EvalImage {
  int64_t id = 0;
  std::string label;  // names it in messages: the file's path, or "FILE line N (image_id X)"
  std::string path;   // the image file, or the TSV
  bool base64 = false;
  uint64_t offset = 0, length = 0;
};

// Receives bad data and progress; called on the thread that called the function.
class EvalObserver {
 public:
  virtual ~EvalObserver() = default;
  // One line naming the file and line or the id, and what is wrong (and what was done about it).
  virtual void on_problem(const std::string& /*message*/) {}
  virtual void on_progress(int64_t /*images_done*/, int64_t /*images_total*/) {}
};

// Reads TEXTS.jsonl. A line that is not a JSON object with an integer text_id, a string text and a
// list of integer image_ids, or whose text_id an earlier line has, is reported (naming the line and
// the id) and left out; blank lines are ignored. Throws Exception for a file that cannot be read.
std::vector<EvalText> read_eval_texts(const std::string& path, EvalObserver& observer);

// Lists IMAGES: a folder (its image files, by the extensions `cnclip index` takes; not recursive;
// hidden files ignored; sorted by id) or a TSV file (in file order). A file name or line whose id is
// not an integer, a malformed line (no tab, no base64) and an id seen before are reported and left
// out. Throws Exception for a path that cannot be read.
std::vector<EvalImage> list_eval_images(const std::string& path, EvalObserver& observer);

// Decodes standard or URL-safe base64 (Chinese-CLIP writes URL-safe), with or without padding,
// ignoring whitespace. Returns kCorrupt for anything else.
Result<std::vector<uint8_t>> decode_base64(const std::string& text);

// Recall in percent, as Chinese-CLIP's evaluation scripts report it.
struct Recall {
  double r1 = 0, r5 = 0, r10 = 0, mean_recall = 0;
};

// The ids of the top k candidates for each query (rows of `queries`, `dim` floats each) by inner
// product with the candidates' rows, highest first, ties in candidate order; fewer when there are
// fewer than k candidates. Pure; safe to call concurrently.
std::vector<std::vector<int64_t>> top_k_ids(const std::vector<float>& queries, const std::vector<float>& candidates,
                                            const std::vector<int64_t>& candidate_ids, int dim, int k);

// R@1/5/10 and their mean over the queries: query q is a hit at k when any of positives[q] is among
// the first k of predictions[q]. Every query counts (no positives, or no predictions: a miss).
// predictions.size() must equal positives.size() (kInvalidArgument otherwise); no queries: all 0.
Recall recall_at_1_5_10(const std::vector<std::vector<int64_t>>& predictions,
                        const std::vector<std::vector<int64_t>>& positives);

struct EvalOptions {
  std::string images;  // folder or TSV
  std::string texts;   // TEXTS.jsonl
  DecodeOptions decode;
  EncodeOptions encode;
  int k = 10;                // predictions kept per query (at least 10 are ranked for R@10)
  int text_batch_size = 16;  // texts per model call
};

struct EvalReport {
  int64_t texts = 0;         // texts scored (the text→image queries)
  int64_t images = 0;        // images embedded (the text→image candidates)
  int64_t named_images = 0;  // images some text names (the image→text queries)
  Recall text_to_image, image_to_text;
  int64_t problems = 0;        // bad data reported through the observer (0: the figures are clean)
  int64_t missing_images = 0;  // ids named by texts that have no usable image (each a miss)
  double image_seconds = 0;    // wall time of embedding the images

  // What the figures were computed from, in input order, for write_predictions / write_features.
  int dim = 0;
  std::vector<int64_t> image_ids;  // embedded images
  std::vector<float> image_features;
  std::vector<int64_t> text_ids;  // embedded texts
  std::vector<float> text_features;
  std::vector<std::vector<int64_t>> text_predictions;   // per text of text_ids: top k image ids
  std::vector<int64_t> image_query_ids;                 // the named images, in order of first mention
  std::vector<std::vector<int64_t>> image_predictions;  // per image query: top k text ids (empty if missing)
};

// Reads both files, embeds the images through the encode pipeline (decoder threads, model workers)
// and the texts, and scores. Bad data is reported through the observer and counted in `problems`;
// it never ends the run. Throws Exception when a file cannot be read, when no text or no image is
// usable (kCorrupt), when the model fails, or when interrupted (kInterrupted, checked between
// batches). The Model must not be used elsewhere meanwhile.
EvalReport run_eval(Model& model, const EvalOptions& options, EvalObserver& observer);

// {"text_id": id, "image_ids": [k ids]} per line, as make_topk_predictions.py writes (what
// evaluation.py reads). Written atomically; throws Exception naming the file.
void write_predictions(const EvalReport& report, const std::string& path);
// {"image_id": id, "text_ids": [k ids]} per line, as make_topk_predictions_tr.py writes (what
// evaluation_tr.py reads).
void write_image_predictions(const EvalReport& report, const std::string& path);
// The features as extract_features.py writes them: DIR/<IMAGES stem>.img_feat.jsonl with
// {"image_id": id, "feature": [dim floats]} and DIR/<TEXTS stem>.txt_feat.jsonl with
// {"text_id": id, "feature": [...]} per line, in input order (DIR is created if missing). Returns
// the two paths written.
std::vector<std::string> write_features(const EvalReport& report, const EvalOptions& options, const std::string& dir);

}  // namespace cnclip
