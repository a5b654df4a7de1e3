// The LibTorch half of Model, built only into the model module (libcnclip_model.so, see
// model_module.h); the core library loads it when a Model first needs a tower.
#include "cnclip/model.h"

#include <ATen/Parallel.h>
#include <blis.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/xnnpack_rewrite.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>
#include <torch/library.h>
#include <torch/script.h>
#include <torch/version.h>

#include <cpuid.h>
#include <dlfcn.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>

#include "batched_matmul.h"
#include "graph_rewrite.h"
#include "linear_int8.h"
#include "linear_packed.h"
#include "model_module.h"
#include "onednn_util.h"
#include "small_ops.h"

namespace cnclip {
namespace {

std::string first_line(const std::string& s) {
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

// oneDNN caches the primitives it creates (default: 1024). Dynamically quantized Linears bake each
// call's activation scales into new primitives, so with int8 towers that cache fills with ~1 MB
// entries that are rarely used again: `cnclip index` of 64 photos peaked at 1.9 GB instead of 0.8 GB,
// and ran no faster (scripts/bench.sh photos; a text query costs ~3 ms more with the small cache).
// A user's ONEDNN_PRIMITIVE_CACHE_CAPACITY still wins.
void limit_onednn_primitive_cache() {
  if (std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY") || std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY")) return;
  using SetCapacity = int (*)(int);  // dnnl_status_t dnnl_set_primitive_cache_capacity(int)
  if (auto set = reinterpret_cast<SetCapacity>(dlsym(RTLD_DEFAULT, "dnnl_set_primitive_cache_capacity"))) {
    set(16);
  }
}

// How a float32 tower's Linear layers run (see model.h, "fp32 Linear layers"). CNCLIP_FP32_LINEAR
// (onednn | blis | blas | xnnpack) overrides the choice, for measurement (scripts/bench.sh) and for a
// user whose CPU disagrees with the default; anything else is the default.
enum class LinearRoute { kOneDnn, kBlis, kBlas, kXnnpack };

// The CPU's family when AMD makes it (0x17 Zen 1-2, 0x19 Zen 3-4, 0x1a Zen 5), else 0.
unsigned amd_family() {
#if defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return 0;
  const bool amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
  unsigned family = (eax >> 8) & 0xf;
  if (family == 0xf) family += (eax >> 20) & 0xff;
  return family;
#else
  return 0;
#endif
}

// Whether oneDNN's float32 matmul leads BLIS for a text query's products on this CPU: where oneDNN
// runs AVX-512 (its brgemm kernels; BLIS 0.9 has no small-matrix AVX-512 kernels, see
// choose_blis_kernels), except on AMD's family 19h (Zen 3 has no AVX-512; Zen 4 runs it on 256-bit
// units, where BLIS's zen3 kernels led: 19 ms against 20-21 for a 15-token query's Linears, 2 threads).
// On the AMD EPYC of family 1Ah (Zen 5, 512-bit units) that measured this, the 72 products of a
// 15-token query on 2 threads took 12-13 ms with oneDNN on the bundle's weights in place against
// ~31 ms with BLIS's haswell kernels (standalone, interleaved).
bool onednn_leads_for_small_linears() {
  using isa = dnnl::cpu_isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case isa::avx512_core:
    case isa::avx512_core_vnni:
    case isa::avx512_core_bf16:
    case isa::avx512_core_amx: return amd_family() != 0x19;
    default: return false;
  }
}

LinearRoute linear_route() {
  if (const char* env = std::getenv("CNCLIP_FP32_LINEAR")) {
    if (std::strcmp(env, "blas") == 0) return LinearRoute::kBlas;
    if (std::strcmp(env, "xnnpack") == 0) return LinearRoute::kXnnpack;
    if (std::strcmp(env, "blis") == 0) return LinearRoute::kBlis;
    if (std::strcmp(env, "onednn") == 0) return LinearRoute::kOneDnn;
  }
  // Products of few rows (kBlisMaxRows: a text query's) on a small-matrix kernel that reads the weights
  // in place, where OpenBLAS repacks each weight matrix per call, which is most of a 15-token query's
  // time: on CPUs with AVX2 and FMA, oneDNN's where it runs AVX-512 and leads
  // (onednn_leads_for_small_linears), else BLIS's (README "Against ONNX Runtime"): the text tower's
  // Linears took 36 ms on one core and 19-20 ms on two with BLIS, 67 and 35 ms with OpenBLAS (AMD EPYC
  // Zen 4). Older CPUs keep OpenBLAS (BLIS's kernels for them were not measured).
  // XNNPACK, packed at load, was 0.6-0.8x BLAS's time on one thread but its thread pool spins: 2-5x
  // slower with 2 threads on a busy machine.
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    static const bool onednn = onednn_leads_for_small_linears();
    return onednn ? LinearRoute::kOneDnn : LinearRoute::kBlis;
  }
  return LinearRoute::kBlas;
#else
  return LinearRoute::kBlis;
#endif
}

