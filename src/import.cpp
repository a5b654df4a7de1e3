#include "cnclip/import.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "cnclip/file_walk.h"
#include "cnclip/npy.h"
#include "cnclip/runtime.h"
#include "json_number.h"

namespace cnclip {
namespace {

int64_t now_seconds() { return static_cast<int64_t>(std::time(nullptr)); }

enum class LineRead { kLine, kEnd, kTooLong };

// std::getline with a length limit, so that a file without newlines cannot take all memory.
LineRead read_line(std::istream& in, std::string& line, size_t limit, char end = '\n') {
  line.clear();
  std::streambuf* buf = in.rdbuf();
  for (;;) {
    const int c = buf->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(std::ios::eofbit);
      break;
    }
    if (c == static_cast<unsigned char>(end)) return LineRead::kLine;
    if (line.size() >= limit) return LineRead::kTooLong;
    line.push_back(static_cast<char>(c));
  }
  return line.empty() ? LineRead::kEnd : LineRead::kLine;
}

void strip_cr(std::string& line) {
  if (!line.empty() && line.back() == '\r') line.pop_back();
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Checks one row; returns the reason it cannot be imported, or "".
std::string bad_row(const float* e, int dim) {
  double norm = 0;
  for (int d = 0; d < dim; ++d) {
    if (!std::isfinite(e[d])) return "value " + std::to_string(d) + " is not a finite number";
    norm += double(e[d]) * e[d];
  }
  if (!(norm > 0)) return "the embedding is all zeros";
  if (!std::isfinite(norm)) return "the embedding's values are too large";
  return "";
}

// The row as the index stores it: a unit vector. One that is already of unit length up to float
// rounding (|length - 1| <= 1e-5, as every model's output is: the towers normalize in float) is kept
// bit for bit, so that an embedding computed elsewhere is stored exactly as `cnclip index` would
// have stored it; any other is divided by its length.
std::vector<float> stored_form(const float* e, int dim) {
  double norm = 0;
  for (int d = 0; d < dim; ++d) norm += double(e[d]) * e[d];
  norm = std::sqrt(norm);
  std::vector<float> out(e, e + dim);
  if (std::fabs(norm - 1.0) > kUnitLengthTolerance) {
    for (int d = 0; d < dim; ++d) out[d] = static_cast<float>(e[d] / norm);
  }
  return out;
}

std::string parse_path(const nlohmann::json& j, const std::string& where) {
  auto fail = [&](const std::string& why) { return Exception(ErrorCode::kCorrupt, where + why); };
  std::string path;
  if (auto it = j.find("path_bytes"); it != j.end()) {
    if (!it->is_string()) throw fail("\"path_bytes\" is not a string");
    const std::string& hex = it->get_ref<const std::string&>();
    if (hex.size() % 2 != 0) throw fail("\"path_bytes\" is not hex (odd length)");
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
      if (hi < 0 || lo < 0) throw fail("\"path_bytes\" is not hex ('" + hex.substr(i, 2) + "')");
      path.push_back(static_cast<char>(hi * 16 + lo));
    }
    if (path.empty()) throw fail("\"path_bytes\" is empty");
  } else {
    auto p = j.find("path");
    if (p == j.end()) throw fail("no \"path\" field");
    if (!p->is_string()) throw fail("\"path\" is not a string");
    path = p->get<std::string>();
    if (path.empty()) throw fail("\"path\" is empty");
  }
  if (path.find('\0') != std::string::npos) throw fail("the path contains a NUL character");
  return path;
}

}  // namespace

void require_input_file(const std::string& path, const char* what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Exception(errno_error(path, errno, std::string("cannot read ") + what));
  if (S_ISDIR(st.st_mode)) {
    throw Exception(ErrorCode::kInvalidArgument, path + ": is a directory, not " + std::string(what));
  }
}

