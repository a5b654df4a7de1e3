// Small operators on the calling thread alone (model module only; model.h).
//
// LibTorch 1.13 splits a layer norm's or a softmax's rows over the compute threads however few they
// are, and each split is an OpenMP parallel region: the other threads are woken (a futex call each,
// slow on these VMs) and waited for. A 15-token int8 ViT-B-16 text query opened ~92 regions (counted
// with a GOMP_parallel probe): its 49 products, and layer norms of 15 x 768 values (23; the last
// layer's have one row), softmaxes of 12 x 15 x 15 (12) and activation ranges of the products' 15 x
// 3072 inputs (11), which one thread computes in microseconds.
// cnclip::layer_norm and cnclip::softmax compute what LibTorch's do, with the same kernels, on the
// calling thread when the input has fewer than kOneThreadElements values (a row's result does not
// depend on the thread that computes it: the floats are the same); larger inputs (an image batch's
// 4 x 197 x 768) are split as before.
//
// A softmax over the last dimension with at least kOneThreadElements values per item of the batch
// (ViT's attention weights: 12 x 197 x 197 per image) runs on oneDNN's softmax instead (one of its jit
// kernels, AVX-512 here; never its reference one): LibTorch's took 2.23 ms for 4 images' [4, 12, 197, 197] on 2
// threads here (Zen 5), ~4 ms of an image's ~48 in the int8 tower, and oneDNN's 0.56 ms. The
// probabilities differ from LibTorch's by up to ~4e-7. A row's do not depend on the other rows of the
// call (an image's embedding stays the same in any batch), and the choice is made per item, not per
// call, for the same reason. CNCLIP_SOFTMAX=libtorch keeps LibTorch's.
#pragma once

#include <torch/script.h>

#include <cstdint>

namespace cnclip::detail {

// Inputs of fewer values than this run on one thread: 15 x 3072 (an int8 query's widest) and a
// 52-token query's 52 x 768 are under it, one image's 197 x 768 is over.
constexpr int64_t kOneThreadElements = 1 << 16;

// While it lives, the calling thread's parallel regions (LibTorch's, oneDNN's, OpenMP's) have one
// thread when `elements` < kOneThreadElements (and small_ops_on_one_thread); otherwise it does nothing.
class OneThreadScope {
 public:
  explicit OneThreadScope(int64_t elements);
  ~OneThreadScope();
  OneThreadScope(const OneThreadScope&) = delete;
  OneThreadScope& operator=(const OneThreadScope&) = delete;

 private:
  int restore_ = 0;  // the thread count to set again, 0 when unchanged
};

// Whether towers take cnclip::layer_norm and cnclip::softmax and OneThreadScope applies (the default),
// or LibTorch splits everything as it does (CNCLIP_SMALL_OPS=libtorch, for measurement).
bool small_ops_on_one_thread();

// Whether large softmaxes run on oneDNN (the default) or on LibTorch (CNCLIP_SOFTMAX=libtorch, for
// measurement). Only where cnclip::softmax is in the graph (small_ops_on_one_thread).
bool large_softmax_on_onednn();

// Every aten::layer_norm and aten::softmax (int dim) of the block and of the blocks within becomes
// cnclip's.
void route_small_ops_to_one_thread(torch::jit::Block* block);

}  // namespace cnclip::detail