// BLIS 0.9 picks its kernels from the CPU (cpuid) when it first runs: zen, zen2, zen3 for AMD
// families 17h and 19h, haswell for AVX2, skx for AVX-512 (Intel's, and AMD families it does not know,
// such as 1Ah). Its skx kernels have no small-matrix path for float32: the 15-row Linears of a text
// query took 61 ms on two threads where haswell's took 20 and zen3's 19, on the same Zen 4; 788-row
// products 687, 670 and 648 ms. So where BLIS would take skx (or knl), it is given haswell's kernels
// (BLIS_ARCH_TYPE, read once when BLIS starts; a user's own setting wins). Called before the first
// BLIS call, while the model module loads.
void choose_blis_kernels() {
#if defined(__x86_64__)
  if (std::getenv("BLIS_ARCH_TYPE") || !__builtin_cpu_supports("avx512f")) return;
  const unsigned family = amd_family();
  if (family == 0x17 || family == 0x19) return;  // BLIS's zen kernels
  setenv("BLIS_ARCH_TYPE", std::to_string(static_cast<int>(BLIS_ARCH_HASWELL)).c_str(), 0);
#endif
}

// cnclip::linear: aten::linear's float32 CPU case with few rows computed by BLIS's gemm, with the calling thread's
// compute thread count (OpenMP keeps it per thread: set_compute_threads) passed to BLIS per call, as
// BLIS's own count is process-wide. Any other case (another dtype or device, autograd) is aten::linear.
// The weight may have any strides: bundles exported since BLIS store it as the transpose of a
// contiguous [in, out] matrix, which its kernels read fastest (scripts/export_model.py).
// Up to this many rows BLIS computes a Linear, beyond it BLAS: BLIS's small-matrix kernels lead for
// few rows, OpenBLAS's packed ones for many (text tower shapes, [rows, 768] x [768, 768..3072], 2
// threads, Zen 4: BLIS's time 0.58x OpenBLAS's at 30 rows, 0.73x at 60, 0.91x at 120, 1.02x at 240,
// 1.08x at 480; the image tower at 788 rows 1.06x).
constexpr int64_t kBlisMaxRows = 192;

// oneDNN's float32 matmul for cnclip::linear: y[m, n] = x[m, k] * weight^T (+ bias), on the weights as
// the bundle stores them (oneDNN's [k, n] "ab" for the transposed storage, "ba" for [n, k] rows), for
// what the packed route (linear_packed.h) does not take: the text tower's with CNCLIP_TEXT_LINEAR=inplace.
// It was the text tower's route on a measurement that packing 340 MB would cost a one-shot query more
// than it saves (packed, the 72 products of a 15-token query took 12 ms against 12.8-13.3 in place;
// "ba" 19 ms); with cnclip's malloc settings a one-shot query is no slower packed (load(), below). Primitives by
// shape and thread count (oneDNN splits the work by the count it was built for), made once each.
// Returns false for weights of other strides, and when oneDNN fails: then, said once on stderr, BLIS
// runs every product from that call on (y may hold part of oneDNN's output: BLIS overwrites it).
// A row's last bits depend on how many rows the call has (which of oneDNN's kernels computes it): a
// text's embedding may differ by ~1e-7 with the other texts of its encode call.
struct SmallLinearPrimitive {
  dnnl::matmul matmul;
  dnnl::memory::desc scratchpad;
};
std::atomic<bool> onednn_linear_failed{false};

