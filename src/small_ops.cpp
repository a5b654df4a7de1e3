#include "small_ops.h"

#include "graph_rewrite.h"
#include "onednn_util.h"

#include <ATen/Parallel.h>
#include <omp.h>

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

at::Tensor softmax_op(const at::Tensor& input, int64_t dim, c10::optional<at::ScalarType> dtype) {
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
