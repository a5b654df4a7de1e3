// Both towers' float32 Linear layers on oneDNN's matmul, on weights packed once at load (model module
// only; model.h, "fp32 Linear layers"). The text tower's since 2026-12-01: a warm 15-token ViT-B-16
// query 14.2-14.8 -> 12.3-13.6 ms against oneDNN on the weights in place, a one-shot embed-text no
// slower (0.88-1.30 against 0.79-1.63 s), and a text the same floats in any batch.
//
// OpenBLAS packs both operands of every product; oneDNN's brgemm reads weights packed once for the
// CPU's vector width: the image tower ~13% faster (135 -> 117 ms/image). ViT-B-16's 48 Linears of a 4-image batch (788
// rows) on 2 threads, AMD EPYC of family 1Ah (AVX-512 on 512-bit units), interleaved, standalone: OpenBLAS's own
// kernels (Cooperlake) ~400 ms, oneDNN on packed weights ~357 ms, and the same 4 x 197 rows as 4 calls ~356 ms. On the
// bundle's weights in place oneDNN was slower than OpenBLAS (the tower 238 against 166 ms/image).
//
// An image's embedding must not depend on the batch it was encoded in (an index run's batches against
// `embed-image --shard`'s), nor on the thread count. Packed in one layout, oneDNN's brgemm computes a
// row with the same bits whatever the rows and threads of the call: measured bit for bit at 1 to 3,152
// rows (ViT-B's four Linear shapes and ViT-L's 1024 x 3072 and 4096 x 1024) on 1, 2 and 4 threads, and at
// full size in tests/vitb16_full_size_test.sh (ViT-B-16, its 768 x 512 projection too). On weights in place it did not
// (which kernel computes a row depends on the row count), and where oneDNN has no brgemm (CPUs without AVX-512 in
// oneDNN 2.6) it runs another gemm: so the route is taken only where the packed primitive is brgemm, and the weights
// are packed in one layout (chosen at kLayoutRows rows) that every call then uses.
//
// Products by a constant matrix (aten::matmul, ViT's final `x @ proj`) are taken too: on OpenBLAS's
// AVX2 kernels (as this workplace forces them on an AVX-512 CPU) an image's embedding came out ~1e-7
// apart alone and in a batch.
//
// The packed copy is written over the bundle's weights where nothing else reads them (it has their
// size where the dimensions are multiples of oneDNN's blocks, as ViT-B-16's are), so the tower keeps one
// copy: packed into fresh buffers, a one-shot `embed-image` peaked at 741-758 MB against 597 (the freed
// weights left heap holes its one image did not fill); over them, 578 against 588. Packing ViT-B-16's
// 49 matrices costs ~0.1 s at load (with cnclip's malloc settings; runtime.h), paid by one-shot
// commands too, within their run-to-run noise (embed-image of one photo 1.29-1.77 s against
// 1.44-1.91): the same image gets the same embedding from `search-image` as from `index`.
#pragma once

#include <torch/script.h>

#include <string>

namespace cnclip::detail {

// Every aten::linear of `block` (and of the blocks within) whose weights are a float32 [n, k] constant,
// and every aten::matmul or cnclip::matmul by a float32 [k, n] constant, becomes cnclip::linear_packed
// on those weights packed for oneDNN's brgemm (with the SiLU or GELU that alone reads a Linear's output
// as the product's post-op), and the constant is dropped. Returns false, the graph untouched, when
// oneDNN has no brgemm kernel for these products on this CPU (the caller routes them elsewhere); throws
// std::exception (dnnl::error, c10::Error) when packing fails midway (the graph may then be partly
// rewritten, every node computing what it did).
bool route_linears_to_packed_onednn(torch::jit::Block* block);

// Whether a packed product has failed at run time in this process (oneDNN could not build or run it
// for some row or thread count; the load builds those of 1 and kLayoutRows rows first): that layer is
// LibTorch's from then on, with other last bits.
bool packed_products_failed();

}  // namespace cnclip::detail