bool onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias, at::Tensor& y, int64_t m,
                   int64_t k, int64_t n, int64_t activation) {
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  if (onednn_linear_failed) return false;
  tag weights_tag;
  if (weight.stride(0) == 1 && weight.stride(1) == n) weights_tag = tag::ab;
  else if (weight.stride(1) == 1 && weight.stride(0) == k) weights_tag = tag::ba;
  else return false;
  at::Tensor b;
  if (bias) b = bias->contiguous();
  const int threads = std::max(1, at::get_num_threads());
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int, bool, int, int64_t>,
                  std::shared_ptr<const SmallLinearPrimitive>>
      made;
  try {
    std::shared_ptr<const SmallLinearPrimitive> p;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (made.size() > 512) made.clear();  // text queries of every length, on several thread counts
      auto& slot = made[{m, k, n, static_cast<int>(weights_tag), bias != nullptr, threads, activation}];
      if (!slot) {
        dnnl::primitive_attr attr;
        dnnl::post_ops ops;
        detail::append_activation(ops, activation);
        attr.set_post_ops(ops);
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
        const dnnl::memory::desc src({m, k}, dt::f32, tag::ab), wei({k, n}, dt::f32, weights_tag),
            dst({m, n}, dt::f32, tag::ab);
        const auto desc = bias ? dnnl::matmul::desc(src, wei, dnnl::memory::desc({1, n}, dt::f32, tag::ab), dst)
                               : dnnl::matmul::desc(src, wei, dst);
        const dnnl::matmul::primitive_desc pd(desc, attr, detail::onednn_engine());
        slot =
            std::make_shared<const SmallLinearPrimitive>(SmallLinearPrimitive{dnnl::matmul(pd), pd.scratchpad_desc()});
      }
      p = slot;
    }
    const auto& engine = detail::onednn_engine();
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory({{m, k}, dt::f32, tag::ab}, engine, const_cast<float*>(x.data_ptr<float>()))},
        {DNNL_ARG_WEIGHTS,
         dnnl::memory({{k, n}, dt::f32, weights_tag}, engine, const_cast<float*>(weight.data_ptr<float>()))},
        {DNNL_ARG_DST, dnnl::memory({{m, n}, dt::f32, tag::ab}, engine, y.data_ptr<float>())}};
    if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory({{1, n}, dt::f32, tag::ab}, engine, b.data_ptr<float>()));
    detail::execute_with_own_scratchpad(p->matmul, p->scratchpad, std::move(args));
    return true;
  } catch (const dnnl::error& e) {
    if (!onednn_linear_failed.exchange(true)) {
      std::fprintf(stderr, "cnclip: warning: oneDNN's float32 product failed (%s); BLIS computes them instead\n",
                   e.what());
    }
    return false;
  }
}

