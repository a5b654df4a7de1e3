// A model module from another build of cnclip (another ABI number and version), which the library must
// refuse by its identification before using anything in it (lazy_load_test.cpp).
#include "model_module.h"

extern "C" const cnclip::detail::ModelModuleApi* cnclip_model_module_abi1(const cnclip::detail::ModelHost*) {
  static const cnclip::detail::ModelModuleApi api{cnclip::detail::kModelModuleAbi + 1,
                                                  "0.0.1-foreign",
                                                  __GLIBCXX__,
                                                  _GLIBCXX_USE_CXX11_ABI,
                                                  sizeof(cnclip::BundleManifest),
                                                  sizeof(cnclip::ModelOptions),
                                                  nullptr,
                                                  nullptr,
                                                  nullptr,
                                                  nullptr,
                                                  nullptr};
  return &api;
}