ImportRows read_embeddings_jsonl(std::istream& in, const std::string& name, int dim) {
  ImportRows rows;
  std::string line;
  std::vector<float> e(static_cast<size_t>(dim));
  for (int64_t n = 1;; ++n) {
    const LineRead r = read_line(in, line, kMaxImportLineBytes);
    const std::string where = name + ":" + std::to_string(n) + ": ";
    if (r == LineRead::kEnd) break;
    if (r == LineRead::kTooLong) {
      throw Exception(ErrorCode::kCorrupt, where + "line longer than " + std::to_string(kMaxImportLineBytes >> 20) +
                                               " MiB; not an embed-image line");
    }
    strip_cr(line);
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& err) {
      throw Exception(ErrorCode::kCorrupt, where + "not valid JSON (at byte " + std::to_string(err.byte) + ")");
    } catch (const nlohmann::json::exception&) {  // out_of_range: a number beyond double
      throw Exception(ErrorCode::kCorrupt, where + "a number is out of range");
    }
    if (!j.is_object()) {
      throw Exception(ErrorCode::kCorrupt, where + "not a JSON object like {\"path\": ..., \"embedding\": [...]}");
    }
    const std::string path = parse_path(j, where);
    auto emb = j.find("embedding");
    if (emb == j.end()) throw Exception(ErrorCode::kCorrupt, where + "no \"embedding\" field");
    if (!emb->is_array()) throw Exception(ErrorCode::kCorrupt, where + "\"embedding\" is not an array");
    if (emb->size() != static_cast<size_t>(dim)) {
      throw Exception(ErrorCode::kMismatch, where + "embedding has dimension " + std::to_string(emb->size()) +
                                                ", the model has " + std::to_string(dim));
    }
    for (int d = 0; d < dim; ++d) {
      const auto& v = (*emb)[static_cast<size_t>(d)];
      if (!v.is_number()) {
        throw Exception(ErrorCode::kCorrupt, where + "\"embedding\" value " + std::to_string(d) + " is not a number");
      }
      const double x = v.get<double>();
      // A cast of a double beyond FLT_MAX to float is undefined; bad_row names the non-finite value.
      e[d] = std::fabs(x) <= FLT_MAX ? static_cast<float>(x) : std::numeric_limits<float>::infinity();
    }
    if (auto why = bad_row(e.data(), dim); !why.empty()) throw Exception(ErrorCode::kCorrupt, where + why);
    rows.paths.push_back(path);
    rows.embeddings.insert(rows.embeddings.end(), e.begin(), e.end());
  }
  if (in.bad()) throw Exception(ErrorCode::kIoError, name + ": read error");
  return rows;
}

ImportRows read_embeddings_jsonl_file(const std::string& path, int dim) {
  if (path == "-") return read_embeddings_jsonl(std::cin, "stdin", dim);
  require_input_file(path, "a JSONL file");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Exception(errno_error(path, errno, "cannot read"));
  return read_embeddings_jsonl(file, path, dim);
}

ImportRows read_embeddings_npy(const std::string& npy_path, const std::string& paths_file, int dim,
                               bool null_separated) {
  const bool from_stdin = paths_file == "-";
  const std::string paths_name = from_stdin ? "stdin" : paths_file;
  require_input_file(npy_path, "an .npy file");
  if (!from_stdin) require_input_file(paths_file, "a file of paths");
  auto m = read_npy(npy_path);
  if (!m) throw Exception(m.error());
  const NpyArray& a = m.value();
  if (a.shape.size() != 2 || a.shape[1] != dim) {
    std::string shape;
    for (auto s : a.shape) shape += (shape.empty() ? "" : ",") + std::to_string(s);
    throw Exception(ErrorCode::kMismatch,
                    npy_path + ": expected a [N," + std::to_string(dim) + "] matrix, not [" + shape + "]");
  }
  ImportRows rows;
  rows.embeddings = a.as_float();
  std::ifstream file;
  if (!from_stdin) {
    file.open(paths_file, std::ios::binary);
    if (!file) throw Exception(errno_error(paths_file, errno, "cannot read"));
  }
  std::istream& in = from_stdin ? std::cin : file;
  std::string line;
  for (int64_t n = 1;; ++n) {
    const LineRead r = read_line(in, line, 1u << 20, null_separated ? '\0' : '\n');
    if (r == LineRead::kEnd) break;
    const std::string where = paths_name + ":" + std::to_string(n) + ": ";
    if (r == LineRead::kTooLong) throw Exception(ErrorCode::kCorrupt, where + "line longer than 1 MiB; not a path");
    if (!null_separated) strip_cr(line);  // NUL-terminated names are taken as they are
    if (line.empty()) continue;
    if (line.find('\0') != std::string::npos) {
      throw Exception(ErrorCode::kCorrupt,
                      where + "the path contains a NUL byte (NUL-separated paths, as find -print0 writes: add -0)");
    }
    rows.paths.push_back(line);
  }
  if (in.bad()) throw Exception(ErrorCode::kIoError, paths_name + ": read error");
  if (static_cast<int64_t>(rows.paths.size()) != a.shape[0]) {
    throw Exception(ErrorCode::kMismatch, paths_name + ": " + std::to_string(rows.paths.size()) + " paths for " +
                                              std::to_string(a.shape[0]) + " embeddings in " + npy_path);
  }
  for (size_t i = 0; i < rows.paths.size(); ++i) {
    if (auto why = bad_row(&rows.embeddings[i * dim], dim); !why.empty()) {
      throw Exception(ErrorCode::kCorrupt,
                      npy_path + ": row " + std::to_string(i + 1) + " (" + rows.paths[i] + "): " + why);
    }
  }
  return rows;
}