// `activation` (detail::kNoActivation, kGeluErf, ...) applied to the product: by oneDNN's post-op, else
// by LibTorch's op after it.
at::Tensor small_linear(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t activation, bool onednn) {
  const bool has_bias = bias.has_value() && bias->defined();
  if (input.scalar_type() != at::kFloat || weight.scalar_type() != at::kFloat || !input.device().is_cpu() ||
      !weight.device().is_cpu() || weight.dim() != 2 || input.dim() < 1 || input.size(-1) != weight.size(1) ||
      weight.size(1) == 0 || input.requires_grad() || weight.requires_grad() ||
      (has_bias && (bias->scalar_type() != at::kFloat || !bias->device().is_cpu() || bias->dim() != 1 ||
                    bias->size(0) != weight.size(0) || bias->requires_grad()))) {
    return detail::apply_activation(at::linear(input, weight, bias), activation);
  }
  const int64_t k = weight.size(1), n = weight.size(0), m = input.numel() / k;
  if (m > kBlisMaxRows) return detail::apply_activation(at::linear(input, weight, bias), activation);
  const at::Tensor x = input.contiguous();
  at::Tensor y = detail::product_output(x, n);
  if (m == 0 || n == 0) {
    if (has_bias) y.view({m, n}).copy_(bias->expand({m, n}));
    return detail::apply_activation(y, activation);
  }
  if (onednn && onednn_linear(x, weight, has_bias ? &*bias : nullptr, y, m, k, n, activation)) return y;
  // A new tensor every time: BLIS adds into it (beta 1), and an expanded bias can be the bias itself
  // (expand({1, n}) of a contiguous [n] is contiguous, so contiguous() would not copy it).
  if (has_bias) y.view({m, n}).copy_(bias->expand({m, n}));
  float one = 1.0f, beta = has_bias ? 1.0f : 0.0f;
  rntm_t rntm = BLIS_RNTM_INITIALIZER;
  bli_rntm_set_num_threads(std::max(1, at::get_num_threads()), &rntm);
  // y[m, n] (+)= x[m, k] * weight^T: element (i, j) of weight^T is weight[j][i].
  bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &one, const_cast<float*>(x.data_ptr<float>()), k, 1,
               const_cast<float*>(weight.data_ptr<float>()), weight.stride(1), weight.stride(0), &beta,
               y.data_ptr<float>(), n, 1, nullptr, &rntm);
  return detail::apply_activation(y, activation);
}

at::Tensor blis_linear(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return small_linear(input, weight, bias, detail::kNoActivation, false);
}

at::Tensor onednn_linear_op(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            int64_t activation) {
  return small_linear(input, weight, bias, activation, true);
}

// Whether the oneDNN route packs the image tower's weights (the default) or leaves its products to BLIS
// and BLAS as before (CNCLIP_IMAGE_LINEAR=libtorch, for measurement).
bool image_linears_packed() { return detail::route_on_unless_libtorch("CNCLIP_IMAGE_LINEAR"); }

// Whether the oneDNN route packs the text tower's weights too (the default), or leaves them in place for
// oneDNN's in-place products as before (CNCLIP_TEXT_LINEAR=inplace, or =libtorch as the other route
// variables say; for measurement).
bool text_linears_packed() {
  const char* env = std::getenv("CNCLIP_TEXT_LINEAR");
  return !(env && (std::strcmp(env, "inplace") == 0 || std::strcmp(env, "libtorch") == 0));
}

// At the module's load, before any BLIS call.
[[maybe_unused]] const bool kBlisKernelsChosen = (choose_blis_kernels(), true);

TORCH_LIBRARY(cnclip, m) {
  m.def("linear(Tensor input, Tensor weight, Tensor? bias) -> Tensor", &blis_linear);
  m.def("linear_onednn(Tensor input, Tensor weight, Tensor? bias, int activation) -> Tensor", &onednn_linear_op);
}

// Every aten::linear of the graph (and of its nested blocks) becomes cnclip::linear (BLIS's products),
// or with `onednn` cnclip::linear_onednn (oneDNN's), which also computes the GELU or SiLU that alone
// reads the Linear's output, as the product's post-op (one pass less over the MLPs' widest outputs).
void route_linears_to_blis(torch::jit::Block* block, bool onednn) {
  static const auto aten_linear = c10::Symbol::fromQualString("aten::linear");
  static const auto cnclip_linear = c10::Symbol::fromQualString("cnclip::linear");
  static const auto cnclip_linear_onednn = c10::Symbol::fromQualString("cnclip::linear_onednn");
  for (torch::jit::Node* node : detail::nodes_of_kind(block, aten_linear, 3)) {
    if (onednn) {
      detail::replace_with_fused_call(node, cnclip_linear_onednn);
    } else {
      detail::replace_uses_with_call(node, cnclip_linear, {node->input(0), node->input(1), node->input(2)});
      node->destroy();
    }
  }
}

