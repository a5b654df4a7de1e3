#include "linear_packed.h"

#include "graph_rewrite.h"
#include "onednn_util.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/custom_class.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace cnclip::detail {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// The row count at which oneDNN chooses the packed layout (4 ViT-B-16 images have 788 rows, 4 ViT-L-14
// ones 1,028): every later call, of any row count, takes the same layout.
constexpr int64_t kLayoutRows = 1024;

// Whether oneDNN's primitive is one of its brgemm kernels ("brg:avx512_core"), the kernels whose rows
// do not depend on the call's row count (linear_packed.h).
bool is_brgemm(const dnnl::primitive_desc_base& pd) { return std::string(pd.impl_info_str()).rfind("brg", 0) == 0; }

// Copies `from` into `to` (layouts oneDNN converts between) with scratch memory of the calling
// thread's own (execute_with_own_scratchpad: towers load and run on several threads at once).
void reorder_with_own_scratchpad(const dnnl::memory& from, const dnnl::memory& to) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const dnnl::reorder::primitive_desc pd(from, to, attr);
  execute_with_own_scratchpad(dnnl::reorder(pd), pd.scratchpad_desc(), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

// Set once a packed product has failed at run time (LibTorch computes that layer from then on): the
// backend description says so.
std::atomic<bool> any_failed{false};

// One Linear's weights in oneDNN's packed layout, and the primitives made for them.
struct PackedLinearWeights : torch::CustomClassHolder {
  int64_t k = 0, n = 0;
  dnnl::memory::desc layout;
  at::Tensor storage;    // whose memory holds the packed copy (the bundle's weights, moved over)
  dnnl::memory weights;  // the packed copy, in `layout`

  struct Primitive {
    dnnl::matmul matmul;
    dnnl::memory::desc scratchpad;
  };
  // By (rows, threads, activation, bias): oneDNN splits the work by the thread count it was built for.
  // Image batches of every size add one each (~0.1 ms to build).
  PrimitiveCache<std::tuple<int64_t, int, int64_t, bool>, Primitive> primitives{64};

  // Set when oneDNN could not build or run a product on these weights (a row count or thread count it
  // has no brgemm kernel for, in this layout): LibTorch computes them from then on, on the weights
  // unpacked again.
  std::atomic<bool> failed{false};
  std::mutex plain_mu;
  at::Tensor plain;  // [n, k], made when first needed

  // Throws dnnl::error where oneDNN has no brgemm kernel for it on the packed weights.
  std::shared_ptr<const Primitive> primitive_for(int64_t rows, int threads, int64_t activation, bool bias) {
    return primitives.get(std::make_tuple(rows, threads, activation, bias),
                          [&] { return make(rows, activation, bias); });
  }

  std::shared_ptr<const Primitive> make(int64_t rows, int64_t activation, bool bias) const {
    dnnl::primitive_attr attr;
    dnnl::post_ops ops;
    append_activation(ops, activation);
    attr.set_post_ops(ops);
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
    const dnnl::memory::desc src({rows, k}, dt::f32, tag::ab), dst({rows, n}, dt::f32, tag::ab);
    const auto desc = bias ? dnnl::matmul::desc(src, layout, dnnl::memory::desc({1, n}, dt::f32, tag::ab), dst)
                           : dnnl::matmul::desc(src, layout, dst);
    const dnnl::matmul::primitive_desc pd(desc, attr, onednn_engine());
    if (!is_brgemm(pd) || pd.weights_desc() != layout) {
      throw dnnl::error(dnnl_unimplemented,
                        ("no brgemm kernel on the packed weights (" + std::string(pd.impl_info_str()) + ")").c_str());
    }
    return std::make_shared<const Primitive>(Primitive{dnnl::matmul(pd), pd.scratchpad_desc()});
  }

  // The weights as aten::linear takes them ([n, k]), unpacked once.
  at::Tensor plain_weights() {
    std::lock_guard<std::mutex> lock(plain_mu);
    if (!plain.defined()) {
      at::Tensor kn = at::empty({k, n}, at::kFloat);
      reorder_with_own_scratchpad(weights,
                                  dnnl::memory({{k, n}, dt::f32, tag::ab}, onednn_engine(), kn.data_ptr<float>()));
      plain = kn.t();
    }
    return plain;
  }
};

// `weight` ([n, k] float32, any strides) packed for oneDNN's brgemm, or nullptr where oneDNN would not
// run brgemm on it. The copy is made in `scratch` (grown as needed) when that is given and the copy
// fits over the weight (move_over_weights then puts it there), else in a buffer of its own.
c10::intrusive_ptr<PackedLinearWeights> pack(const at::Tensor& weight, at::Tensor* scratch) {
  auto packed = c10::make_intrusive<PackedLinearWeights>();
  packed->n = weight.size(0);
  packed->k = weight.size(1);
  const int64_t k = packed->k, n = packed->n;
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(dnnl::memory::desc({kLayoutRows, k}, dt::f32, tag::ab),
                                                           dnnl::memory::desc({k, n}, dt::f32, tag::any),
                                                           dnnl::memory::desc({kLayoutRows, n}, dt::f32, tag::ab)),
                                        onednn_engine());
  if (!is_brgemm(pd)) return {};
  packed->layout = pd.weights_desc();
  const auto bytes = static_cast<int64_t>(packed->layout.get_size());
  // The [n, k] weight is oneDNN's [k, n] with strides (stride(1), stride(0)): "ba" for plain rows, "ab"
  // for the transposed storage the exporter writes.
  const at::Tensor w = weight.stride(0) == 1 || weight.stride(1) == 1 ? weight : weight.contiguous();
  const dnnl::memory::desc given({k, n}, dt::f32, dnnl::memory::dims{w.stride(1), w.stride(0)});
  dnnl::memory source(given, onednn_engine(), const_cast<float*>(w.data_ptr<float>()));
  const int64_t floats = (bytes + 3) / 4;
  const bool fits = static_cast<int64_t>(weight.storage().nbytes()) - weight.storage_offset() * 4 >= bytes;
  at::Tensor target;
  if (scratch && fits) {
    if (!scratch->defined() || scratch->numel() < floats) *scratch = at::empty({floats}, at::kFloat);
    target = *scratch;
  } else {
    target = at::empty({floats}, at::kFloat);
  }
  reorder_with_own_scratchpad(source, dnnl::memory(packed->layout, onednn_engine(), target.data_ptr<float>()));
  packed->storage = target;
  packed->weights = dnnl::memory(packed->layout, onednn_engine(), target.data_ptr<float>());
  return packed;
}

