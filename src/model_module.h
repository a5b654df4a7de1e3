// The boundary between the core library and the model module (libcnclip_model.so), private to cnclip.
//
// Only the module (src/model.cpp, src/model_module.cpp) sees LibTorch. The core library dlopens it the
// first time a Model needs LibTorch (src/model_loader.cpp), so commands that never encode do not map
// LibTorch's ~290 shared libraries. Core and module are built from the same tree by the same compiler
// and exchange C++ objects (std::string, std::vector, exceptions): the ABI check below refuses a module
// from another build rather than let mismatched layouts corrupt memory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cnclip/bundle.h"
#include "cnclip/model.h"

namespace cnclip::detail {

// The LibTorch half of a Model: its towers. Same thread-safety and error contract as Model's methods
// of the same names (model.h).
class ModelBackend {
 public:
  virtual ~ModelBackend() = default;
  virtual void load_image_tower() = 0;
  virtual void load_text_tower() = 0;
  virtual bool image_tower_loaded() const = 0;
  virtual bool text_tower_loaded() const = 0;
  virtual bool on_cpu() const = 0;
  virtual std::vector<float> encode_images(const float* pixels, int batch, RowErrors* row_errors) = 0;
  virtual std::vector<float> encode_token_ids(const int64_t* ids, int batch, int length, RowErrors* row_errors) = 0;
};

// Core functions the module calls back, so that they have one implementation (in the core).
struct ModelHost {
  void (*check_bundle_file)(const BundleManifest& manifest, const std::string& file);
  std::optional<std::string> (*embedding_problem)(const float* embedding, int dim, bool normalized);
};

// Bumped whenever anything in this header, or a type it passes (BundleManifest, ModelOptions, Error),
// changes layout.
constexpr int kModelModuleAbi = 1;

// What the module's entry point returns. The first fields identify the build; the core compares them
// with its own before using anything else.
struct ModelModuleApi {
  int abi;               // kModelModuleAbi
  const char* version;   // CNCLIP_VERSION
  long glibcxx;          // __GLIBCXX__ (the libstdc++ the module was built against)
  int cxx11_abi;         // _GLIBCXX_USE_CXX11_ABI (std::string's layout)
  size_t manifest_size;  // sizeof(BundleManifest)
  size_t options_size;   // sizeof(ModelOptions)
  // Throws Exception (e.g. kInvalidArgument for an unknown device). The manifest is already checked.
  std::unique_ptr<ModelBackend> (*open)(const BundleManifest& manifest, const ModelOptions& options);
  void (*set_compute_threads)(int n);
  int (*compute_threads)();
  std::string (*compute_backend_description)();
  double (*measure_sgemm_gflops)(int n, int repeats);
};

#define CNCLIP_MODEL_MODULE_ENTRY "cnclip_model_module_abi1"
using ModelModuleEntry = const ModelModuleApi* (*)(const ModelHost* host);

}  // namespace cnclip::detail

namespace cnclip {
// In the module only (model.cpp): the towers of a bundle whose manifest is checked.
std::unique_ptr<detail::ModelBackend> open_torch_model(const BundleManifest& manifest, const ModelOptions& options);
}  // namespace cnclip

// The module's entry point (model_module.cpp): records `host`, returns the API.

extern "C" __attribute__((visibility("default"))) const cnclip::detail::ModelModuleApi* cnclip_model_module_abi1(
    const cnclip::detail::ModelHost* host);
