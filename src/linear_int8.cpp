#include "linear_int8.h"

#include "graph_rewrite.h"
#include "onednn_util.h"
#include "small_ops.h"

#include <ATen/Parallel.h>
#include <ATen/native/quantized/PackedParams.h>
#include <ATen/native/quantized/cpu/QuantUtils.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <oneapi/dnnl/dnnl.hpp>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace cnclip::detail {
namespace {

using Packed = LinearPackedParamsBase;

// One int8 weight matrix, the primitives made for it, and its copies in their weight layouts.
//
// Each call's activation scale and zero point reach the primitive as run-time operands of post-ops,
// not as oneDNN's run-time scale and zero-point attributes: with those, oneDNN 2.6 runs its generic
// gemm:jit, which repacks the weights on every call; without them it runs brgemm on weights packed
// once for the CPU's int8 instructions (VNNI here): ViT-B-16's 72 text products at 14 rows, 2
// threads, Zen 4, 9.4 -> 5.0 ms (at an image batch's 788 rows the same, 165 ms).
//   y[i][j] = x_scale * (w_scale[j] * sum_k xq[i][k] * w[k][j]) + (bias[j] - x_scale * w_scale[j] *
//             x_zero_point * colsum[j])
// with xq the uint8 activations and colsum[j] = sum_k w[k][j]: the primitive's constant per-channel
// output scales, then a binary multiply by x_scale and a binary add of the per-call bias row (w_scale[j]
// * colsum[j] computed once).
struct Int8Weights {
  int64_t k = 0, n = 0;
  std::vector<float> scale;  // per output channel
  std::vector<double> bias;  // per output channel, zeros when the Linear has none
  // scale[j] * sum over k of output channel j's weights: a call's zero point moves the bias by
  // x_scale * x_zero_point times this
  std::vector<double> scaled_colsum;
  // Set when oneDNN failed to build or run a product for these weights (an ISA or shape it has no
  // kernel for): LibTorch's kernel computes them from then on.
  std::atomic<bool> failed{false};

