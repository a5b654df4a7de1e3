#include "cnclip/eval.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <sys/stat.h>
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <faiss/utils/distances.h>

#include "atomic_file.h"
#include "cnclip/file_walk.h"
#include "cnclip/image.h"
#include "cnclip/runtime.h"
#include "encode_pipeline.h"
#include "read_at.h"

namespace cnclip {
namespace {

namespace fs = std::filesystem;

// A whole decimal number (optional '-'), as Python's int() takes an id; nullopt for anything else.
std::optional<int64_t> parse_id(const std::string& s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == s.size()) return std::nullopt;
  for (size_t j = i; j < s.size(); ++j) {
    if (s[j] < '0' || s[j] > '9') return std::nullopt;
  }
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno == ERANGE) return std::nullopt;
  return static_cast<int64_t>(v);
}

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

// Chinese-CLIP's eval dataset: text.lower().replace("“", "\"").replace("”", "\""). The lower-casing
// is the tokenizer's own (BERT's basic tokenizer lower-cases too).
std::string prepare_text(std::string text) {
  static const std::string kQuotes[] = {"\xe2\x80\x9c", "\xe2\x80\x9d"};  // “ ”
  for (const auto& q : kQuotes) {
    for (size_t at = text.find(q); at != std::string::npos; at = text.find(q, at + 1)) text.replace(at, q.size(), "\"");
  }
  return text;
}

class Fd {
 public:
  explicit Fd(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw Exception(errno_error(path, errno));
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// The base64 text of a TSV image, read with pread (thread-safe on a shared descriptor).
Result<std::string> read_range(int fd, const EvalImage& image) {
  std::string text(image.length, '\0');
  if (!read_at(fd, image.offset, text.data(), text.size())) {
    if (errno != 0) return errno_error(image.path, errno, "reading");
    return Error{ErrorCode::kTruncated, image.label + ": the file ended early (changed while read?)"};
  }
  return text;
}

std::string ids_json_line(const char* id_key, int64_t id, const char* list_key, const std::vector<int64_t>& ids) {
  nlohmann::ordered_json j;
  j[id_key] = id;
  j[list_key] = ids;
  return j.dump() + "\n";
}

std::string stem_of(const std::string& path) {
  fs::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "photos/" -> "photos"
  std::string stem = p.stem().string();
  return stem.empty() ? "images" : stem;
}

}  // namespace

Result<std::vector<uint8_t>> decode_base64(const std::string& text) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    for (int i = 0; i < 62; ++i) t[static_cast<uint8_t>(alphabet[i])] = static_cast<int8_t>(i);
    t['+'] = t['-'] = 62;
    t['/'] = t['_'] = 63;
    return t;
  }();
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3 + 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t symbols = 0, padding = 0;
  for (const char ch : text) {
    const auto c = static_cast<uint8_t>(ch);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (c == '=') {
      ++padding;
      continue;
    }
    const int8_t v = table[c];
    if (v < 0 || padding > 0) {
      return Error{ErrorCode::kCorrupt,
                   padding > 0 ? "base64 data after '=' padding" : "not base64 (byte " + std::to_string(c) + ")"};
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    ++symbols;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
      acc &= (1u << bits) - 1;
    }
  }
  if (symbols % 4 == 1 || padding > 2 || (padding > 0 && (symbols + padding) % 4 != 0)) {
    return Error{ErrorCode::kCorrupt, "base64 data of a length no encoder writes"};
  }
  return out;
}

std::vector<EvalText> read_eval_texts(const std::string& path, EvalObserver& observer) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Exception(errno_error(path, errno ? errno : ENOENT));
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Exception(ErrorCode::kInvalidArgument, path + ": is a folder; TEXTS is a JSONL file");
  }
  std::vector<EvalText> texts;
  std::unordered_map<int64_t, int64_t> line_of_id;
  std::string line;
  int64_t n = 0;
  const std::string name = file_name(path);
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = name + " line " + std::to_string(n);
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      observer.on_problem(where + ": not a JSON object (malformed JSON); line left out");
      continue;
    }
    if (!j.is_object()) {
      observer.on_problem(where + ": not a JSON object; line left out");
      continue;
    }
    auto id = j.find("text_id");
    if (id == j.end() || !id->is_number_integer()) {
      observer.on_problem(where + ": \"text_id\" is missing or not an integer; line left out");
      continue;
    }
    EvalText t;
    t.id = id->get<int64_t>();
    t.line = n;
    const std::string who = where + " (text_id " + std::to_string(t.id) + ")";
    auto text = j.find("text");
    if (text == j.end() || !text->is_string()) {
      observer.on_problem(who + ": \"text\" is missing or not a string; line left out");
      continue;
    }
    t.text = text->get<std::string>();
    auto ids = j.find("image_ids");
    if (ids == j.end() || !ids->is_array() ||
        !std::all_of(ids->begin(), ids->end(), [](const nlohmann::json& v) { return v.is_number_integer(); })) {
      observer.on_problem(who + ": \"image_ids\" is missing or not a list of integers; line left out");
      continue;
    }
    for (const auto& v : *ids) t.image_ids.push_back(v.get<int64_t>());
    auto [seen, fresh] = line_of_id.emplace(t.id, n);
    if (!fresh) {
      observer.on_problem(who + ": duplicate text_id (first on line " + std::to_string(seen->second) +
                          "); line left out");
      continue;
    }
    if (t.image_ids.empty()) observer.on_problem(who + ": no image_ids; counts as a miss");
    texts.push_back(std::move(t));
  }
  if (in.bad()) throw Exception(errno_error(path, errno, "reading"));
  return texts;
}