PrefixMap parse_prefix_map(const std::string& text) {
  const auto eq = text.find('=');
  const std::string what = "--map-prefix " + text;
  if (eq == std::string::npos) {
    throw Exception(ErrorCode::kInvalidArgument, what + ": expects FROM=TO, e.g. /shared/photos=/home/me/photos");
  }
  std::string from = text.substr(0, eq), to = text.substr(eq + 1);
  if (from.empty() || to.empty()) {
    throw Exception(ErrorCode::kInvalidArgument, what + ": both sides of FROM=TO must be given");
  }
  if (from[0] != '/') {
    throw Exception(ErrorCode::kInvalidArgument, what + ": FROM must be an absolute path, as the imported paths are");
  }
  auto normal = [](const std::string& p) {
    std::string n = std::filesystem::absolute(p).lexically_normal().string();
    while (n.size() > 1 && n.back() == '/') n.pop_back();
    return n;
  };
  return PrefixMap{normal(from), normal(to)};
}

std::vector<int64_t> map_path_prefixes(std::vector<std::string>& paths, const std::vector<PrefixMap>& maps) {
  std::vector<int64_t> counts(maps.size(), 0);
  for (auto& p : paths) {
    for (size_t m = 0; m < maps.size(); ++m) {
      const std::string& from = maps[m].from;
      // `rest` is what follows FROM: "" or "/..." (for FROM "/", the whole path).
      const bool below =
          from == "/" ? !p.empty() && p[0] == '/'
                      : p.compare(0, from.size(), from) == 0 && (p.size() == from.size() || p[from.size()] == '/');
      if (!below) continue;
      const std::string rest = from == "/" ? p : p.substr(from.size());
      const std::string& to = maps[m].to;
      p = to == "/" ? (rest.empty() ? "/" : rest) : to + rest;
      ++counts[m];
      break;
    }
  }
  return counts;
}

NpyImportFiles npy_import_files(const std::string& npy) {
  NpyImportFiles f;
  f.npy = npy;
  const std::string prefix =
      npy.size() > 4 && npy.compare(npy.size() - 4, 4, ".npy") == 0 ? npy.substr(0, npy.size() - 4) : npy;
  f.paths = prefix + ".paths";
  struct stat st {};
  if (::stat(f.paths.c_str(), &st) != 0) {
    throw Exception(ErrorCode::kNotFound, npy + ": no " + f.paths +
                                              " beside it (the paths of its rows, one per line); "
                                              "give another file with --npy " +
                                              npy + " --paths FILE");
  }
  if (::stat((prefix + ".json").c_str(), &st) == 0) f.manifest = prefix + ".json";
  return f;
}

void check_shard_manifest(const std::string& manifest, const BundleManifest& bundle, bool allow_mixed_precision,
                          int64_t rows) {
  require_input_file(manifest, "a manifest");
  std::ifstream in(manifest, std::ios::binary);
  if (!in) throw Exception(errno_error(manifest, errno, "cannot read"));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    throw Exception(ErrorCode::kCorrupt, manifest + ": not valid JSON (the manifest embed-image --out writes)");
  }
  auto str = [](const nlohmann::json& o, const char* key) {
    auto it = o.find(key);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (!j.is_object() || str(j, "format") != "cnclip-shard" || !j.contains("settings") || !j["settings"].is_object() ||
      !j["settings"].contains("model") || !j["settings"]["model"].is_object()) {
    throw Exception(ErrorCode::kCorrupt, manifest +
                                             ": not the manifest embed-image --out writes (no \"format\": "
                                             "\"cnclip-shard\" with its settings)");
  }
  const nlohmann::json& m = j["settings"]["model"];
  const std::string fingerprint = str(m, "fingerprint"), source = str(m, "source"), precision = str(m, "precision");
  if (fingerprint != bundle.fingerprint &&
      !(allow_mixed_precision && !source.empty() && source == bundle.source_id && precision != bundle.precision)) {
    const bool sibling = !source.empty() && source == bundle.source_id && precision != bundle.precision;
    throw Exception(ErrorCode::kMismatch,
                    manifest + ": the embeddings come from " + str(m, "architecture") + " " + precision +
                        " (fingerprint " + fingerprint.substr(0, 16) + "), not from the model " + bundle.dir + " (" +
                        bundle.architecture + " " + bundle.precision + ", fingerprint " +
                        bundle.fingerprint.substr(0, 16) + "); " +
                        (sibling ? "pass --mixed-precision to import them anyway"
                                 : "import them with that model (--model), or embed again with this one"));
  }
  if (rows >= 0 && j.contains("embedded") && j["embedded"].is_number_integer() &&
      j["embedded"].get<int64_t>() != rows) {
    throw Exception(ErrorCode::kCorrupt, manifest + ": records " + std::to_string(j["embedded"].get<int64_t>()) +
                                             " embeddings, the .npy beside it holds " + std::to_string(rows));
  }
}