  struct Primitive {
    dnnl::matmul matmul;
    dnnl::memory weights;  // in the layout the primitive asked for
    dnnl::memory::desc scratchpad;
  };
  std::mutex mu;
  // By (rows, threads, activation): oneDNN splits the work by the thread count when it builds a primitive. Text
  // queries of every length and image batches of every size each add one (~0.1-0.4 ms to build);
  // past kMaxPrimitives the map starts again. Packed weights are shared by primitives that ask for
  // the same layout.
  std::map<std::tuple<int64_t, int, int64_t>, std::shared_ptr<const Primitive>> primitives;
  std::vector<std::pair<dnnl::memory::desc, dnnl::memory>> packed;
  static constexpr size_t kMaxPrimitives = 64;
};

// The bundle's weights as the route reads them, or nullptr when it cannot take them (LibTorch's
// kernel runs them then): int8 with a zero point of 0 (per-channel symmetric, as the exporter makes
// them, or per tensor).
std::shared_ptr<Int8Weights> prepare(Packed& packed) {
  auto [w, bias] = packed.unpack();
  if (w.scalar_type() != at::kQInt8 || w.dim() != 2 || w.size(0) == 0 || w.size(1) == 0) return nullptr;
  auto prepared = std::make_shared<Int8Weights>();
  prepared->n = w.size(0);
  prepared->k = w.size(1);
  const auto n = static_cast<size_t>(prepared->n);
  if (w.qscheme() == at::kPerChannelAffine || w.qscheme() == at::kPerChannelSymmetric) {
    if (w.q_per_channel_axis() != 0 || w.q_per_channel_zero_points().ne(0).any().item<bool>()) return nullptr;
    const at::Tensor s = w.q_per_channel_scales().to(at::kFloat).contiguous();
    prepared->scale.assign(s.data_ptr<float>(), s.data_ptr<float>() + n);
  } else if (w.qscheme() == at::kPerTensorAffine || w.qscheme() == at::kPerTensorSymmetric) {
    if (w.q_zero_point() != 0) return nullptr;
    prepared->scale.assign(n, static_cast<float>(w.q_scale()));
  } else {
    return nullptr;
  }
  const at::Tensor sums = w.int_repr().sum(1, /*keepdim=*/false, at::kLong).contiguous();
  prepared->scaled_colsum.resize(n);
  for (size_t j = 0; j < n; ++j) {
    prepared->scaled_colsum[j] = prepared->scale[j] * static_cast<double>(sums.data_ptr<int64_t>()[j]);
  }
  prepared->bias.assign(n, 0.0);
  if (bias.has_value() && bias->defined()) {
    if (bias->numel() != prepared->n) return nullptr;
    const at::Tensor b = bias->to(at::kDouble).contiguous();
    prepared->bias.assign(b.data_ptr<double>(), b.data_ptr<double>() + n);
  }
  return prepared;
}

// Prepared weights by packed-parameter object, prepared on first use. The weak reference keeps the
// object's address from being reused while its entry exists; entries of freed objects go on the next
// insertion.
struct Entry {
  c10::weak_intrusive_ptr<Packed> owner;
  std::shared_ptr<Int8Weights> prepared;  // nullptr: LibTorch's kernel
};
std::mutex registry_mu;
std::unordered_map<const Packed*, Entry>& registry() {
  static auto* map = new std::unordered_map<const Packed*, Entry>();  // outlives every module
  return *map;
}

// Entries whose module is gone (registry_mu held).
void erase_expired_entries() {
  auto& map = registry();
  for (auto it = map.begin(); it != map.end();) {
    it = it->second.owner.expired() ? map.erase(it) : std::next(it);
  }
}

std::shared_ptr<Int8Weights> prepared_weights(const c10::intrusive_ptr<Packed>& packed) {
  std::lock_guard<std::mutex> lock(registry_mu);
  auto& map = registry();
  if (auto it = map.find(packed.get()); it != map.end()) return it->second.prepared;
  erase_expired_entries();
  std::shared_ptr<Int8Weights> prepared;
  try {
    prepared = prepare(*packed);
  } catch (const std::exception&) {
    prepared = nullptr;  // LibTorch's kernel, which reports what is wrong with these weights
  }
  map.emplace(packed.get(), Entry{c10::weak_intrusive_ptr<Packed>(packed), prepared});
  return prepared;
}

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// PyTorch's dynamic Linear modules quantize activations to 0..127 (reduce_range): without VNNI, x86
// multiplies uint8 by int8 with vpmaddubsw, whose 16-bit sums of two products saturate past 32767
// (255 * 127 * 2 does, 127 * 127 * 2 does not). With VNNI (vpdpbusd, 32-bit sums) nothing saturates,
// and the eighth bit halves the rounding error: ViT-B-16 (random weights), ten queries, cosine to the
// float32 tower 0.99816-0.99906 with 7 bits, 0.99915-0.99945 with 8 (issue 20 asks for >= 0.999).
bool full_range_is_exact() {
  // oneDNN's own view of the CPU, which ONEDNN_MAX_CPU_ISA may lower below what cpuid says; asked once,
  // on the first int8 product (not when the model module loads).
  static const bool exact = [] {
    using isa = dnnl::cpu_isa;
    switch (dnnl::get_effective_cpu_isa()) {
      case isa::avx2_vnni:
      case isa::avx512_core_vnni:
      case isa::avx512_core_bf16:
      case isa::avx512_core_amx: return true;
      default: return false;
    }
  }();
  return exact;
}

// `packed` gives the weights again when a primitive asks for a layout not packed yet (unpack() copies
// them: keeping that copy cost 86 MB for ViT-B-16's image tower).
std::shared_ptr<const Int8Weights::Primitive> primitive_for(Int8Weights& w, Packed& packed_params, int64_t rows,
                                                            int threads, int64_t activation) {
  std::lock_guard<std::mutex> lock(w.mu);
  if (auto it = w.primitives.find({rows, threads, activation}); it != w.primitives.end()) return it->second;
  if (w.primitives.size() >= Int8Weights::kMaxPrimitives) w.primitives.clear();
  const dnnl::memory::desc src({rows, w.k}, dt::u8, tag::ab), weights({w.k, w.n}, dt::s8, tag::any),
      dst({rows, w.n}, dt::f32, tag::ab);
  dnnl::primitive_attr attr;
  attr.set_output_scales(1 << 1, w.scale);
  dnnl::post_ops ops;
  ops.append_binary(dnnl::algorithm::binary_mul, dnnl::memory::desc({1, 1}, dt::f32, tag::ab));
  ops.append_binary(dnnl::algorithm::binary_add, dnnl::memory::desc({1, w.n}, dt::f32, tag::ab));
  append_activation(ops, activation);
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, weights, dst), attr, onednn_engine());
  dnnl::memory packed;
  for (const auto& [desc, memory] : w.packed) {
    if (desc == pd.weights_desc()) packed = memory;
  }
  if (!packed) {
    // The bundle's [n, k] weights are oneDNN's [k, n] in layout "ba".
    const at::Tensor weight = std::get<0>(packed_params.unpack()).contiguous();
    dnnl::memory plain({{w.k, w.n}, dt::s8, tag::ba}, onednn_engine(), weight.data_ptr());
    packed = dnnl::memory(pd.weights_desc(), onednn_engine());
    dnnl::stream stream(onednn_engine());
    dnnl::reorder(plain, packed).execute(stream, plain, packed);
    stream.wait();
    w.packed.emplace_back(pd.weights_desc(), packed);
  }
  auto made = std::make_shared<const Int8Weights::Primitive>(
      Int8Weights::Primitive{dnnl::matmul(pd), packed, pd.scratchpad_desc()});
  w.primitives.emplace(std::make_tuple(rows, threads, activation), made);
  return made;
}

