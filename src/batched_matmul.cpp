#include "batched_matmul.h"

#include "graph_rewrite.h"
#include "onednn_util.h"
#include "small_ops.h"

#include <ATen/Parallel.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace cnclip::detail {
namespace {

struct Primitive {
  dnnl::matmul matmul;
  dnnl::memory::desc a, b, c, scratchpad;
};

// Primitives by operand shapes (contiguous), thread count and whether only brgemm will do; nullptr
// where oneDNN offers only its reference kernel (LibTorch's is faster), or another than brgemm when
// only brgemm will do. A tower has a handful of shapes per batch size, a text tower two to four per
// query length.
using Key = std::tuple<std::vector<int64_t>, std::vector<int64_t>, int, bool>;

std::shared_ptr<const Primitive> primitive_for(const at::Tensor& a, const at::Tensor& b, int threads,
                                               bool brgemm_only) {
  // Up to 4 per text length and thread count (the last layer's query has one row): 256 keeps a
  // server's queries of every length and its image batches without starting again.
  static auto* cache = new PrimitiveCache<Key, Primitive>(256);  // outlives every module
  return cache->get(Key{a.sizes().vec(), b.sizes().vec(), threads, brgemm_only}, [&] {
    using dt = dnnl::memory::data_type;
    const auto plain = [](std::vector<int64_t> sizes) {
      const std::vector<int64_t> strides = at::detail::defaultStrides(sizes);
      return dnnl::memory::desc(sizes, dt::f32, strides);
    };
    std::vector<int64_t> c_sizes = a.sizes().vec();
    c_sizes.back() = b.size(-1);
    const dnnl::memory::desc ad = plain(a.sizes().vec()), bd = plain(b.sizes().vec()), cd = plain(c_sizes);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // execute_with_own_scratchpad
    std::shared_ptr<const Primitive> made;
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ad, bd, cd), attr, onednn_engine());
      const std::string kernel = pd.impl_info_str();
      const bool brgemm = kernel.rfind("brg", 0) == 0, reference = kernel.rfind("ref", 0) == 0;
      if (brgemm_only ? brgemm : !reference) {
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
      !b.device().is_cpu() || a.requires_grad() || b.requires_grad() || a.numel() == 0 || b.numel() == 0) {
    return at::matmul(a, b);
  }
  // A text query's products (12 x 15 x 64 values) on the calling thread alone, where waking another
  // costs more than it saves; an image's are split over the compute threads (small_ops.h).
  const int64_t elements = std::max(a.numel(), b.numel());
  OneThreadScope scope(elements);
  // Copied contiguous where they are views (the heads of a Linear's output, kᵀ): on such strides
  // oneDNN 2.6 runs its jit gemm, whose kernels cost ~40 ms to make on the first product of a process,
  // on contiguous operands brgemm (AVX-512), as fast (an image's) or faster (a text query's: 2-5
  // against 4-7 us). Products small per item of the batch (a text's) take only brgemm: ~0.015 ms
  // saved per product would not earn back the jit gemm's 40 ms in a one-shot query. Per item, not per
  // call, so that a text or an image computes on the same kernel in any batch.
  const auto primitive = primitive_for(a, b, at::get_num_threads(), elements / a.size(0) < kOneThreadElements);
  if (!primitive) return at::matmul(a, b);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor c = at::empty(primitive->c.dims(), a.options());
  try {
    const auto& engine = onednn_engine();
    execute_with_own_scratchpad(primitive->matmul, primitive->scratchpad,
                                {{DNNL_ARG_SRC, dnnl::memory(primitive->a, engine, ac.data_ptr())},
                                 {DNNL_ARG_WEIGHTS, dnnl::memory(primitive->b, engine, bc.data_ptr())},
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
