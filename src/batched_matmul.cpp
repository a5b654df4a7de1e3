#include "batched_matmul.h"

#include "graph_rewrite.h"
#include "onednn_util.h"

#include <ATen/Parallel.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace cnclip::detail {
namespace {

// Below this many multiply-adds per item of the batch a product stays on LibTorch (a 15-token text
// query's attention: 12 x 15 x 15 x 64 = 173k; an image's: 12 x 197 x 197 x 64 = 30M). Per item, not
// per call: an image's embedding must not depend on how many others share its call.
constexpr int64_t kMinMultiplyAdds = int64_t{1} << 22;

struct Primitive {
  dnnl::matmul matmul;
  dnnl::memory::desc a, b, c, scratchpad;
};

// Primitives by operand shapes and strides and thread count; nullptr where oneDNN offers only its
// reference kernel (LibTorch's is faster). A tower has a handful of shapes per batch size.
using Key = std::tuple<std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, int>;

std::shared_ptr<const Primitive> primitive_for(const at::Tensor& a, const at::Tensor& b, int threads) {
  static auto* cache = new PrimitiveCache<Key, Primitive>(64);  // outlives every module
  return cache->get(Key{a.sizes().vec(), a.strides().vec(), b.sizes().vec(), b.strides().vec(), threads}, [&] {
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc ad(a.sizes().vec(), dt::f32, a.strides().vec()),
        bd(b.sizes().vec(), dt::f32, b.strides().vec());
    std::vector<int64_t> c_sizes = a.sizes().vec();
    c_sizes.back() = b.size(-1);
    const dnnl::memory::desc cd(c_sizes, dt::f32, at::detail::defaultStrides(c_sizes));
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
    std::shared_ptr<const Primitive> made;
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ad, bd, cd), attr, onednn_engine());
      if (std::string(pd.impl_info_str()).rfind("ref", 0) != 0) {
        made = std::make_shared<const Primitive>(Primitive{dnnl::matmul(pd), ad, bd, cd, pd.scratchpad_desc()});
      }
    } catch (const dnnl::error&) {
      // no oneDNN kernel for these operands: LibTorch's
    }
    return made;
  });
}

// cnclip::matmul: aten::matmul's result.
at::Tensor onednn_matmul(const at::Tensor& a, const at::Tensor& b) {
  const bool batched = a.dim() >= 3 && a.dim() == b.dim() && a.dim() <= 6 &&
                       a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) && a.size(-1) == b.size(-2);
  if (!batched || a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat || !a.device().is_cpu() ||
      !b.device().is_cpu() || a.requires_grad() || b.requires_grad() || a.numel() == 0 || b.numel() == 0 ||
      a.numel() / a.size(-1) * b.size(-1) * a.size(-1) / a.size(0) < kMinMultiplyAdds) {
    return at::matmul(a, b);
  }
  const auto primitive = primitive_for(a, b, at::get_num_threads());
  if (!primitive) return at::matmul(a, b);
  at::Tensor c = at::empty(primitive->c.dims(), a.options());
  try {
    const auto& engine = onednn_engine();
    execute_with_own_scratchpad(primitive->matmul, primitive->scratchpad,
                                {{DNNL_ARG_SRC, dnnl::memory(primitive->a, engine, a.data_ptr())},
                                 {DNNL_ARG_WEIGHTS, dnnl::memory(primitive->b, engine, b.data_ptr())},
                                 {DNNL_ARG_DST, dnnl::memory(primitive->c, engine, c.data_ptr())}});
  } catch (const dnnl::error&) {
    return at::matmul(a, b);
  }
  return c;
}

TORCH_LIBRARY_FRAGMENT(cnclip, m) { m.def("matmul", &onednn_matmul); }

}  // namespace

bool batched_matmuls_on_onednn() { return route_on_unless_libtorch("CNCLIP_BATCHED_MATMUL"); }

void route_batched_matmuls_to_onednn(torch::jit::Block* block) {
  static const auto aten_matmul = c10::Symbol::fromQualString("aten::matmul");
  static const auto ours = c10::Symbol::fromQualString("cnclip::matmul");
  for (torch::jit::Node* node : nodes_of_kind(block, aten_matmul, 2)) {
    replace_uses_with_call(node, ours, {node->input(0), node->input(1)});
    node->destroy();
  }
}

}  // namespace cnclip::detail