// The smallest and largest of x[begin, end), or NaNs when one of them is not finite.
using Range = std::pair<float, float>;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

Range scalar_range(const float* x, int64_t begin, int64_t end) {
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  bool finite = true;
  for (int64_t i = begin; i < end; ++i) {
    finite &= std::isfinite(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  return finite ? Range{lo, hi} : Range{kNaN, kNaN};
}

#if defined(__x86_64__)
// Whether the route's own loops take AVX2 (where the CPU has it) or SSE2's and plain code, as on a CPU
// without it (CNCLIP_INT8_ISA=sse2: tests/int8_linear_op_test.py runs both).
bool loops_on_avx2() {
  static const bool avx2 = [] {
    const char* env = std::getenv("CNCLIP_INT8_ISA");
    return __builtin_cpu_supports("avx2") && !(env && std::strcmp(env, "sse2") == 0);
  }();
  return avx2;
}

// AVX2 (x86-64-v3; cnclip is built for the first x86-64): 8 values at a time. A value is finite when
// subtracting it from itself gives 0 (NaN and the infinities give NaN).
__attribute__((target("avx2"))) Range avx2_range(const float* x, int64_t begin, int64_t end) {
  __m256 lo = _mm256_set1_ps(std::numeric_limits<float>::infinity()),
         hi = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 not_finite = _mm256_setzero_ps();
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
    not_finite = _mm256_or_ps(not_finite, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_NEQ_UQ));
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, lo);
  _mm256_store_ps(h, hi);
  Range r = scalar_range(x, i, end);
  if (_mm256_movemask_ps(not_finite) != 0 || r.first != r.first) return {kNaN, kNaN};
  for (int j = 0; j < 8; ++j) r = {std::min(r.first, l[j]), std::max(r.second, h[j])};
  return r;
}
#endif

// The activations' range, for their quantization parameters, in one pass: LibTorch's aminmax
// allocates its results and reads them back (.item), ~5 us of each of a text query's 49 products
// (~0.3 ms of an int8 query). NaNs when a value is not finite (LibTorch's kernel takes such inputs).
Range finite_range(const float* x, int64_t count) {
#if defined(__x86_64__)
  const bool avx2 = loops_on_avx2();
#endif
  std::mutex mu;
  Range range{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  at::parallel_for(0, count, kOneThreadElements, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__)
    const Range part = avx2 ? avx2_range(x, begin, end) : scalar_range(x, begin, end);
#else
    const Range part = scalar_range(x, begin, end);
#endif
    std::lock_guard<std::mutex> lock(mu);
    range = (part.first != part.first || range.first != range.first)
                ? Range{kNaN, kNaN}
                : Range{std::min(range.first, part.first), std::max(range.second, part.second)};
  });
  return range;
}

