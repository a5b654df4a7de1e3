#include "cnclip/bundle.h"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cnclip/runtime.h"
#include "json_number.h"

namespace cnclip {

using detail::json_double;
using detail::json_float;
using detail::json_integer;

std::string default_data_dir() { return xdg_data_home().value() + "/cnclip"; }

std::string resolve_model_dir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("CNCLIP_MODEL");
  if (env && *env) return env;
  auto home = xdg_data_home();
  if (!home) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "cannot find the model: " + home.error().message + "; give --model DIR or set CNCLIP_MODEL");
  }
  return home.value() + "/cnclip/models/default";
}

BundleManifest load_bundle_manifest(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    throw Exception(ErrorCode::kNotFound, dir +
                                              ": model bundle not found (give --model DIR or set CNCLIP_MODEL; "
                                              "scripts/setup.sh --model ViT-B-16 installs one)");
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
    const int version = json_integer<int>(j.at("format_version"), "format_version");
    if (version != kBundleFormatVersion) {
      throw Exception(ErrorCode::kMismatch, path + ": bundle format version " + std::to_string(version) +
                                                " is not supported (expected " + std::to_string(kBundleFormatVersion) +
                                                "); re-export it");
    }
    m.architecture = j.at("architecture").get<std::string>();
    m.precision = j.at("precision").get<std::string>();
    m.fingerprint = j.at("fingerprint").get<std::string>();
    m.embedding_dim = json_integer<int>(j.at("embedding_dim"), "embedding_dim");
    m.normalized = j.at("normalized").get<bool>();
    const auto& image = j.at("image");
    m.image.size = json_integer<int>(image.at("size"), "image.size");
    for (int c = 0; c < 3; ++c) {
      m.image.mean[c] = json_float(image.at("mean").at(c), "image.mean");
      m.image.std[c] = json_float(image.at("std").at(c), "image.std");
    }
    if (image.value("interpolation", "") != "bicubic-pillow" || image.value("resize", "") != "squash") {
      throw Exception(ErrorCode::kMismatch, path + ": unsupported image preprocessing");
    }
    const auto& text = j.at("text");
    m.context_length = json_integer<int>(text.at("context_length"), "text.context_length");
    m.lower_case = text.at("lower_case").get<bool>();
    if (text.value("tokenizer", "") != "bert-wordpiece" || !m.lower_case) {
      throw Exception(ErrorCode::kMismatch, path + ": unsupported tokenizer");
    }
    m.logit_scale = json_double(j.at("logit_scale"), "logit_scale");
    const auto& source = j.at("source");
    m.source_id = source.contains("sha256") ? "checkpoint:" + source.at("sha256").get<std::string>()
                                            : "random-init:" + m.architecture + ":" + source.at("seed").dump();
    for (const auto& [name, f] : j.at("files").items()) {
      BundleFile file{json_integer<int64_t>(f.at("bytes"), "files." + name + ".bytes"),
                      f.at("sha256").get<std::string>()};
      if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
        throw Exception(ErrorCode::kCorrupt, path + ": lists a file named '" + name + "' (not a plain file name)");
      }
      const bool hex = file.sha256.size() == 64 && std::all_of(file.sha256.begin(), file.sha256.end(), [](char c) {
                         return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                       });
      if (file.bytes < 0 || !hex) {
        throw Exception(ErrorCode::kCorrupt, path + ": invalid size or sha256 recorded for " + name);
      }
      m.files[name] = file;
    }
    for (const char* name : kBundleFiles) {
      if (!m.files.count(name)) throw Exception(ErrorCode::kCorrupt, path + ": does not list " + name);
    }
  } catch (const nlohmann::json::exception& e) {
    throw Exception(ErrorCode::kCorrupt, path + ": missing or invalid field (" + e.what() + ")");
  }
  if (m.embedding_dim <= 0 || m.image.size <= 0 || m.context_length < 2) {
    throw Exception(ErrorCode::kCorrupt, path + ": invalid sizes in manifest");
  }
  return m;
}

std::optional<std::string> read_bundle_origin(const BundleManifest& manifest) {
  const std::string path = manifest.path_of(kBundleOriginFile);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return std::nullopt;
    throw Exception(errno_error(path, errno, "cannot read"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (!j.is_object()) throw Exception(ErrorCode::kCorrupt, path + ": not a JSON object");
  return j.dump();
}

namespace {

// Hex sha256 of a file, or the errno of the failed read.
Result<std::string> sha256_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return errno_error(path, errno, "cannot read model bundle file");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return Error{ErrorCode::kInternal, "OpenSSL: cannot compute sha256"};
  }
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return errno_error(path, errno, "read failed");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  static const char* kHex = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) {
    hex += kHex[digest[i] >> 4];
    hex += kHex[digest[i] & 15];
  }
  return hex;
}

}  // namespace

std::optional<Error> bundle_file_problem(const BundleManifest& manifest, const std::string& file, bool hash) {
  const std::string path = manifest.path_of(file);
  auto it = manifest.files.find(file);
  if (it == manifest.files.end()) {
    return Error{ErrorCode::kCorrupt, manifest.dir + "/bundle.json: does not list " + file};
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno_error(path, errno, "model bundle file missing");
  if (!S_ISREG(st.st_mode)) return Error{ErrorCode::kCorrupt, path + ": model bundle file is not a regular file"};
  const int64_t want = it->second.bytes;
  if (st.st_size != want) {
    return Error{st.st_size < want ? ErrorCode::kTruncated : ErrorCode::kCorrupt,
                 path + ": corrupt model bundle file (" + std::to_string(st.st_size) + " bytes, bundle.json says " +
                     std::to_string(want) + (st.st_size < want ? "; truncated)" : ")")};
  }
  if (hash) {
    auto sum = sha256_of(path);
    if (!sum) return sum.error();
    if (sum.value() != it->second.sha256) {
      return Error{ErrorCode::kCorrupt, path + ": corrupt model bundle file (sha256 " + sum.value() +
                                            ", bundle.json says " + it->second.sha256 + ")"};
    }
  }
  return std::nullopt;
}

void check_bundle_file(const BundleManifest& manifest, const std::string& file) {
  if (auto problem = bundle_file_problem(manifest, file, false)) throw Exception(*problem);
}

std::vector<Error> verify_bundle_files(const BundleManifest& manifest, bool hash) {
  std::vector<Error> problems;
  for (const auto& [name, f] : manifest.files) {
    if (auto problem = bundle_file_problem(manifest, name, hash)) problems.push_back(std::move(*problem));
  }
  return problems;
}

}  // namespace cnclip
