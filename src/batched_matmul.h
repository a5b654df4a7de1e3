// The towers' batched float32 products (the attention's q·kᵀ and weights·v) on oneDNN's matmul (model
// module only; model.h).
//
// LibTorch 1.13 runs aten::matmul of [batch, heads, tokens, 64] operands as one OpenBLAS product per
// head after copying the transposed operand: ViT-B-16's 24 attention products per image batch took
// 4.7 ms per layer for 4 images on 2 threads here, oneDNN's 2.5 ms (the floats equal). A text query's,
// [1, 12, 15, 64], took ~20 us each that way (12 calls of a few microseconds' overhead), 2-5 us on
// oneDNN's brgemm on the calling thread: 24 of them, ~0.35 ms of a ~6.5 ms int8 query.
// cnclip::matmul takes them when both operands are float32 CPU tensors with the same batch dimensions,
// on the calling thread alone when they are small (OneThreadScope, small_ops.h: a query's; an image's
// are split over the compute threads), on contiguous copies of the operands: on the strided views the
// attention hands over, oneDNN 2.6 runs its jit gemm, whose kernels cost a process ~40 ms to make on
// its first product (a one-shot embed-image paid it), and on contiguous ones brgemm where it runs
// AVX-512, as fast for an image (100-101 against 98-101 ms/image, interleaved) and faster for a text.
// A product of fewer than kOneThreadElements values per batch item (a text's) takes only brgemm, and
// LibTorch's kernel where oneDNN has none: ~0.015 ms saved per product would not earn back the jit
// gemm's 40 ms in a one-shot query. Chosen per item, so a text or an image takes the same kernel in
// any batch.
#pragma once

#include <torch/script.h>

namespace cnclip::detail {

// Whether towers take cnclip::matmul (the default) or keep aten::matmul (CNCLIP_BATCHED_MATMUL=libtorch,
// for measurement).
bool batched_matmuls_on_onednn();

// Every aten::matmul of the block (and of the blocks within) becomes cnclip::matmul, which computes
// what aten::matmul does, on oneDNN where it pays and can, else through aten::matmul itself.
void route_batched_matmuls_to_onednn(torch::jit::Block* block);

}  // namespace cnclip::detail