// q = clamp(round_half_even(x * inv) + zero_point, 0, 255) with inv the reciprocal of the scale, as
// LibTorch's quantize_val computes it. LibTorch 1.13 built
// without FBGEMM quantizes one value at a time through a function call: 10% of an int8 text query's
// time. GCC does not vectorize the plain loop, so on x86 it is SSE2's (every x86-64 CPU), or AVX2's
// where the CPU has it: cvtps2dq rounds half to even in the default rounding mode, and the two packs
// saturate to 0..255.
#if defined(__x86_64__)
// 32 values at a time with AVX2's forms of the same instructions (the same results): its packs work
// within each 128-bit half, so the four 8-value groups come out interleaved by 4 bytes, and a
// permutation puts them back in order.
__attribute__((target("avx2"))) int64_t avx2_quantize(const float* x, uint8_t* q, int64_t i, int64_t end, float inv,
                                                      int32_t zero_point) {
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256i vzp = _mm256_set1_epi32(zero_point), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; i + 32 <= end; i += 32) {
    __m256i r[4];
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vinv)), vzp);
    }
    const __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), _mm256_permutevar8x32_epi32(packed, order));
  }
  return i;
}
#endif

void quantize_to_uint8(const float* x, uint8_t* q, int64_t count, float inv, int32_t zero_point) {
#if defined(__x86_64__)
  const bool avx2 = loops_on_avx2();
#endif
  at::parallel_for(0, count, 1 << 16, [=](int64_t begin, int64_t end) {
    int64_t i = begin;
#if defined(__x86_64__)
    if (avx2) i = avx2_quantize(x, q, i, end, inv, zero_point);
    const __m128 vinv = _mm_set1_ps(inv);
    const __m128i vzp = _mm_set1_epi32(zero_point);
    for (; i + 16 <= end; i += 16) {
      __m128i r[4];
      for (int j = 0; j < 4; ++j) {
        r[j] = _mm_add_epi32(_mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + i + 4 * j), vinv)), vzp);
      }
      const __m128i lo = _mm_packs_epi32(r[0], r[1]), hi = _mm_packs_epi32(r[2], r[3]);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(lo, hi));
    }
#endif
    for (; i < end; ++i) {
      const auto v = static_cast<int32_t>(std::nearbyint(x[i] * inv)) + zero_point;
      q[i] = static_cast<uint8_t>(std::clamp(v, 0, 255));
    }
  });
}

