// The core half of Model: the manifest and the tokenizer, and the model module (libcnclip_model.so,
// everything that needs LibTorch), loaded the first time a Model needs a tower. See model_module.h.
#include <dlfcn.h>
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "cnclip/model.h"
#include "model_module.h"

#ifndef CNCLIP_MODEL_MODULE_DIR
#define CNCLIP_MODEL_MODULE_DIR ""
#endif

namespace cnclip {
namespace {

// A normalized embedding's length is 1 up to float rounding (int8 towers normalize in float too).
constexpr double kNormTolerance = 1e-3;
// Below this length an embedding carries no direction (a model that lost its weights returns zeros).
constexpr double kMinNorm = 1e-6;

constexpr const char* kModuleFile = "libcnclip_model.so";

std::string executable_dir() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// dlerror()'s text (to copy before the next dl* call), without the path it starts with.
std::string dl_error(const std::string& path, const char* fallback) {
  const char* why = ::dlerror();
  std::string s = why ? why : fallback;
  if (s.compare(0, path.size() + 2, path + ": ") == 0) s.erase(0, path.size() + 2);
  return s;
}

constexpr const char* kModuleHint =
    " (install the libcnclip_model.so built with this cnclip there, or set CNCLIP_MODEL_MODULE to its path)";

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::mutex g_load_mutex;                                    // loading, and thread counts asked for before
std::atomic<const detail::ModelModuleApi*> g_api{nullptr};  // set once the module is loaded
int g_requested_threads = 0;                                // last set_compute_threads before that (0: none)

const detail::ModelHost kHost{&check_bundle_file, &embedding_problem};

const detail::ModelModuleApi& load_module() {
  if (const auto* api = g_api.load(std::memory_order_acquire)) return *api;
  std::lock_guard<std::mutex> lock(g_load_mutex);
  if (const auto* api = g_api.load(std::memory_order_relaxed)) return *api;
  const std::string path = model_module_path();
  // RTLD_GLOBAL: LibTorch's libraries stay visible to dlsym(RTLD_DEFAULT) (model.cpp finds oneDNN's
  // cache setting that way), as when they were linked into the program. The module is never unloaded.
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!handle) {
    const std::string why = dl_error(path, "dlopen failed");
    const int err = exists(path) ? 0 : errno;
    throw Exception(err == ENOENT || err == ENOTDIR ? ErrorCode::kNotFound : ErrorCode::kCorrupt,
                    "cannot load the model module " + path + ": " + why + kModuleHint);
  }
  auto entry = reinterpret_cast<detail::ModelModuleEntry>(::dlsym(handle, CNCLIP_MODEL_MODULE_ENTRY));
  if (!entry) {
    const std::string why = dl_error(path, "no entry point");
    ::dlclose(handle);
    throw Exception(ErrorCode::kMismatch,
                    "cannot load the model module " + path + ": not a cnclip model module (" + why + ")" + kModuleHint);
  }
  const detail::ModelModuleApi* api = entry(&kHost);
  if (!api || api->abi != detail::kModelModuleAbi || std::strcmp(api->version, CNCLIP_VERSION) != 0 ||
      api->glibcxx != __GLIBCXX__ || api->cxx11_abi != _GLIBCXX_USE_CXX11_ABI ||
      api->manifest_size != sizeof(BundleManifest) || api->options_size != sizeof(ModelOptions)) {
    // Not closed: its entry point ran, and unloading code that may have started threads is unsafe.
    auto build = [](const char* version, int abi, long glibcxx, int cxx11_abi) {
      return std::string("cnclip ") + version + ", module ABI " + std::to_string(abi) + ", libstdc++ " +
             std::to_string(glibcxx) + (cxx11_abi ? "" : " (old string ABI)");
    };
    throw Exception(ErrorCode::kMismatch,
                    "cannot load the model module " + path + ": built for " +
                        (api ? build(api->version, api->abi, api->glibcxx, api->cxx11_abi) : std::string("?")) +
                        ", not for this program (" +
                        build(CNCLIP_VERSION, detail::kModelModuleAbi, __GLIBCXX__, _GLIBCXX_USE_CXX11_ABI) + ")" +
                        kModuleHint);
  }
  if (g_requested_threads > 0) api->set_compute_threads(g_requested_threads);
  g_api.store(api, std::memory_order_release);
  return *api;
}

}  // namespace

std::string model_module_path() {
  if (const char* env = std::getenv("CNCLIP_MODEL_MODULE"); env && *env) return env;
  const std::string exe_dir = executable_dir();
  const std::string configured = CNCLIP_MODEL_MODULE_DIR;
  if (!configured.empty()) {
    const std::string dir = configured.front() == '/' ? configured : exe_dir + "/" + configured;
    // A packaged layout (e.g. /usr/lib/cnclip); a build tree keeps the module next to the program.
    if (exists(dir + "/" + kModuleFile) || exe_dir.empty()) return dir + "/" + kModuleFile;
  }
  return (exe_dir.empty() ? std::string(".") : exe_dir) + "/" + kModuleFile;
}