// Below this length an embedding carries no direction (a model that lost its weights returns zeros).
constexpr double kMinNorm = 1e-6;

}  // namespace

// The towers of one Model (model_module.h); the bundle's manifest is already checked, the tokenizer
// stays in the core.
class TorchModel final : public detail::ModelBackend {
 public:
  struct Impl;
  explicit TorchModel(std::unique_ptr<Impl> impl);
  ~TorchModel() override;
  static std::unique_ptr<detail::ModelBackend> open(const BundleManifest& manifest, const ModelOptions& options);

  void load_image_tower() override;
  void load_text_tower() override;
  bool image_tower_loaded() const override;
  bool text_tower_loaded() const override;
  bool on_cpu() const override;
  std::vector<float> encode_images(const float* pixels, int batch, RowErrors* row_errors) override;
  std::vector<float> encode_token_ids(const int64_t* ids, int batch, int length, RowErrors* row_errors) override;

 private:
  std::unique_ptr<Impl> impl_;
};

struct TorchModel::Impl {
  BundleManifest manifest;
  torch::Device device{torch::kCPU};
  bool many_calls = false;
  std::unique_ptr<torch::jit::Module> image, text;

  std::unique_ptr<torch::jit::Module> load(const std::string& file) {
    check_bundle_file(manifest, file);
    const std::string path = manifest.path_of(file);
    if (manifest.precision == "int8") {
      limit_onednn_primitive_cache();
      // Dynamic int8 Linear kernels come from the quantized engine chosen before loading.
      const auto engines = at::globalContext().supportedQEngines();
      for (auto engine : {at::QEngine::ONEDNN, at::QEngine::FBGEMM, at::QEngine::QNNPACK}) {
        if (std::find(engines.begin(), engines.end(), engine) != engines.end()) {
          at::globalContext().setQEngine(engine);
          break;
        }
      }
    }
    try {
      auto module = std::make_unique<torch::jit::Module>(torch::jit::load(path, device));
      module->eval();
      if (manifest.precision == "int8" && device.is_cpu() && detail::int8_linears_on_onednn()) {
        try {
          module = std::make_unique<torch::jit::Module>(detail::route_int8_linears_to_onednn(*module));
        } catch (const std::exception&) {
          // A graph the route cannot freeze or rewrite runs as loaded, on LibTorch's kernel.
        }
      }
      // The top graphs only: frozen towers (every fp32 bundle, int8 ones on their oneDNN route) have all
      // their operators there; an int8 tower left unfrozen keeps LibTorch's threading in its submodules.
      if (device.is_cpu() && detail::small_ops_on_one_thread()) {
        try {
          for (torch::jit::Block* block : detail::method_blocks(*module)) detail::route_small_ops_to_one_thread(block);
        } catch (const std::exception&) {
          // A graph the rewrite cannot take runs as loaded (the rewritten nodes compute the same).
        }
      }
      // Both towers' attention products (batched_matmul.h).
      if (device.is_cpu() && detail::batched_matmuls_on_onednn()) {
        for (torch::jit::Block* block : detail::method_blocks(*module)) detail::route_batched_matmuls_to_onednn(block);
      }
      if (manifest.precision == "fp32" && device.is_cpu()) {
        switch (linear_route()) {
          case LinearRoute::kXnnpack: prepack_linears(*module); break;
          case LinearRoute::kOneDnn:
          case LinearRoute::kBlis:
            // Both towers' products on oneDNN's brgemm, on weights packed in one layout (linear_packed.h):
            // on weights in place, which of oneDNN's kernels computes a row, and so the row's last bits,
            // depends on how many rows a call has, and an image's embedding should not depend on the
            // batch it was encoded in (an index run's batches against `embed-image --shard`'s,
            // tests/shard_test.cpp), nor a text's. The text tower's were left in place before, on a
            // measurement that packing its 340 MB would cost a one-shot query more than it saves; with
            // cnclip's malloc settings (runtime.h) a one-shot fp32 embed-text took 0.88-1.30 s packed
            // against 0.79-1.63 in place (interleaved), and a warm 15-token query 12.3-13.6 ms against
            // 14.2-14.8. Whatever oneDNN does not take goes to oneDNN in place (text) or BLIS (image) up
            // to kBlisMaxRows and OpenBLAS above, as before: there an image's last bits may depend on its
            // batch (OpenBLAS's AVX2 kernels forced on an AVX-512 CPU differed by ~1e-7;
            // tests/shard_test.cpp allows for it).
            if (linear_route() == LinearRoute::kOneDnn &&
                (file == "image_encoder.pt" ? image_linears_packed() : text_linears_packed())) {
              try {
                for (torch::jit::Block* block : detail::method_blocks(*module)) {
                  detail::route_linears_to_packed_onednn(block);
                }
              } catch (const std::exception& e) {
                // The Linears not packed yet stay where they are (each node computes what it did).
                std::fprintf(stderr, "cnclip: warning: cannot pack the %s tower's weights for oneDNN (%s)\n",
                             file == "image_encoder.pt" ? "image" : "text", first_line(e.what()).c_str());
              }
            }
            for (torch::jit::Block* block : detail::method_blocks(*module)) {
              route_linears_to_blis(block, linear_route() == LinearRoute::kOneDnn && file == "text_encoder.pt");
            }
            break;
          case LinearRoute::kBlas: break;
        }
      }
      return module;
    } catch (const c10::Error& e) {
      throw Exception(ErrorCode::kCorrupt,
                      path + ": corrupt model bundle file (cannot load TorchScript: " + first_line(e.msg()) + ")");
    }
  }