// cnclip::linear_int8: quantized::linear_dynamic's result (then the activation), through oneDNN with
// per-call post-op operands.
at::Tensor onednn_linear_int8(const at::Tensor& input, const c10::intrusive_ptr<Packed>& packed, bool reduce_range,
                              int64_t activation) {
  const auto libtorch = [&] { return apply_activation(packed->apply_dynamic(input, reduce_range), activation); };
  const std::shared_ptr<Int8Weights> w = prepared_weights(packed);
  if (!w || w->failed || input.scalar_type() != at::kFloat || !input.device().is_cpu() || input.dim() < 1 ||
      input.size(-1) != w->k || input.requires_grad()) {
    return libtorch();
  }
  const at::Tensor x = input.contiguous();
  const int64_t rows = x.numel() / w->k;
  at::Tensor y = product_output(x, w->n);
  if (rows == 0) return y;
  // The activations' range and quantization parameters as LibTorch's kernel chooses them (uint8, the
  // range widened to hold 0, the zero point nudged to an integer), but all 8 bits where the products
  // cannot saturate (full_range_is_exact) although PyTorch's dynamic Linear modules ask for 7.
  const auto [lo, hi] = finite_range(x.data_ptr<float>(), x.numel());
  if (!(lo <= hi)) return libtorch();
  const auto q =
      quant_utils::ChooseQuantizationParams(lo, hi, 0, 255, false, false, reduce_range && !full_range_is_exact());
  at::Tensor xq = at::empty(x.sizes(), x.options().dtype(at::kByte));
  quantize_to_uint8(x.data_ptr<float>(), xq.data_ptr<uint8_t>(), x.numel(), 1.0f / static_cast<float>(q.scale),
                    q.zero_point);
  float x_scale = static_cast<float>(q.scale);
  std::vector<float> bias_row(static_cast<size_t>(w->n));
  const double zero_point_shift = q.scale * q.zero_point;
  for (size_t j = 0; j < bias_row.size(); ++j) {
    bias_row[j] = static_cast<float>(w->bias[j] - zero_point_shift * w->scaled_colsum[j]);
  }
  try {
    const auto primitive =
        primitive_for(*w, *packed, rows, at::get_num_threads(), activation);  // this thread's compute threads
    const auto& engine = onednn_engine();
    execute_with_own_scratchpad(primitive->matmul, primitive->scratchpad,
                                {{DNNL_ARG_SRC, dnnl::memory({{rows, w->k}, dt::u8, tag::ab}, engine, xq.data_ptr())},
                                 {DNNL_ARG_WEIGHTS, primitive->weights},
                                 {DNNL_ARG_DST, dnnl::memory({{rows, w->n}, dt::f32, tag::ab}, engine, y.data_ptr())},
                                 {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1,
                                  dnnl::memory({{1, 1}, dt::f32, tag::ab}, engine, &x_scale)},
                                 {DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1,
                                  dnnl::memory({{1, w->n}, dt::f32, tag::ab}, engine, bias_row.data())}});
  } catch (const dnnl::error&) {
    w->failed = true;
    return libtorch();
  }
  return y;
}

TORCH_LIBRARY_FRAGMENT(cnclip, m) { m.def("linear_int8", &onednn_linear_int8); }

void route_block(torch::jit::Block* block) {
  static const auto dynamic = c10::Symbol::fromQualString("quantized::linear_dynamic");
  static const auto ours = c10::Symbol::fromQualString("cnclip::linear_int8");
  for (torch::jit::Node* node : nodes_of_kind(block, dynamic, 3)) replace_with_fused_call(node, ours);
}

// Every prim::CallMethod of `block` (and of the blocks within) replaced by the method's body, until
// none is left.
void inline_method_calls(torch::jit::Block* block) {
  static const auto call_method = c10::Symbol::fromQualString("prim::CallMethod");
  for (bool again = true; again;) {
    again = false;
    for (auto it = block->nodes().begin(); it != block->nodes().end();) {
      torch::jit::Node* node = *it++;
      for (torch::jit::Block* inner : node->blocks()) inline_method_calls(inner);
      if (node->kind() != call_method) continue;
      auto type = node->input(0)->type()->cast<c10::ClassType>();
      torch::jit::Function* method = type ? type->findMethod(node->s(c10::Symbol::attr("name"))) : nullptr;
      if (!method || !method->isGraphFunction()) continue;
      torch::jit::inlineCallTo(node, &torch::jit::toGraphFunction(*method), /*use_graph=*/true);
      again = true;
    }
  }
}

}  // namespace

void release_unused_int8_weights() {
  std::lock_guard<std::mutex> lock(registry_mu);
  erase_expired_entries();
}

bool int8_linears_on_onednn() { return route_on_unless_libtorch("CNCLIP_INT8_LINEAR"); }

torch::jit::Module route_int8_linears_to_onednn(const torch::jit::Module& module) {
  // Frozen first: one inlined graph, so an activation in the parent module's method is seen after the
  // Linear of a submodule's. Inlined by hand before: torch::jit::freeze inlines submodules' methods
  // only while the graph executor optimizes (one-shot commands turn that off, model.h), and then
  // leaves calls to methods it has removed.
  for (torch::jit::Block* block : method_blocks(module)) inline_method_calls(block);
  torch::jit::Module frozen = torch::jit::freeze(module);
  for (torch::jit::Block* block : method_blocks(frozen)) route_block(block);
  return frozen;
}

std::string int8_linear_description() {
  if (!int8_linears_on_onednn()) return "LibTorch's quantized kernel";
  return "oneDNN " + onednn_version();
}

}  // namespace cnclip::detail
