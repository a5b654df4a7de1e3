#include "cnclip/classify.h"

#include <faiss/utils/distances.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "cnclip/error.h"

namespace cnclip {
namespace {

constexpr const char* kPlaceholder = "{}";
constexpr size_t kTextBatch = 64;      // prompts per text-tower call
constexpr int64_t kImageChunk = 4096;  // photos per classify() call in classify_indexed
constexpr size_t kFewLabels = 64;      // up to this many labels, no BLAS (see Classifier::classify)

// "label 2 '皮卡丘'", the text cut to about 60 bytes (on a character boundary).
std::string label_name(size_t i, const std::string& label) {
  constexpr size_t kMaxBytes = 60;
  std::string shown = label;
  if (shown.size() > kMaxBytes) {
    size_t cut = kMaxBytes;
    while (cut > 0 && (static_cast<unsigned char>(shown[cut]) & 0xC0) == 0x80) --cut;
    shown = shown.substr(0, cut) + "…";
  }
  return "label " + std::to_string(i + 1) + " '" + shown + "'";
}

std::string six_decimals(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6f", v);
  return buf;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

}  // namespace

const std::vector<std::string>& chinese_imagenet_templates() {
  // cn_clip/eval/imagenet_zeroshot_templates.py, openai_imagenet_template (80 lambdas c -> prompt),
  // OFA-Sys/Chinese-CLIP; "{}" stands for the class name.
  static const std::vector<std::string> templates = {
      "{}的照片。",
      "质量差的{}的照片。",
      "许多{}的照片。",
      "{}的雕塑。",
      "难以看到{}的照片。",
      "{}的低分辨率照片。",
      "{}的渲染。",
      "涂鸦{}。",
      "{}的糟糕照片。",
      "{}的裁剪照片。",
      "{}的纹身。",
      "{}的刺绣照片。",
      "很难看到{}的照片。",
      "{}的明亮照片。",
      "一张干净的{}的照片。",
      "一张包含{}的照片。",
      "{}的深色照片。",
      "{}的手绘画。",
      "我的{}的照片。",
      "不自然的{}的照片。",
      "一张酷的{}的照片。",
      "{}的特写照片。",
      "{}的黑白照片。",
      "一幅{}的画。",
      "一幅{}的绘画。",
      "一张{}的像素照片。",
      "{}的雕像。",
      "一张{}的明亮照片。",
      "{}的裁剪照片。",
      "人造的{}的照片。",
      "一张关于{}的照片。",
      "损坏的{}的jpeg照片。",
      "{}的模糊照片。",
      "{}的相片。",
      "一张{}的好照片。",
      "{}的渲染照。",
      "视频游戏中的{}。",
      "一张{}的照片。",
      "{}的涂鸦。",
      "{}的近距离照片。",
      "{}的折纸。",
      "{}在视频游戏中。",
      "{}的草图。",
      "{}的涂鸦照。",
      "{}的折纸形状。",
      "低分辨率的{}的照片。",
      "玩具{}。",
      "{}的副本。",
      "{}的干净的照片。",
      "一张大{}的照片。",
      "{}的重现。",
      "一张漂亮的{}的照片。",
      "一张奇怪的{}的照片。",
      "模糊的{}的照片。",
      "卡通{}。",
      "{}的艺术作品。",
      "{}的素描。",
      "刺绣{}。",
      "{}的像素照。",
      "{}的拍照。",
      "{}的损坏的照片。",
      "高质量的{}的照片。",
      "毛绒玩具{}。",
      "漂亮的{}的照片。",
      "小{}的照片。",
      "照片是奇怪的{}。",
      "漫画{}。",
      "{}的艺术照。",
      "{}的图形。",
      "大{}的照片。",
      "黑白的{}的照片。",
      "{}毛绒玩具。",
      "一张{}的深色照片。",
      "{}的摄影图。",
      "{}的涂鸦照。",
      "玩具形状的{}。",
      "拍了{}的照片。",
      "酷酷的{}的照片。",
      "照片里的小{}。",
      "{}的刺青。",
  };
  return templates;
}

std::vector<std::string> label_prompts(const std::string& label, const LabelPrompts& prompts) {
  auto fill = [&](const std::string& t) {
    const size_t at = t.find(kPlaceholder);
    if (at == std::string::npos) return t;
    return t.substr(0, at) + label + t.substr(at + 2);
  };
  if (prompts.chinese_templates) {
    std::vector<std::string> out;
    for (const auto& t : chinese_imagenet_templates()) out.push_back(fill(t));
    return out;
  }
  if (!prompts.template_text.empty()) return {fill(prompts.template_text)};
  return {label};
}

std::vector<std::string> split_labels(const std::string& list) {
  std::vector<std::string> out;
  std::string current;
  for (size_t i = 0; i < list.size();) {
    if (list[i] == ',') {
      out.push_back(trim(current));
      current.clear();
      i += 1;
    } else if (list.compare(i, 3, "\xEF\xBC\x8C") == 0) {  // U+FF0C FULLWIDTH COMMA
      out.push_back(trim(current));
      current.clear();
      i += 3;
    } else {
      current.push_back(list[i++]);
    }
  }
  out.push_back(trim(current));
  return out;
}

void check_labels(const std::vector<std::string>& labels, const Tokenizer& tokenizer, int context_length,
                  const LabelPrompts& prompts) {
  if (labels.empty()) throw Exception(ErrorCode::kInvalidArgument, "no labels given");
  if (!prompts.template_text.empty()) {
    const size_t at = prompts.template_text.find(kPlaceholder);
    if (at == std::string::npos || prompts.template_text.find(kPlaceholder, at + 2) != std::string::npos) {
      throw Exception(ErrorCode::kInvalidArgument,
                      "the template '" + prompts.template_text + "' must hold '{}' exactly once, where the label goes");
    }
    if (auto bad = find_invalid_utf8(prompts.template_text)) {
      throw Exception(ErrorCode::kInvalidArgument,
                      "the template is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
    }
  }
  const size_t room = context_length > 2 ? static_cast<size_t>(context_length - 2) : 0;
  std::map<std::vector<int64_t>, size_t> seen;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& label = labels[i];
    if (label.empty()) throw Exception(ErrorCode::kInvalidArgument, "label " + std::to_string(i + 1) + " is empty");
    if (auto bad = find_invalid_utf8(label)) {
      throw Exception(
          ErrorCode::kInvalidArgument,
          "label " + std::to_string(i + 1) + " is not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
    }
    if (tokenizer.count_pieces(label) == 0) {
      throw Exception(ErrorCode::kInvalidArgument, label_name(i, label) + " is blank: it has no words");
    }
    for (const auto& prompt : label_prompts(label, prompts)) {
      const size_t pieces = tokenizer.count_pieces(prompt);
      if (pieces > room) {
        throw Exception(ErrorCode::kInvalidArgument,
                        label_name(i, label) +
                            " is too long: " + (prompt == label ? std::string() : "its prompt '" + prompt + "' has ") +
                            std::to_string(pieces) + " tokens, the model reads " + std::to_string(room));
      }
    }
    auto ids = tokenizer.encode(label, context_length);
    auto [it, inserted] = seen.emplace(std::move(ids), i);
    if (!inserted) {
      const size_t first = it->second;
      throw Exception(ErrorCode::kInvalidArgument,
                      label_name(i, label) + " is the same as " + label_name(first, labels[first]) +
                          (labels[first] == label ? "" : " to the model (the same tokens)") + ": give each label once");
    }
  }
}

std::vector<float> encode_labels(Model& model, const std::vector<std::string>& labels, const LabelPrompts& prompts) {
  const size_t dim = static_cast<size_t>(model.dim());
  std::vector<std::string> texts;
  std::vector<size_t> owner;  // label of each prompt
  for (size_t i = 0; i < labels.size(); ++i) {
    for (auto& p : label_prompts(labels[i], prompts)) {
      texts.push_back(std::move(p));
      owner.push_back(i);
    }
  }
  std::vector<double> sum(labels.size() * dim, 0.0);
  for (size_t start = 0; start < texts.size(); start += kTextBatch) {
    const size_t end = std::min(texts.size(), start + kTextBatch);
    const std::vector<std::string> batch(texts.begin() + static_cast<std::ptrdiff_t>(start),
                                         texts.begin() + static_cast<std::ptrdiff_t>(end));
    const auto e = model.encode_texts(batch);  // unit vectors (checked by Model)
    for (size_t r = 0; r < batch.size(); ++r) {
      const float* v = &e[r * dim];
      double norm = 0;
      for (size_t d = 0; d < dim; ++d) norm += static_cast<double>(v[d]) * v[d];
      norm = std::sqrt(norm);
      double* s = &sum[owner[start + r] * dim];
      for (size_t d = 0; d < dim; ++d) s[d] += v[d] / norm;
    }
  }
  std::vector<float> out(labels.size() * dim);
  for (size_t i = 0; i < labels.size(); ++i) {
    const double* s = &sum[i * dim];
    double norm = 0;
    for (size_t d = 0; d < dim; ++d) norm += s[d] * s[d];
    norm = std::sqrt(norm);
    if (!(norm > 1e-12)) {
      throw Exception(ErrorCode::kCorrupt, label_name(i, labels[i]) + ": its prompt embeddings cancel out");
    }
    for (size_t d = 0; d < dim; ++d) out[i * dim + d] = static_cast<float>(s[d] / norm);
  }
  return out;
}

Classifier::Classifier(std::vector<std::string> labels, std::vector<float> label_embeddings, int dim,
                       double logit_scale)
    : labels_(std::move(labels)), embeddings_(std::move(label_embeddings)), dim_(dim), logit_scale_(logit_scale) {
  if (labels_.empty() || dim_ <= 0 || embeddings_.size() != labels_.size() * static_cast<size_t>(dim_)) {
    throw Exception(ErrorCode::kInternal, "classifier: label embeddings do not match the labels");
  }
  if (!(logit_scale_ > 0) || !std::isfinite(logit_scale_)) {
    throw Exception(ErrorCode::kCorrupt, "the model's logit scale (" + std::to_string(logit_scale_) +
                                             ") is not a positive number: check bundle.json");
  }
}

std::vector<std::vector<LabelScore>> Classifier::classify(const float* images, int64_t n, int top) const {
  std::vector<std::vector<LabelScore>> out(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (n <= 0) return out;
  const size_t L = labels_.size();
  std::vector<float> scores(static_cast<size_t>(n) * L);
  std::vector<int64_t> which(static_cast<size_t>(n) * L);
  if (L <= kFewLabels) {
    // A few labels: FAISS's SIMD dot products, image by image, on this thread. Its BLAS path below
    // runs OpenMP regions whose spinning threads cost more than the arithmetic here (measured on
    // 100k photos x 10 labels: half the CPU time went to libgomp's barrier).
    for (int64_t i = 0; i < n; ++i) {
      faiss::fvec_inner_products_ny(&scores[static_cast<size_t>(i) * L], images + static_cast<size_t>(i) * dim_,
                                    embeddings_.data(), static_cast<size_t>(dim_), L);
      for (size_t j = 0; j < L; ++j) which[static_cast<size_t>(i) * L + j] = static_cast<int64_t>(j);
    }
  } else {
    faiss::knn_inner_product(images, embeddings_.data(), static_cast<size_t>(dim_), static_cast<size_t>(n), L, L,
                             scores.data(), which.data());
  }
  const size_t keep = top > 0 ? std::min(L, static_cast<size_t>(top)) : L;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<LabelScore> row(L);
    for (size_t j = 0; j < L; ++j) {
      const size_t at = static_cast<size_t>(i) * L + j;
      if (which[at] < 0 || !std::isfinite(scores[at])) {
        throw Exception(ErrorCode::kCorrupt,
                        "image " + std::to_string(i + 1) + ": its embedding is not a finite vector");
      }
      row[j].label = static_cast<int>(which[at]);
      row[j].score = std::clamp(scores[at], -1.0f, 1.0f);
    }
    std::sort(row.begin(), row.end(), [](const LabelScore& a, const LabelScore& b) {
      return a.score != b.score ? a.score > b.score : a.label < b.label;
    });
    // softmax(logit_scale * cos), shifted by the largest logit so exp never overflows.
    const double max_logit = logit_scale_ * row.front().score;
    double total = 0;
    for (auto& s : row) {
      s.probability = std::exp(logit_scale_ * s.score - max_logit);
      total += s.probability;
    }
    for (auto& s : row) s.probability /= total;
    row.resize(keep);
    out[static_cast<size_t>(i)] = std::move(row);
  }
  return out;
}

void classify_indexed(IndexStore& store, const Classifier& classifier, const std::string& under, int top,
                      const std::function<void(const std::vector<Classification>&)>& on_chunk) {
  auto vectors = store.load_vectors();
  if (vectors->size() == 0) return;
  if (vectors->dim() != classifier.dim()) {
    throw Exception(ErrorCode::kMismatch, store.dir() + ": the index holds embeddings of dimension " +
                                              std::to_string(vectors->dim()) + ", the model makes " +
                                              std::to_string(classifier.dim()));
  }
  std::unordered_map<int64_t, int64_t> row_of;
  row_of.reserve(static_cast<size_t>(vectors->size()));
  for (int64_t r = 0; r < vectors->size(); ++r) row_of.emplace(vectors->ids()[r], r);
  const auto files = store.catalog().files_at_or_under(under);
  const size_t dim = static_cast<size_t>(classifier.dim());
  std::vector<float> chunk;
  std::vector<const FileRecord*> chunk_files;
  auto flush = [&] {
    if (chunk_files.empty()) return;
    const auto results = classifier.classify(chunk.data(), static_cast<int64_t>(chunk_files.size()), top);
    std::vector<Classification> out(chunk_files.size());
    for (size_t i = 0; i < out.size(); ++i) {
      out[i].path = chunk_files[i]->path;
      out[i].labels = results[i];
    }
    on_chunk(out);
    chunk.clear();
    chunk_files.clear();
  };
  for (const auto& f : files) {
    auto it = row_of.find(f.id);
    if (it == row_of.end()) continue;  // added after the vectors were read
    const float* v = vectors->vectors() + static_cast<size_t>(it->second) * dim;
    chunk.insert(chunk.end(), v, v + dim);
    chunk_files.push_back(&f);
    if (static_cast<int64_t>(chunk_files.size()) == kImageChunk) flush();
  }
  flush();
}

namespace {

// label_json: each label already as a JSON string (dumped once, not once per photo).
std::string json_with_labels(const Classification& c, const std::vector<std::string>& label_json) {
  nlohmann::ordered_json head;
  set_string_field(head, "path", c.path);
  std::string s = dump_json(head);
  s.pop_back();  // the closing brace: "labels" follows, written by hand for the six decimals
  s += ",\"labels\":[";
  for (size_t i = 0; i < c.labels.size(); ++i) {
    const LabelScore& l = c.labels[i];
    s += i ? ",{\"label\":" : "{\"label\":";
    s += label_json.at(static_cast<size_t>(l.label));
    s += ",\"probability\":";
    s += six_decimals(l.probability);
    s += ",\"score\":";
    s += six_decimals(l.score);
    s += '}';
  }
  s += "]}";
  return s;
}

std::vector<std::string> labels_as_json(const std::vector<std::string>& labels) {
  std::vector<std::string> out;
  for (const auto& l : labels) out.push_back(dump_json(l));
  return out;
}

}  // namespace

std::string classification_json(const Classification& c, const std::vector<std::string>& labels) {
  return json_with_labels(c, labels_as_json(labels));
}

ClassificationPrinter::ClassificationPrinter(std::ostream& out, OutputFormat format,
                                             const std::vector<std::string>& labels)
    : out_(out), format_(format), labels_(labels), label_json_(labels_as_json(labels)) {
  if (format == OutputFormat::kPaths) {
    throw Exception(ErrorCode::kInvalidArgument, "classify prints table, json or jsonl, not paths");
  }
}

void ClassificationPrinter::print(const Classification& c) {
  switch (format_) {
    case OutputFormat::kJson: out_ << (printed_ ? "," : "[") << json_with_labels(c, label_json_); break;
    case OutputFormat::kJsonl: out_ << json_with_labels(c, label_json_) << '\n'; break;
    case OutputFormat::kTable:
    case OutputFormat::kPaths:
      if (printed_) out_ << '\n';
      out_ << "image: " << terminal_safe(c.path) << '\n';
      for (const auto& l : c.labels) {
        char head[64];
        std::snprintf(head, sizeof(head), "  %7.2f%%  %9.6f  ", 100.0 * l.probability, static_cast<double>(l.score));
        out_ << head << terminal_safe(labels_.at(static_cast<size_t>(l.label))) << '\n';
      }
      break;
  }
  ++printed_;
}

void ClassificationPrinter::flush() {
  if (&out_ == &std::cout) {
    flush_stdout();
    return;
  }
  out_.flush();
  if (!out_) throw Exception(ErrorCode::kIoError, "output: write failed");
}

void ClassificationPrinter::finish() {
  if (finished_) return;
  finished_ = true;
  if (format_ == OutputFormat::kJson) out_ << (printed_ ? "]\n" : "[]\n");
  flush();
}

}  // namespace cnclip