  // Every Linear with constant weights becomes XNNPACK's prepacked linear (weights packed once, here);
  // XNNPACK picks its kernels from the CPU at run time (AVX-512, AVX2/FMA, AVX, SSE). Same float32
  // arithmetic in another order: embeddings within 3e-7 of BLAS's. Only asked for
  // (CNCLIP_FP32_LINEAR=xnnpack): a failure (a LibTorch built without XNNPACK) is an error.
  void prepack_linears(torch::jit::Module& module) {
    try {
      using torch::jit::MobileOptimizerType;
      // Only the prepacking: the other mobile passes concern convolutions, dropout and ReLU.
      torch::jit::Module packed = torch::jit::optimizeForMobile(
          module,
          {MobileOptimizerType::CONV_BN_FUSION, MobileOptimizerType::REMOVE_DROPOUT, MobileOptimizerType::FUSE_ADD_RELU,
           MobileOptimizerType::HOIST_CONV_PACKED_PARAMS, MobileOptimizerType::CONV_1D_TO_2D});
      module = std::move(packed);
    } catch (const c10::Error& e) {
      throw Exception(ErrorCode::kInternal, manifest.dir +
                                                ": CNCLIP_FP32_LINEAR=xnnpack: cannot prepack the Linear "
                                                "layers for XNNPACK (" +
                                                first_line(e.msg()) + ")");
    }
  }

