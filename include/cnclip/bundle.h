// A model bundle: the directory scripts/export_model.py writes (image_encoder.pt, text_encoder.pt,
// vocab.txt, bundle.json). This header reads and checks its manifest; it needs no LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/error.h"
#include "cnclip/image_options.h"

namespace cnclip {

constexpr int kBundleFormatVersion = 1;

struct BundleFile {
  int64_t bytes = 0;
  std::string sha256;
};

struct BundleManifest {
  std::string dir;           // the bundle directory, as opened
  std::string architecture;  // "ViT-B-16", "tiny", ...
  std::string precision;     // "fp32" or "int8"
  std::string fingerprint;   // identifies the exported weights; an index remembers it
  std::string source_id;     // identifies the checkpoint they came from (same for fp32 and int8)
  int embedding_dim = 0;
  bool normalized = true;  // encoders return L2-normalized embeddings
  Normalization image;     // input size, mean, std
  int context_length = 52;
  bool lower_case = true;
  double logit_scale = 100.0;  // exp(logit_scale) of the checkpoint
  std::map<std::string, BundleFile> files;
  std::string json;  // bundle.json as written, for `cnclip model-info`

  std::string path_of(const std::string& file) const { return dir + "/" + file; }
};

// The files every bundle lists in bundle.json.
inline constexpr const char* kBundleFiles[] = {"image_encoder.pt", "text_encoder.pt", "vocab.txt"};

// Reads DIR/bundle.json and checks its fields. Throws Exception naming the file: missing directory
// or manifest, invalid JSON, another format version, missing fields, a listed file with a name that
// is not a plain file name, a negative size or a malformed sha256, or one of kBundleFiles not listed.
// Reads only bundle.json: the files themselves are checked when used (check_bundle_file).
BundleManifest load_bundle_manifest(const std::string& dir);

// What is wrong with one file the manifest lists, or std::nullopt: missing (kNotFound), not a
// regular file, or another size than recorded (kTruncated when shorter, kCorrupt when longer), and,
// with `hash`, another sha256 than recorded (kCorrupt; reads the whole file). The Error names the file.
std::optional<Error> bundle_file_problem(const BundleManifest& manifest, const std::string& file, bool hash);

// Throws bundle_file_problem(manifest, file, false) if there is one: called before a file is loaded,
// so a missing or truncated encoder or vocabulary is named instead of failing inside LibTorch.
void check_bundle_file(const BundleManifest& manifest, const std::string& file);

// bundle_file_problem for every file the manifest lists, in name order (empty: all is well).
std::vector<Error> verify_bundle_files(const BundleManifest& manifest, bool hash);

// The file scripts/setup.sh writes beside bundle.json: where the checkpoint came from (source, URL,
// file, size, sha256, dates). Informational only: nothing loads or checks it but `model-info`.
inline constexpr const char* kBundleOriginFile = "origin.json";

// DIR/origin.json of the bundle, parsed, as a JSON text; std::nullopt when the bundle has none.
// Throws Exception naming the file when it exists but cannot be read (errno_error's code) or is not
// a JSON object (kCorrupt).
std::optional<std::string> read_bundle_origin(const BundleManifest& manifest);

// The bundle to use: `flag` (--model) if given, else $CNCLIP_MODEL, else
// <data home>/cnclip/models/default (see xdg_data_home in runtime.h). Throws kInvalidArgument
// ("cannot find the model: HOME is not set; give --model DIR or set CNCLIP_MODEL") when none applies.
std::string resolve_model_dir(const std::string& flag);

// <data home>/cnclip (xdg_data_home() in runtime.h: an absolute XDG_DATA_HOME, else
// $HOME/.local/share); throws kInvalidArgument naming the reason when there is none.
std::string default_data_dir();

}  // namespace cnclip
