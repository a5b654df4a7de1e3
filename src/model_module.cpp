// The model module's entry point (see model_module.h). Built with hidden visibility: the entry point
// is the module's only exported symbol, so the definitions below and those of model.cpp (which share
// names with the core's, e.g. set_compute_threads) bind inside the module and never clash with the
// program's.
#include "model_module.h"

namespace cnclip {

namespace {
const detail::ModelHost* g_host = nullptr;  // set once, by the entry point, before any other call
}  // namespace

// The core's implementations, reached through the host table.
void check_bundle_file(const BundleManifest& manifest, const std::string& file) {
  g_host->check_bundle_file(manifest, file);
}
std::optional<std::string> embedding_problem(const float* embedding, int dim, bool normalized) {
  return g_host->embedding_problem(embedding, dim, normalized);
}

}  // namespace cnclip

extern "C" const cnclip::detail::ModelModuleApi* cnclip_model_module_abi1(const cnclip::detail::ModelHost* host) {
  using namespace cnclip;
  cnclip::g_host = host;
  static const detail::ModelModuleApi api{
      detail::kModelModuleAbi,
      CNCLIP_VERSION,
      __GLIBCXX__,
      _GLIBCXX_USE_CXX11_ABI,
      sizeof(BundleManifest),
      sizeof(ModelOptions),
      &open_torch_model,
      &set_compute_threads,
      &compute_threads,
      &compute_backend_description,
      &measure_sgemm_gflops,
  };
  return &api;
}