std::vector<EvalImage> list_eval_images(const std::string& path, EvalObserver& observer) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Exception(errno_error(path, ENOENT));
  std::vector<EvalImage> images;
  std::unordered_map<int64_t, std::string> seen;  // id -> where it was first
  auto add = [&](EvalImage image, const std::string& where) {
    auto [it, fresh] = seen.emplace(image.id, where);
    if (!fresh) {
      observer.on_problem(where + ": duplicate image_id " + std::to_string(image.id) + " (first in " + it->second +
                          "); left out");
      return;
    }
    images.push_back(std::move(image));
  };
  if (fs::is_directory(status)) {
    const WalkOptions walk;  // the extensions `cnclip index` takes
    std::vector<std::pair<int64_t, std::string>> found;
    fs::directory_iterator it(path, ec);
    if (ec) throw Exception(errno_error(path, ec.value(), "listing"));
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.' || !walk.wants(name)) continue;
      std::error_code type_ec;
      if (it->is_directory(type_ec)) continue;
      const std::string file = it->path().string();
      auto id = parse_id(it->path().stem().string());
      if (!id) {
        observer.on_problem(file + ": the file name is not an integer image_id; left out");
        continue;
      }
      found.emplace_back(*id, file);
    }
    if (ec) throw Exception(errno_error(path, ec.value(), "listing"));
    // By id, then name: a duplicate id is reported on the same file whatever the listing order.
    std::sort(found.begin(), found.end());
    for (auto& [id, file] : found) {
      EvalImage image;
      image.id = id;
      image.label = file;
      image.path = file;
      add(std::move(image), file);
    }
    return images;
  }
  if (WalkOptions{}.wants(path)) {
    throw Exception(ErrorCode::kInvalidArgument, path +
                                                     ": an image file; --images takes a folder of <image_id>.<ext> "
                                                     "files or a TSV of image_id<TAB>base64 lines");
  }
  // A TSV of image_id<TAB>base64, one image per line. Only offsets are kept: the base64 (the bulk of
  // the file) is read again by the decoder threads.
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Exception(errno_error(path, errno ? errno : EACCES));
  const std::string name = file_name(path);
  std::string line;
  uint64_t offset = 0;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    const uint64_t line_start = offset;
    offset += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = name + " line " + std::to_string(n);
    const size_t tab = line.find('\t');
    if (tab == std::string::npos) {
      observer.on_problem(where + ": no tab (expected image_id<TAB>base64); line left out");
      continue;
    }
    auto id = parse_id(line.substr(0, tab));
    if (!id) {
      observer.on_problem(where + ": the image_id '" + line.substr(0, std::min<size_t>(tab, 40)) +
                          "' is not an integer; line left out");
      continue;
    }
    if (line.find_first_not_of(" \t", tab + 1) == std::string::npos) {
      observer.on_problem(where + " (image_id " + std::to_string(*id) + "): no base64 image after the tab; left out");
      continue;
    }
    EvalImage image;
    image.id = *id;
    image.label = where + " (image_id " + std::to_string(*id) + ")";
    image.path = path;
    image.base64 = true;
    image.offset = line_start + tab + 1;
    image.length = line.size() - tab - 1;
    add(std::move(image), where);
  }
  if (in.bad()) throw Exception(errno_error(path, errno, "reading"));
  return images;
}