// Once nothing in the graph reads `given` any more (its constant is gone), moves the copy pack() made
// in `scratch` over the weights' memory (`weight` is `given`, or the [n, k] view of a product's [k, n]
// operand): the tower then holds one copy of its weights. Where something else still holds the
// tensor or its memory (another graph's constant, tied weights), the copy keeps `scratch` for its own
// and the weights are left as they are.
void move_over_weights(PackedLinearWeights& packed, at::Tensor& scratch, const at::Tensor& given,
                       const at::Tensor& weight) {
  if (!packed.storage.is_same(scratch)) return;
  const bool same = weight.is_same(given);
  // References left: `given` (and `weight`, the same tensor, for a Linear); the memory is `given`'s
  // (and its [n, k] view's, for a product).
  const bool unshared = given.use_count() == (same ? 2 : 1) && given.storage().use_count() == (same ? 1 : 2);
  if (!unshared) {
    scratch = at::Tensor();  // the copy's now; the next pack() makes another
    return;
  }
  auto* start = static_cast<char*>(weight.storage().data()) + weight.storage_offset() * 4;
  std::memcpy(start, scratch.data_ptr(), packed.layout.get_size());
  packed.storage = weight;
  packed.weights = dnnl::memory(packed.layout, onednn_engine(), start);
}

// cnclip::linear_packed: aten::linear(input, weights, bias), then `activation`.
at::Tensor packed_linear(const at::Tensor& input, const c10::intrusive_ptr<PackedLinearWeights>& w,
                         const c10::optional<at::Tensor>& bias, int64_t activation) {
  const bool has_bias = bias.has_value() && bias->defined();
  const auto libtorch = [&] { return apply_activation(at::linear(input, w->plain_weights(), bias), activation); };
  if (w->failed || input.scalar_type() != at::kFloat || !input.device().is_cpu() || input.dim() < 1 ||
      input.size(-1) != w->k || input.requires_grad() ||
      (has_bias && (bias->scalar_type() != at::kFloat || !bias->device().is_cpu() || bias->dim() != 1 ||
                    bias->size(0) != w->n || bias->requires_grad()))) {
    return libtorch();
  }
  const at::Tensor x = input.contiguous();
  const int64_t rows = x.numel() / w->k;
  at::Tensor y = product_output(x, w->n);
  if (rows == 0) return y;
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  try {
    const auto p = w->primitive_for(rows, std::max(1, at::get_num_threads()), activation, has_bias);
    const auto& engine = onednn_engine();
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, dnnl::memory({{rows, w->k}, dt::f32, tag::ab}, engine, const_cast<float*>(x.data_ptr<float>()))},
        {DNNL_ARG_WEIGHTS, w->weights},
        {DNNL_ARG_DST, dnnl::memory({{rows, w->n}, dt::f32, tag::ab}, engine, y.data_ptr<float>())}};
    if (has_bias) {
      args.emplace(DNNL_ARG_BIAS,
                   dnnl::memory({{1, w->n}, dt::f32, tag::ab}, engine, const_cast<float*>(b.data_ptr<float>())));
    }
    execute_with_own_scratchpad(p->matmul, p->scratchpad, std::move(args));
    return y;
  } catch (const dnnl::error& e) {
    w->failed = true;
    if (!any_failed.exchange(true)) {  // said once
      std::fprintf(stderr,
                   "cnclip: warning: oneDNN's float32 product on packed weights failed (%s); LibTorch computes "
                   "it instead\n",
                   e.what());
    }
    return libtorch();
  }
}