ImportSummary import_embeddings(IndexStore& store, const BundleManifest& bundle, const std::vector<std::string>& paths,
                                const std::vector<float>& embeddings, bool allow_mixed_precision,
                                bool update_snapshot) {
  const int dim = bundle.embedding_dim;
  if (embeddings.size() != paths.size() * static_cast<size_t>(dim)) {
    throw Exception(ErrorCode::kMismatch, "embeddings have dimension " +
                                              std::to_string(paths.empty() ? 0 : embeddings.size() / paths.size()) +
                                              ", the model " + bundle.dir + " has " + std::to_string(dim));
  }
  // Every row is checked before the first is written, so a bad one leaves the index as it was.
  for (size_t i = 0; i < paths.size(); ++i) {
    if (paths[i].empty()) {
      throw Exception(ErrorCode::kInvalidArgument, "embedding " + std::to_string(i + 1) + " has an empty path");
    }
    if (auto why = bad_row(&embeddings[i * dim], dim); !why.empty()) {
      throw Exception(ErrorCode::kCorrupt, paths[i] + ": " + why);
    }
  }
  store.require_model(bundle, allow_mixed_precision);
  Catalog& catalog = store.catalog();
  ImportSummary summary;
  constexpr size_t kBatch = 20000;
  struct Row {
    FileRecord record;
    std::vector<float> embedding;
  };
  std::vector<Row> changed;
  for (size_t start = 0; start < paths.size(); start += kBatch) {
    // What the index would hold after this batch, compared with what it holds: only rows that differ
    // are written, and a batch with none opens no transaction (the generation stays, and so does
    // the snapshot).
    changed.clear();
    for (size_t i = start; i < std::min(paths.size(), start + kBatch); ++i) {
      Row row{FileRecord{0, std::filesystem::absolute(paths[i]).lexically_normal().string(), 0, 0, "", now_seconds()},
              stored_form(&embeddings[i * dim], dim)};
      FileRecord& r = row.record;
      if (auto canonical = canonical_path(r.path)) {
        r.path = canonical.value();
        if (auto st = stat_file(r.path)) {
          r.size = st.value().size;
          r.mtime_ns = st.value().mtime_ns;
        }
      }
      if (auto existing = catalog.find(r.path)) {
        r.id = existing->id;
        if (existing->size == r.size && existing->mtime_ns == r.mtime_ns && catalog.embedding(r.id) == row.embedding) {
          ++summary.unchanged;
          continue;
        }
      }
      changed.push_back(std::move(row));
    }
    if (!changed.empty()) {
      CatalogTransaction tx(catalog);
      store.record_model(bundle);
      for (const Row& row : changed) {
        // A path given twice in one batch: the second is an update of the first.
        FileRecord r = row.record;
        if (r.id == 0) {
          if (auto existing = catalog.find(r.path)) r.id = existing->id;
        }
        if (r.id != 0) {
          catalog.update(r, row.embedding.data(), dim);
          ++summary.updated;
        } else {
          catalog.insert(r, row.embedding.data(), dim);
          ++summary.added;
        }
      }
      tx.commit();
    }
    if (interrupt_requested() && start + kBatch < paths.size()) {
      summary.interrupted = true;
      return summary;
    }
  }
  if (update_snapshot) {
    if (summary.added + summary.updated > 0) {
      store.write_snapshot();
    } else {
      store.ensure_snapshot();
    }
  }
  store.ensure_snapshot();
  return summary;
}

}  // namespace cnclip