std::vector<std::vector<int64_t>> top_k_ids(const std::vector<float>& queries, const std::vector<float>& candidates,
                                            const std::vector<int64_t>& candidate_ids, int dim, int k) {
  const size_t d = static_cast<size_t>(std::max(dim, 1));
  const size_t nq = queries.size() / d, nc = candidates.size() / d;
  if (candidate_ids.size() != nc) throw Exception(ErrorCode::kInvalidArgument, "top_k_ids: one id per candidate row");
  const size_t keep = std::min(nc, static_cast<size_t>(std::max(k, 0)));
  std::vector<std::vector<int64_t>> out(nq);
  std::vector<float> scores(nc);
  std::vector<size_t> order(nc);
  for (size_t q = 0; q < nq; ++q) {
    // float32 inner products, as Chinese-CLIP's float32 matmul, by FAISS's SIMD kernel.
    if (nc > 0) faiss::fvec_inner_products_ny(scores.data(), &queries[q * d], candidates.data(), d, nc);
    std::iota(order.begin(), order.end(), 0);
    // Highest score first, ties in candidate order (a stable sort's order, as Python's sorted()).
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(),
                      [&](size_t x, size_t y) { return scores[x] > scores[y] || (scores[x] == scores[y] && x < y); });
    out[q].reserve(keep);
    for (size_t r = 0; r < keep; ++r) out[q].push_back(candidate_ids[order[r]]);
  }
  return out;
}

Recall recall_at_1_5_10(const std::vector<std::vector<int64_t>>& predictions,
                        const std::vector<std::vector<int64_t>>& positives) {
  if (predictions.size() != positives.size()) {
    throw Exception(ErrorCode::kInvalidArgument, "recall: one prediction list per query");
  }
  Recall r;
  if (positives.empty()) return r;
  int64_t hits[3] = {0, 0, 0};
  const size_t ks[3] = {1, 5, 10};
  for (size_t q = 0; q < positives.size(); ++q) {
    const std::unordered_set<int64_t> truth(positives[q].begin(), positives[q].end());
    // The rank of the first positive among the predictions decides all three.
    size_t first = SIZE_MAX;
    for (size_t i = 0; i < predictions[q].size(); ++i) {
      if (truth.count(predictions[q][i])) {
        first = i;
        break;
      }
    }
    for (int j = 0; j < 3; ++j) hits[j] += first < ks[j] ? 1 : 0;
  }
  const double n = static_cast<double>(positives.size());
  // As evaluation.py: the fraction first, then * 100; the mean of the three fractions, then * 100.
  const double f1 = static_cast<double>(hits[0]) / n, f5 = static_cast<double>(hits[1]) / n,
               f10 = static_cast<double>(hits[2]) / n;
  r.r1 = f1 * 100;
  r.r5 = f5 * 100;
  r.r10 = f10 * 100;
  r.mean_recall = (f1 + f5 + f10) / 3.0 * 100;
  return r;
}

