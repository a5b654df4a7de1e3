#include "cnclip/bundle.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace cnclip {

std::string default_data_dir() {
  const char* xdg = std::getenv("XDG_DATA_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/cnclip";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.local/share/cnclip";
}

std::string resolve_model_dir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("CNCLIP_MODEL");
  if (env && *env) return env;
  return default_data_dir() + "/models/default";
}

BundleManifest load_bundle_manifest(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    throw Exception(ErrorCode::kNotFound,
                    dir + ": model bundle not found (give --model DIR or set CNCLIP_MODEL; "
                          "scripts/export_model.py makes one)");
  }
  if (!S_ISDIR(st.st_mode)) throw Exception(ErrorCode::kInvalidArgument, dir + ": model bundle is not a directory");
  const std::string path = dir + "/bundle.json";
  std::ifstream in(path);
  if (!in) throw Exception(errno_error(path, errno, "cannot read bundle manifest"));
  std::stringstream ss;
  ss << in.rdbuf();
  BundleManifest m;
  m.dir = dir;
  m.json = ss.str();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(m.json);
  } catch (const nlohmann::json::exception& e) {
    throw Exception(ErrorCode::kCorrupt, path + ": not valid JSON (" + e.what() + ")");
  }
  try {
    if (j.value("format", "") != "cnclip-bundle") {
      throw Exception(ErrorCode::kCorrupt, path + ": not a cnclip bundle manifest");
    }
    const int version = j.at("format_version").get<int>();
    if (version != kBundleFormatVersion) {
      throw Exception(ErrorCode::kMismatch, path + ": bundle format version " + std::to_string(version) +
                                                " is not supported (expected " +
                                                std::to_string(kBundleFormatVersion) + "); re-export it");
    }
    m.architecture = j.at("architecture").get<std::string>();
    m.precision = j.at("precision").get<std::string>();
    m.fingerprint = j.at("fingerprint").get<std::string>();
    m.embedding_dim = j.at("embedding_dim").get<int>();
    m.normalized = j.at("normalized").get<bool>();
    const auto& image = j.at("image");
    m.image.size = image.at("size").get<int>();
    for (int c = 0; c < 3; ++c) {
      m.image.mean[c] = image.at("mean").at(c).get<float>();
      m.image.std[c] = image.at("std").at(c).get<float>();
    }
    if (image.value("interpolation", "") != "bicubic-pillow" || image.value("resize", "") != "squash") {
      throw Exception(ErrorCode::kMismatch, path + ": unsupported image preprocessing");
    }
    const auto& text = j.at("text");
    m.context_length = text.at("context_length").get<int>();
    m.lower_case = text.at("lower_case").get<bool>();
    if (text.value("tokenizer", "") != "bert-wordpiece" || !m.lower_case) {
      throw Exception(ErrorCode::kMismatch, path + ": unsupported tokenizer");
    }
    m.logit_scale = j.at("logit_scale").get<double>();
    const auto& source = j.at("source");
    m.source_id = source.contains("sha256") ? "checkpoint:" + source.at("sha256").get<std::string>()
                                            : "random-init:" + m.architecture + ":" + source.at("seed").dump();
    for (const auto& [name, f] : j.at("files").items()) {
      m.files[name] = BundleFile{f.at("bytes").get<int64_t>(), f.at("sha256").get<std::string>()};
    }
  } catch (const nlohmann::json::exception& e) {
    throw Exception(ErrorCode::kCorrupt, path + ": missing or invalid field (" + e.what() + ")");
  }
  if (m.embedding_dim <= 0 || m.image.size <= 0 || m.context_length < 2) {
    throw Exception(ErrorCode::kCorrupt, path + ": invalid sizes in manifest");
  }
  return m;
}

void check_bundle_file(const BundleManifest& manifest, const std::string& file) {
  const std::string path = manifest.path_of(file);
  auto it = manifest.files.find(file);
  if (it == manifest.files.end()) {
    throw Exception(ErrorCode::kCorrupt, manifest.dir + "/bundle.json: does not list " + file);
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw Exception(errno_error(path, errno, "model bundle file missing"));
  }
  if (st.st_size != it->second.bytes) {
    throw Exception(ErrorCode::kCorrupt, path + ": corrupt model bundle file (" + std::to_string(st.st_size) +
                                             " bytes, bundle.json says " + std::to_string(it->second.bytes) + ")");
  }
}

}  // namespace cnclip