bool model_module_loaded() { return g_api.load(std::memory_order_acquire) != nullptr; }

std::optional<std::string> embedding_problem(const float* e, int dim, bool normalized) {
  int nan = 0, inf = 0;
  double norm = 0;
  for (int d = 0; d < dim; ++d) {
    if (std::isnan(e[d])) ++nan;
    else if (std::isinf(e[d])) ++inf;
    else norm += double(e[d]) * e[d];
  }
  if (nan) return std::to_string(nan) + " of its " + std::to_string(dim) + " values are NaN";
  if (inf) return std::to_string(inf) + " of its " + std::to_string(dim) + " values are infinite";
  norm = std::sqrt(norm);
  char length[32];
  std::snprintf(length, sizeof length, "%.6g", norm);
  if (norm < kMinNorm) return std::string("its length is ") + length + ", not a direction";
  if (normalized && std::abs(norm - 1.0) > kNormTolerance) {
    return std::string("its length is ") + length + ", and the bundle says its embeddings are normalized";
  }
  return std::nullopt;
}

struct Model::Impl {
  BundleManifest manifest;
  ModelOptions options;
  bool on_cpu = true;
  std::mutex tokenizer_mu;  // tokenizer() may be called from several threads (cnclip serve's queries)
  std::unique_ptr<WordPieceTokenizer> tokenizer;
  std::unique_ptr<detail::ModelBackend> backend;  // the towers, from the module, once needed

  detail::ModelBackend& towers() {
    if (!backend) backend = load_module().open(manifest, options);
    return *backend;
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

std::unique_ptr<Model> Model::open(const std::string& bundle_dir, const ModelOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->manifest = load_bundle_manifest(bundle_dir);
  impl->options = options;
  // The module's open repeats this for LibTorch; here it sizes OpenMP for FAISS if no tower ever loads.
  if (options.threads != 0 || compute_threads() == 1) set_compute_threads(options.threads);
  if (options.device != "cpu") {
    // Only LibTorch knows which devices exist: check now, as for the CPU (which always exists).
    impl->on_cpu = impl->towers().on_cpu();
  }
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

const BundleManifest& Model::manifest() const { return impl_->manifest; }

void Model::load_image_tower() { impl_->towers().load_image_tower(); }
void Model::load_text_tower() { impl_->towers().load_text_tower(); }
bool Model::image_tower_loaded() const { return impl_->backend && impl_->backend->image_tower_loaded(); }
bool Model::text_tower_loaded() const { return impl_->backend && impl_->backend->text_tower_loaded(); }
bool Model::on_cpu() const { return impl_->on_cpu; }

const Tokenizer& Model::tokenizer() {
  std::lock_guard<std::mutex> lock(impl_->tokenizer_mu);
  if (!impl_->tokenizer) {
    check_bundle_file(impl_->manifest, "vocab.txt");
    impl_->tokenizer = WordPieceTokenizer::from_vocab_file(impl_->manifest.path_of("vocab.txt"));
  }
  return *impl_->tokenizer;
}

std::vector<float> Model::encode_images(const float* pixels, int batch, RowErrors* row_errors) {
  if (row_errors) row_errors->clear();
  if (batch == 0) return {};
  return impl_->towers().encode_images(pixels, batch, row_errors);
}

std::vector<float> Model::encode_token_ids(const int64_t* ids, int batch, int length, RowErrors* row_errors) {
  if (row_errors) row_errors->clear();
  if (batch == 0) return {};
  return impl_->towers().encode_token_ids(ids, batch, length, row_errors);
}

std::vector<float> Model::encode_texts(const std::vector<std::string>& texts, RowErrors* row_errors) {
  const int len = impl_->manifest.context_length;
  std::vector<int64_t> ids;
  ids.reserve(texts.size() * static_cast<size_t>(len));
  for (const auto& t : texts) {
    auto row = tokenizer().encode(t, len);
    ids.insert(ids.end(), row.begin(), row.end());
  }
  return encode_token_ids(ids.data(), static_cast<int>(texts.size()), len, row_errors);
}

void set_compute_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (const auto* api = g_api.load(std::memory_order_acquire)) return api->set_compute_threads(n);
  std::lock_guard<std::mutex> lock(g_load_mutex);
  if (const auto* api = g_api.load(std::memory_order_relaxed)) return api->set_compute_threads(n);
  // LibTorch's intra-op threads are OpenMP's (the same libgomp FAISS uses): set them there, and
  // again in LibTorch when the module loads.
  omp_set_num_threads(n);
  g_requested_threads = n;
}

int compute_threads() {
  if (const auto* api = g_api.load(std::memory_order_acquire)) return api->compute_threads();
  return omp_get_max_threads();
}

std::string compute_backend_description() { return load_module().compute_backend_description(); }

double measure_sgemm_gflops(int n, int repeats) { return load_module().measure_sgemm_gflops(n, repeats); }

}  // namespace cnclip
