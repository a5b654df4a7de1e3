// Zero-shot classification (`cnclip classify`): the probability of each of a set of labels for an
// image, as Chinese-CLIP computes it: softmax over the labels of exp(logit_scale) x cosine(image,
// label), with the bundle's logit scale (bundle.json "logit_scale", recorded by the exporter from
// the checkpoint). Labels may be wrapped in a prompt template ("一张{}的照片"), or averaged over
// Chinese-CLIP's own 80 Chinese ImageNet prompt templates (normalize each prompt's embedding, mean,
// normalize: cn_clip's zero-shot evaluation). Image embeddings come from the image tower or, for
// indexed photos, from the catalog (no decoding, no image tower).
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "cnclip/index_store.h"
#include "cnclip/model.h"
#include "cnclip/output.h"
#include "cnclip/tokenizer.h"

namespace cnclip {

// Chinese-CLIP's Chinese ImageNet prompt templates, `{}` standing for the label: the 80 entries of
// `openai_imagenet_template` in cn_clip/eval/imagenet_zeroshot_templates.py (OFA-Sys/Chinese-CLIP;
// translated from open_clip's English list by the wukong project), in their order, duplicates
// included (two prompts appear twice there, so they weigh double in the mean, as in cn_clip).
const std::vector<std::string>& chinese_imagenet_templates();

// How labels become prompts. At most one of the two is set.
struct LabelPrompts {
  std::string template_text;       // "" = the label itself; else must hold "{}" exactly once
  bool chinese_templates = false;  // chinese_imagenet_templates(), embeddings averaged
};

// The prompts of one label, in order (one, or the 80 templates).
std::vector<std::string> label_prompts(const std::string& label, const LabelPrompts& prompts);

// Splits a --labels value at ',' and '，' (full-width), trimming spaces around each label. Empty
// labels are kept (check_labels refuses them with their position).
std::vector<std::string> split_labels(const std::string& list);

// Throws Exception(kInvalidArgument) naming the label (1-based position and text) when a label is
// empty or blank (no word pieces), not valid UTF-8, longer than the model's context once put in its
// prompt(s) (context_length - 2 word pieces), or the same to the model as an earlier one (same token
// ids, e.g. "Cat" and "cat": their probabilities would only split one class); also when the
// template lacks "{}" or holds it twice, or there are no labels.
void check_labels(const std::vector<std::string>& labels, const Tokenizer& tokenizer, int context_length,
                  const LabelPrompts& prompts);

// Label embeddings, labels.size() * model.dim() floats, each L2-normalized (the mean of the
// normalized prompt embeddings, normalized again, with templates). Texts are encoded in batches of
// 64. Throws like Model::encode_texts.
std::vector<float> encode_labels(Model& model, const std::vector<std::string>& labels, const LabelPrompts& prompts);

struct LabelScore {
  int label = 0;           // index into the classifier's labels
  double probability = 0;  // softmax over all labels of logit_scale * score
  float score = 0;         // cosine similarity of image and label
};

// Immutable after construction; classify() may run on several threads at once.
class Classifier {
 public:
  // label_embeddings: labels.size() * dim unit vectors (encode_labels). logit_scale: exp of the
  // checkpoint's logit_scale parameter (BundleManifest::logit_scale), > 0.
  Classifier(std::vector<std::string> labels, std::vector<float> label_embeddings, int dim, double logit_scale);

  const std::vector<std::string>& labels() const { return labels_; }
  int dim() const { return dim_; }

  // For each of the n image embeddings (n * dim floats, unit length), every label's probability and
  // score, most probable first (ties: the earlier label first), cut to `top` (<= 0: all). The
  // probabilities are over all labels, whatever `top` keeps. Cosines come from FAISS's
  // inner-product kernel (BLAS for many images); softmax in double precision.
  std::vector<std::vector<LabelScore>> classify(const float* images, int64_t n, int top) const;

 private:
  std::vector<std::string> labels_;
  std::vector<float> embeddings_;
  int dim_;
  double logit_scale_;
};

// One classified image: `path` as given (or the catalog path for indexed photos; "-" for stdin).
struct Classification {
  std::string path;
  std::vector<LabelScore> labels;
};

// Classifies every indexed photo (or those below `under`, a canonical folder, or that file) from the embeddings
// stored in the index, in path order, in chunks of 4096 photos: on_chunk gets each chunk's results
// as soon as it is computed (memory stays bounded at any index size). Reads the vectors once
// (IndexStore::load_vectors: the mapped snapshot when current). Throws kCorrupt like a search on
// damaged embeddings, kMismatch when the classifier's dimension is not the index's.
void classify_indexed(IndexStore& store, const Classifier& classifier, const std::string& under, int top,
                      const std::function<void(const std::vector<Classification>&)>& on_chunk);

// Printing, in the formats of the search commands (output.h):
//   jsonl: one {"path"(, "path_bytes"), "labels": [{"label", "probability", "score"}, ...]} per
//          image, labels most probable first; probability and score with exactly six decimals;
//   json:  one array of those objects ("[]" when there are none);
//   table: a block per image: its path, then one line per label (probability in percent, score,
//          label), escaped for the terminal.
// `paths` is not a classification format (kInvalidArgument). Throws like ResultPrinter on a
// failed write. Not thread-safe.
class ClassificationPrinter {
 public:
  ClassificationPrinter(std::ostream& out, OutputFormat format, const std::vector<std::string>& labels);
  void print(const Classification& c);  // buffered: flush() when a batch is done
  void flush();                         // throws when a write to the output failed
  void finish();                        // closes the json array, flushes

 private:
  std::ostream& out_;
  OutputFormat format_;
  const std::vector<std::string>& labels_;
  std::vector<std::string> label_json_;  // each label as a JSON string
  size_t printed_ = 0;
  bool finished_ = false;
};

// One classification as the JSON object of the jsonl format (no newline).
std::string classification_json(const Classification& c, const std::vector<std::string>& labels);

}  // namespace cnclip
