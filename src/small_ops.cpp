#include "small_ops.h"

#include "graph_rewrite.h"
#include "onednn_util.h"

#include <ATen/Parallel.h>
#include <ATen/WrapDimUtils.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace cnclip::detail {

OneThreadScope::OneThreadScope(int64_t elements) {
  // LibTorch's thread count is OpenMP's for the calling thread (at::get_num_threads is
  // omp_get_max_threads), which oneDNN reads too; omp_set_num_threads changes only this thread's.
  // at::get_num_threads, not OpenMP's own call: LibTorch gives a thread its count on the thread's first
  // parallel operation, which must not be the one in this scope (it would set the count again inside,
  // and the scope would then restore OpenMP's default instead of the count asked for).
  if (elements >= kOneThreadElements || omp_in_parallel() || !small_ops_on_one_thread()) return;
  const int threads = at::get_num_threads();
  if (threads <= 1) return;
  omp_set_num_threads(1);
  restore_ = threads;
}

OneThreadScope::~OneThreadScope() {
  if (restore_ > 0) omp_set_num_threads(restore_);
}

namespace {

at::Tensor layer_norm_op(const at::Tensor& input, c10::IntArrayRef normalized_shape,
                         const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
                         bool cudnn_enable) {
  OneThreadScope scope(input.numel());
  return at::layer_norm(input, normalized_shape, weight, bias, eps, cudnn_enable);
}

// oneDNN's softmax over the last dimension of a float32 tensor, or nullopt where it does not take the
// input (see large_softmax_on_onednn).
struct SoftmaxPrimitive {
  dnnl::softmax_v2_forward softmax;
  dnnl::memory::desc data, scratchpad;
};
// Set when oneDNN failed to run a softmax: LibTorch computes them from then on (said once on stderr),
// rather than one call here and there with other last bits.
std::atomic<bool> softmax_failed{false};

c10::optional<at::Tensor> onednn_softmax(const at::Tensor& input, int64_t dim, c10::optional<at::ScalarType> dtype) {
  if (input.scalar_type() != at::kFloat || (dtype && *dtype != at::kFloat) || !input.device().is_cpu() ||
      input.requires_grad() || input.dim() < 2 || input.dim() > 6 || input.size(0) == 0 ||
      c10::maybe_wrap_dim(dim, input.dim()) != input.dim() - 1 || input.numel() / input.size(0) < kOneThreadElements ||
      softmax_failed || !large_softmax_on_onednn()) {
    return c10::nullopt;
  }
  const at::Tensor x = input.contiguous();
  using Key = std::pair<std::vector<int64_t>, int>;
  static auto* cache = new PrimitiveCache<Key, SoftmaxPrimitive>(64);  // outlives every module
  std::shared_ptr<const SoftmaxPrimitive> p;
  try {
    p = cache->get(Key{x.sizes().vec(), std::max(1, at::get_num_threads())}, [&] {
      const dnnl::memory::desc data(x.sizes().vec(), dnnl::memory::data_type::f32,
                                    at::detail::defaultStrides(x.sizes()));
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
      const dnnl::softmax_v2_forward::primitive_desc pd(
          dnnl::softmax_v2_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate, data,
                                         data, static_cast<int>(x.dim() - 1)),
          attr, onednn_engine());
      std::shared_ptr<const SoftmaxPrimitive> made;
      if (std::string(pd.impl_info_str()).rfind("ref", 0) != 0) {  // LibTorch's is faster than the reference
        made = std::make_shared<const SoftmaxPrimitive>(
            SoftmaxPrimitive{dnnl::softmax_v2_forward(pd), data, pd.scratchpad_desc()});
      }
      return made;
    });
  } catch (const dnnl::error&) {
    return c10::nullopt;  // no oneDNN kernel for it: LibTorch's
  }
  if (!p) return c10::nullopt;  // only oneDNN's reference kernel for it: LibTorch's
  at::Tensor y = at::empty(x.sizes(), x.options());
  try {
    const auto& engine = onednn_engine();
    execute_with_own_scratchpad(p->softmax, p->scratchpad,
                                {{DNNL_ARG_SRC, dnnl::memory(p->data, engine, const_cast<float*>(x.data_ptr<float>()))},
                                 {DNNL_ARG_DST, dnnl::memory(p->data, engine, y.data_ptr<float>())}});
  } catch (const dnnl::error& e) {
    if (!softmax_failed.exchange(true)) {
      std::fprintf(stderr, "cnclip: warning: oneDNN's softmax failed (%s); LibTorch computes it instead\n", e.what());
    }
    return c10::nullopt;
  }
  return y;
}

at::Tensor softmax_op(const at::Tensor& input, int64_t dim, c10::optional<at::ScalarType> dtype) {
  if (auto y = onednn_softmax(input, dim, dtype)) return *y;
  OneThreadScope scope(input.numel());
  return at::softmax(input, dim, dtype);
}

TORCH_LIBRARY_FRAGMENT(cnclip, m) {
  m.def(
      "layer_norm(Tensor input, int[] normalized_shape, Tensor? weight, Tensor? bias, float eps, bool cudnn_enable) "
      "-> Tensor",
      &layer_norm_op);
  m.def("softmax(Tensor self, int dim, ScalarType? dtype) -> Tensor", &softmax_op);
}

}  // namespace

bool small_ops_on_one_thread() { return route_on_unless_libtorch("CNCLIP_SMALL_OPS"); }

bool large_softmax_on_onednn() { return route_on_unless_libtorch("CNCLIP_SOFTMAX"); }

void route_small_ops_to_one_thread(torch::jit::Block* block) {
  static const auto layer_norm = c10::Symbol::fromQualString("aten::layer_norm");
  static const auto softmax = c10::Symbol::fromQualString("aten::softmax");
  static const auto our_layer_norm = c10::Symbol::fromQualString("cnclip::layer_norm");
  static const auto our_softmax = c10::Symbol::fromQualString("cnclip::softmax");
  for (torch::jit::Node* node : nodes_of_kind(block, layer_norm, 6)) {
    replace_uses_with_call(node, our_layer_norm, node->inputs());
    node->destroy();
  }
  for (torch::jit::Node* node : nodes_of_kind(block, softmax, 3)) {
    if (!node->input(1)->type()->cast<c10::IntType>()) continue;  // softmax.Dimname has 3 inputs too
    replace_uses_with_call(node, our_softmax, node->inputs());
    node->destroy();
  }
}

}  // namespace cnclip::detail