TORCH_LIBRARY_FRAGMENT(cnclip, m) {
  m.class_<PackedLinearWeights>("PackedLinearWeights");
  m.def("linear_packed", &packed_linear);
}

}  // namespace

bool packed_products_failed() { return any_failed; }

bool route_linears_to_packed_onednn(torch::jit::Block* block) {
  static const auto aten_linear = c10::Symbol::fromQualString("aten::linear");
  static const auto aten_matmul = c10::Symbol::fromQualString("aten::matmul");
  static const auto cnclip_matmul = c10::Symbol::fromQualString("cnclip::matmul");
  static const auto ours = c10::Symbol::fromQualString("cnclip::linear_packed");
  std::vector<torch::jit::Node*> nodes = nodes_of_kind(block, aten_linear, 3);
  // Products by a constant matrix (ViT's final projection, x @ proj) too: on BLAS, an image's row came
  // out with other last bits alone than beside others.
  for (const auto kind : {aten_matmul, cnclip_matmul}) {
    const auto more = nodes_of_kind(block, kind, 2);
    nodes.insert(nodes.end(), more.begin(), more.end());
  }
  bool routed = false;
  at::Tensor scratch;  // where each packed copy is made before it goes over its weights
  for (torch::jit::Node* node : nodes) {
    const bool linear = node->kind() == aten_linear;
    torch::jit::Value* weight_value = node->input(1);
    if (weight_value->node()->kind() != c10::prim::Constant) continue;
    at::Tensor given;
    {
      const auto constant = torch::jit::toIValue(weight_value);
      if (!constant || !constant->isTensor()) continue;
      given = constant->toTensor();
    }
    if (given.scalar_type() != at::kFloat || given.dim() != 2 || !given.device().is_cpu() || given.requires_grad() ||
        given.numel() == 0) {
      continue;
    }
    // aten::linear's weights are [n, k]; a product's right operand is [k, n].
    const at::Tensor weight = linear ? given : given.t();
    // The activation the call will compute, and whether it adds a bias, for the primitives tried below.
    int64_t activation = kNoActivation;
    if (linear) fusable_activation(node, &activation);
    const bool bias = linear && !node->input(2)->type()->cast<c10::NoneType>();
    // Made to go over the bundle's weights when this node is all that reads the constant (the rewrite
    // then drops it; move_over_weights checks that nothing else holds them): one copy in the tower.
    auto packed = pack(weight, weight_value->uses().size() == 1 ? &scratch : nullptr);
    if (packed) {
      // A product oneDNN cannot build for one row or for a batch's, here, stays where it was: one
      // that failed later would leave the layer to LibTorch from then on, with other last bits.
      try {
        const int threads = std::max(1, at::get_num_threads());
        packed->primitive_for(1, threads, activation, bias);
        packed->primitive_for(kLayoutRows, threads, activation, bias);
      } catch (const dnnl::error&) {
        packed.reset();
      }
    }
    if (!packed) {
      if (!routed) return false;  // no brgemm here: the graph as it was
      continue;                   // this product's shape only: it stays where it was
    }
    PackedLinearWeights& made = *packed;
    torch::jit::Graph* graph = node->owningGraph();
    torch::jit::Value* packed_value = nullptr;
    {
      torch::jit::WithInsertPoint guard(node);
      packed_value = graph->insertConstant(c10::IValue(std::move(packed)));
    }
    if (linear) {
      replace_with_fused_call(node, ours, packed_value);
    } else {
      torch::jit::Value *none = nullptr, *code = nullptr;
      {
        torch::jit::WithInsertPoint guard(node);
        none = graph->insertConstant(c10::IValue());
        code = graph->insertConstant(kNoActivation);
      }
      replace_uses_with_call(node, ours, {node->input(0), packed_value, none, code});
      node->destroy();
    }
    if (weight_value->uses().empty()) weight_value->node()->destroy();  // frees its value's reference
    move_over_weights(made, scratch, given, weight);
    routed = true;
  }
  return routed;
}

}  // namespace cnclip::detail