EvalReport run_eval(Model& model, const EvalOptions& options, EvalObserver& observer) {
  EvalReport report;
  struct Counting : EvalObserver {
    EvalObserver& inner;
    int64_t count = 0;
    explicit Counting(EvalObserver& o) : inner(o) {}
    void on_problem(const std::string& m) override {
      ++count;
      inner.on_problem(m);
    }
    void on_progress(int64_t d, int64_t t) override { inner.on_progress(d, t); }
  } counting(observer);

  // Both files are read and checked before the model runs: a wrong path fails in a moment.
  const std::vector<EvalText> texts = read_eval_texts(options.texts, counting);
  const std::vector<EvalImage> images = list_eval_images(options.images, counting);
  if (texts.empty()) throw Exception(ErrorCode::kCorrupt, options.texts + ": no usable text line");
  if (images.empty()) throw Exception(ErrorCode::kCorrupt, options.images + ": no usable image");
  const int rank_k = std::max(options.k, 10);
  const size_t dim = static_cast<size_t>(model.dim());
  report.dim = model.dim();

  // Images, through the pipeline `index` uses.
  std::unique_ptr<Fd> tsv;
  if (images.front().base64) tsv = std::make_unique<Fd>(options.images);
  const Normalization norm = model.manifest().image;
  auto prepare = [&](size_t i) {
    const EvalImage& image = images[i];
    Result<std::vector<uint8_t>> bytes = std::vector<uint8_t>{};
    if (image.base64) {
      auto text = read_range(tsv->get(), image);
      if (!text) {
        bytes = text.error();
      } else {
        bytes = decode_base64(text.value());
        if (!bytes) bytes = Error{bytes.error().code, image.label + ": " + bytes.error().message};
      }
    } else {
      bytes = read_file_bytes(image.path);
    }
    if (!bytes) {
      detail::PreparedItem failed;
      failed.label = image.label;
      failed.error = bytes.error();
      return failed;
    }
    return detail::prepare_image(bytes.value(), image.label, norm, options.decode);
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::vector<float>> image_rows(images.size());
  std::vector<bool> image_ok(images.size(), false);
  {
    detail::EncodePipeline pipeline(model, images.size(), prepare, options.encode);
    int64_t done = 0;
    while (auto batch = pipeline.next()) {
      if (batch->error) {
        pipeline.stop();
        std::rethrow_exception(batch->error);
      }
      size_t row = 0;
      for (auto& item : batch->items) {
        if (item.kind == detail::PreparedItem::kPixels) {
          const float* e = &batch->embeddings[row++ * dim];
          image_rows[item.index].assign(e, e + dim);
          image_ok[item.index] = true;
        } else {
          counting.on_problem(item.error.message + " (the image counts as a miss)");
        }
        ++done;
      }
      counting.on_progress(done, static_cast<int64_t>(images.size()));
      if (interrupt_requested()) {
        pipeline.stop();
        throw Exception(ErrorCode::kInterrupted, "interrupted");
      }
    }
  }
  report.image_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::unordered_set<int64_t> embedded;
  for (size_t i = 0; i < images.size(); ++i) {
    if (!image_ok[i]) continue;
    report.image_ids.push_back(images[i].id);
    report.image_features.insert(report.image_features.end(), image_rows[i].begin(), image_rows[i].end());
    std::vector<float>().swap(image_rows[i]);
    embedded.insert(images[i].id);
  }
  report.images = static_cast<int64_t>(report.image_ids.size());
  if (report.images == 0) throw Exception(ErrorCode::kCorrupt, options.images + ": no image could be decoded");

  // Texts, in batches, with the compute threads the caller set (the pipeline gave them back).
  model.load_text_tower();
  const size_t tb = static_cast<size_t>(std::max(options.text_batch_size, 1));
  std::vector<const EvalText*> text_of_row;
  for (size_t start = 0; start < texts.size(); start += tb) {
    std::vector<std::string> batch;
    const size_t end = std::min(texts.size(), start + tb);
    for (size_t i = start; i < end; ++i) batch.push_back(prepare_text(texts[i].text));
    RowErrors row_errors;
    std::vector<float> e = model.encode_texts(batch, &row_errors);
    for (size_t i = start; i < end; ++i) {
      if (const auto& error = row_errors[i - start]) {
        counting.on_problem(file_name(options.texts) + " line " + std::to_string(texts[i].line) + " (text_id " +
                            std::to_string(texts[i].id) + "): " + error->message + " (the text counts as a miss)");
        continue;
      }
      report.text_ids.push_back(texts[i].id);
      report.text_features.insert(report.text_features.end(),
                                  e.begin() + static_cast<std::ptrdiff_t>((i - start) * dim),
                                  e.begin() + static_cast<std::ptrdiff_t>((i - start + 1) * dim));
      text_of_row.push_back(&texts[i]);
    }
    if (interrupt_requested()) throw Exception(ErrorCode::kInterrupted, "interrupted");
  }

  // Ids named by texts that have no usable image: each reported once, each a miss.
  std::map<int64_t, std::pair<int64_t, int64_t>> missing;  // id -> (first text naming it, texts naming it)
  for (const auto& t : texts) {
    for (int64_t id : t.image_ids) {
      if (embedded.count(id)) continue;
      auto [it, fresh] = missing.emplace(id, std::make_pair(t.id, 0));
      ++it->second.second;
    }
  }
  const std::set<int64_t> listed = [&] {
    std::set<int64_t> s;
    for (const auto& image : images) s.insert(image.id);
    return s;
  }();
  for (const auto& [id, named] : missing) {
    const int64_t others = named.second - 1;
    counting.on_problem("image_id " + std::to_string(id) + " (named by text_id " + std::to_string(named.first) +
                        (others > 0 ? " and " + std::to_string(others) + " other text(s)" : std::string()) + ") " +
                        (listed.count(id) ? "could not be embedded" : "has no image in " + file_name(options.images)) +
                        ": counts as a miss");
  }
  report.missing_images = static_cast<int64_t>(missing.size());

  // Text→image: every text that was read is a query; one whose embedding failed has no predictions.
  const auto predictions = top_k_ids(report.text_features, report.image_features, report.image_ids, report.dim, rank_k);
  std::unordered_map<int64_t, size_t> row_of_text;
  for (size_t r = 0; r < report.text_ids.size(); ++r) row_of_text[report.text_ids[r]] = r;
  std::vector<std::vector<int64_t>> t2i_pred, t2i_truth;
  for (const auto& t : texts) {
    auto it = row_of_text.find(t.id);
    t2i_pred.push_back(it == row_of_text.end() ? std::vector<int64_t>{} : predictions[it->second]);
    t2i_truth.push_back(t.image_ids);
  }
  report.texts = static_cast<int64_t>(texts.size());
  report.text_to_image = recall_at_1_5_10(t2i_pred, t2i_truth);
  for (auto p : predictions) {
    if (p.size() > static_cast<size_t>(options.k)) p.resize(static_cast<size_t>(options.k));
    report.text_predictions.push_back(std::move(p));
  }

  // Image→text: the images the texts name (in order of first mention), against every embedded text.
  std::unordered_map<int64_t, size_t> query_of_image;
  std::vector<std::vector<int64_t>> i2t_truth;
  for (const auto& t : texts) {
    for (int64_t id : t.image_ids) {
      auto [it, fresh] = query_of_image.emplace(id, i2t_truth.size());
      if (fresh) {
        report.image_query_ids.push_back(id);
        i2t_truth.emplace_back();
      }
      auto& truth = i2t_truth[it->second];
      if (truth.empty() || truth.back() != t.id) truth.push_back(t.id);
    }
  }
  std::unordered_map<int64_t, size_t> row_of_image;
  for (size_t r = 0; r < report.image_ids.size(); ++r) row_of_image[report.image_ids[r]] = r;
  std::vector<float> query_features;
  std::vector<size_t> query_slot;
  for (size_t q = 0; q < report.image_query_ids.size(); ++q) {
    auto it = row_of_image.find(report.image_query_ids[q]);
    if (it == row_of_image.end()) continue;
    query_features.insert(query_features.end(),
                          report.image_features.begin() + static_cast<std::ptrdiff_t>(it->second * dim),
                          report.image_features.begin() + static_cast<std::ptrdiff_t>((it->second + 1) * dim));
    query_slot.push_back(q);
  }
  const auto ranked = top_k_ids(query_features, report.text_features, report.text_ids, report.dim, rank_k);
  std::vector<std::vector<int64_t>> i2t_pred(report.image_query_ids.size());
  for (size_t j = 0; j < query_slot.size(); ++j) i2t_pred[query_slot[j]] = ranked[j];
  report.named_images = static_cast<int64_t>(report.image_query_ids.size());
  report.image_to_text = recall_at_1_5_10(i2t_pred, i2t_truth);
  for (auto& p : i2t_pred) {
    if (p.size() > static_cast<size_t>(options.k)) p.resize(static_cast<size_t>(options.k));
  }
  report.image_predictions = std::move(i2t_pred);
  report.problems = counting.count;
  return report;
}

void write_predictions(const EvalReport& report, const std::string& path) {
  std::string out;
  for (size_t r = 0; r < report.text_ids.size(); ++r) {
    out += ids_json_line("text_id", report.text_ids[r], "image_ids", report.text_predictions[r]);
  }
  write_output_file(path, out);
}

void write_image_predictions(const EvalReport& report, const std::string& path) {
  std::string out;
  for (size_t q = 0; q < report.image_query_ids.size(); ++q) {
    if (report.image_predictions[q].empty()) continue;  // a named image with no usable image
    out += ids_json_line("image_id", report.image_query_ids[q], "text_ids", report.image_predictions[q]);
  }
  write_output_file(path, out);
}

std::vector<std::string> write_features(const EvalReport& report, const EvalOptions& options, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Exception(errno_error(dir, ec.value(), "creating"));
  const size_t dim = static_cast<size_t>(report.dim);
  // Python's json.dumps of a float32 tensor's tolist(): each value as the double it converts to,
  // in the shortest form that reads back to that double.
  auto write = [&](const std::string& path, const char* key, const std::vector<int64_t>& ids,
                   const std::vector<float>& features) {
    AtomicFileWriter file(path);
    std::string line;
    for (size_t r = 0; r < ids.size(); ++r) {
      nlohmann::ordered_json j;
      j[key] = ids[r];
      auto& f = j["feature"] = nlohmann::json::array();
      for (size_t i = 0; i < dim; ++i) f.push_back(static_cast<double>(features[r * dim + i]));
      line = j.dump();
      line += '\n';
      file.write(line.data(), line.size());
    }
    file.commit();
  };
  const std::string images = (fs::path(dir) / (stem_of(options.images) + ".img_feat.jsonl")).string();
  const std::string texts = (fs::path(dir) / (stem_of(options.texts) + ".txt_feat.jsonl")).string();
  write(images, "image_id", report.image_ids, report.image_features);
  write(texts, "text_id", report.text_ids, report.text_features);
  return {images, texts};
}

}  // namespace cnclip