  std::vector<float> run(torch::jit::Module& module, torch::Tensor input, int batch, RowErrors* row_errors) {
    // NoGradGuard, not InferenceMode: with InferenceMode the same frozen ViT-B-16 ran ~11% slower
    // here (LibTorch 1.13, measured with cnclip-bench against Python's torch.no_grad()).
    torch::NoGradGuard no_grad;
    torch::Tensor out;
    try {
      out = module.forward({input.to(device)}).toTensor().to(torch::kCPU, torch::kFloat).contiguous();
    } catch (const c10::Error& e) {
      throw Exception(ErrorCode::kInternal, manifest.dir + ": model failed: " + first_line(e.msg()));
    } catch (const std::exception& e) {  // what the interpreter makes of other errors of an op
      throw Exception(ErrorCode::kInternal, manifest.dir + ": model failed: " + first_line(e.what()));
    }
    if (out.dim() != 2 || out.size(0) != batch || out.size(1) != manifest.embedding_dim) {
      throw Exception(ErrorCode::kMismatch, manifest.dir + ": encoder returned shape " + c10::str(out.sizes()) +
                                                ", expected [" + std::to_string(batch) + ", " +
                                                std::to_string(manifest.embedding_dim) + "]");
    }
    const int dim = manifest.embedding_dim;
    std::vector<float> values(out.data_ptr<float>(), out.data_ptr<float>() + out.numel());
    if (row_errors) row_errors->assign(static_cast<size_t>(batch), std::nullopt);
    for (int b = 0; b < batch; ++b) {
      float* row = values.data() + static_cast<size_t>(b) * dim;
      if (!manifest.normalized) {
        // Raw features: normalized here, unless they cannot be (checked below).
        double norm = 0;
        for (int d = 0; d < dim; ++d) norm += double(row[d]) * row[d];
        norm = std::sqrt(norm);
        if (std::isfinite(norm) && norm >= kMinNorm) {
          for (int d = 0; d < dim; ++d) row[d] = static_cast<float>(row[d] / norm);
        }
      }
      auto problem = embedding_problem(row, dim, true);
      if (!problem) continue;
      const std::string why = "the model returned an unusable embedding (" + *problem + "); the bundle " +
                              manifest.dir + " may be damaged ('cnclip model-info --verify' checks it)";
      if (!row_errors) {
        throw Exception(ErrorCode::kCorrupt,
                        "input " + std::to_string(b + 1) + " of " + std::to_string(batch) + ": " + why);
      }
      (*row_errors)[static_cast<size_t>(b)] = Error{ErrorCode::kCorrupt, why};
      std::fill(row, row + dim, 0.0f);
    }
    return values;
  }
};

TorchModel::TorchModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TorchModel::~TorchModel() {
  impl_.reset();
  detail::release_unused_int8_weights();
}

std::unique_ptr<detail::ModelBackend> TorchModel::open(const BundleManifest& manifest, const ModelOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->manifest = manifest;
  try {
    impl->device = torch::Device(options.device);
  } catch (const c10::Error&) {
    throw Exception(ErrorCode::kInvalidArgument, "unknown device '" + options.device + "' (use cpu or cuda)");
  }
  if (impl->device.is_cuda() && !torch::cuda::is_available()) {
    throw Exception(ErrorCode::kInvalidArgument,
                    "--device " + options.device + ": CUDA is not available (no GPU, or LibTorch built without CUDA)");
  }
  if (options.threads != 0 || at::get_num_threads() == 1) set_compute_threads(options.threads);
  torch::jit::setGraphExecutorOptimize(options.optimize_for_many_calls);
  impl->many_calls = options.optimize_for_many_calls;
  return std::make_unique<TorchModel>(std::move(impl));
}

std::unique_ptr<detail::ModelBackend> open_torch_model(const BundleManifest& manifest, const ModelOptions& options) {
  return TorchModel::open(manifest, options);
}

void TorchModel::load_image_tower() {
  if (!impl_->image) impl_->image = impl_->load("image_encoder.pt");
}
void TorchModel::load_text_tower() {
  if (!impl_->text) impl_->text = impl_->load("text_encoder.pt");
}
bool TorchModel::image_tower_loaded() const { return impl_->image != nullptr; }
bool TorchModel::text_tower_loaded() const { return impl_->text != nullptr; }
bool TorchModel::on_cpu() const { return impl_->device.is_cpu(); }

std::vector<float> TorchModel::encode_images(const float* pixels, int batch, RowErrors* row_errors) {
  if (row_errors) row_errors->clear();
  if (batch == 0) return {};
  load_image_tower();
  const int r = impl_->manifest.image.size;
  auto input = torch::from_blob(const_cast<float*>(pixels), {batch, 3, r, r}, torch::kFloat);
  return impl_->run(*impl_->image, input, batch, row_errors);
}

