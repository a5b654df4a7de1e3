// The towers' batched float32 products (the attention's q·kᵀ and weights·v) on oneDNN's matmul (model
// module only; model.h).
//
// LibTorch 1.13 runs aten::matmul of [batch, heads, tokens, 64] operands as one OpenBLAS product per
// head after copying the transposed operand: ViT-B-16's 24 attention products per image batch took
// 4.7 ms per layer for 4 images on 2 threads here, oneDNN's brgemm 2.5 ms on the same strided
// tensors (the floats equal). cnclip::matmul takes them when both operands are float32 CPU tensors
// with the same batch dimensions and the product is large (an image's; smaller ones stay on
// LibTorch, where building a primitive per shape would cost more than it saves). Only the image
// tower is routed (model.cpp): a text query's products are all small.
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