std::vector<float> TorchModel::encode_token_ids(const int64_t* ids, int batch, int length, RowErrors* row_errors) {
  if (row_errors) row_errors->clear();
  if (batch == 0) return {};
  load_text_tower();
  int used = 1;
  for (int b = 0; b < batch; ++b) {
    for (int l = length - 1; l >= used; --l) {
      if (ids[static_cast<size_t>(b) * length + l] != 0) {
        used = l + 1;
        break;
      }
    }
  }
  auto full = torch::from_blob(const_cast<int64_t*>(ids), {batch, length}, torch::kLong);
  return impl_->run(*impl_->text, full.narrow(1, 0, used).contiguous(), batch, row_errors);
}

void set_compute_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
}

int compute_threads() { return at::get_num_threads(); }

std::string compute_backend_description() {
  std::string blas = "unknown BLAS";
  // libblas.so.3 is whatever Debian's alternatives point at; name the library actually loaded.
  if (void* h = dlopen("libblas.so.3", RTLD_NOW | RTLD_NOLOAD)) {
    Dl_info info{};
    void* sym = dlsym(h, "sgemm_");
    if (sym && dladdr(sym, &info) && info.dli_fname) {
      std::string f = info.dli_fname;
      char real[4096];
      if (realpath(f.c_str(), real)) f = real;
      blas = f.find("openblas") != std::string::npos ? "OpenBLAS (" + f + ")"
             : f.find("blis") != std::string::npos   ? "BLIS (" + f + ")"
                                                     : "reference BLAS (" + f + ")";
      // OpenBLAS picks its kernels from the CPU, unless OPENBLAS_CORETYPE forces others: name them.
      using CoreName = char* (*)();
      if (auto core = reinterpret_cast<CoreName>(dlsym(h, "openblas_get_corename"))) {
        blas.insert(blas.size() - 1, std::string(", ") + core() + " kernels");
      }
    }
    dlclose(h);
  }
  // BLIS's part, with its kernels named: bli_init() first (with BLIS_ARCH_TYPE set, the query checks
  // them, and aborts uninitialized).
  auto blis_part = [] {
    bli_init();
    return std::string("BLIS ") + bli_info_get_version_str() + " (" + bli_arch_string(bli_arch_query_id()) +
           " kernels)";
  };
  std::string linear;
  switch (linear_route()) {
    case LinearRoute::kBlis: linear = blis_part(); break;
    case LinearRoute::kOneDnn: {
      const std::string packed = image_linears_packed() && text_linears_packed() ? "the image and text towers'"
                                 : image_linears_packed()                        ? "the image tower's"
                                 : text_linears_packed()                         ? "the text tower's"
                                                                                 : "";
      linear = "oneDNN " + detail::onednn_version() + " (the text tower's" +
               (text_linears_packed() ? " not packed" : "") + ", up to " + std::to_string(kBlisMaxRows) + " rows" +
               (onednn_linear_failed ? "; failed once, BLIS since" : "") + ")" +
               (packed.empty() ? ""
                               : ", oneDNN " + detail::onednn_version() + " on weights packed at load (" + packed +
                                     ", where it runs brgemm" +
                                     (detail::packed_products_failed() ? "; failed once, LibTorch since" : "") + ")") +
               ", " + blis_part() + " (the image tower's, up to " + std::to_string(kBlisMaxRows) + " rows), BLAS above";
      break;
    }
    case LinearRoute::kBlas: linear = "BLAS"; break;
    case LinearRoute::kXnnpack: linear = "XNNPACK"; break;
  }
  return std::string("LibTorch ") + TORCH_VERSION + ", " + blas + ", float32 Linear layers: " + linear +
         ", int8 Linear layers: " + detail::int8_linear_description() + ", " + std::to_string(at::get_num_threads()) +
         " intra-op threads";
}

double measure_sgemm_gflops(int n, int repeats) {
  torch::InferenceMode guard;
  auto a = torch::randn({n, n}), b = torch::randn({n, n});
  auto c = torch::mm(a, b);  // warm-up
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    c = torch::mm(a, b);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / s / 1e9);
  }
  return best;
}

}  // namespace cnclip
