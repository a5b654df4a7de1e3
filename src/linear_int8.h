// The int8 towers' Linear layers on oneDNN's u8 x s8 matmul, with the activation scale and zero point
// given at run time (model module only; model.h, "int8 Linear layers").
//
// LibTorch 1.13's dynamic int8 Linear (quantized::linear_dynamic, oneDNN engine) hands oneDNN the
// activations' scale and zero point as run-time attributes, for which oneDNN 2.6 runs its generic
// gemm:jit and repacks the weights on every call, and it quantizes the activations one value at a
// time: a ViT-B-16 text query took 28 ms against ONNX Runtime's 8.5 (README "Against ONNX Runtime").
// cnclip::linear_int8 computes the same product (activations quantized to uint8 with LibTorch's
// parameters, the bundle's int8 weights with their per-channel scales, int32 sums, float32 bias) on
// weights packed once per layer for the CPU's int8 instructions, the scale and zero point reaching the
// primitive as post-op operands of each call: 7.5 ms.
#pragma once

#include <torch/script.h>

#include <string>

namespace cnclip::detail {

// Whether int8 towers take cnclip::linear_int8 (the default) or keep LibTorch's
// quantized::linear_dynamic (CNCLIP_INT8_LINEAR=libtorch, for measurement and for a CPU where oneDNN's
// kernels disappoint).
bool int8_linears_on_onednn();

// `module` frozen (torch::jit::freeze: one inlined graph) with every quantized::linear_dynamic
// become cnclip::linear_int8 (same inputs), which also computes the SiLU or GELU that alone reads the
// Linear's output. Call before the module's first run. Weights the route cannot take (per-tensor with
// a zero point, another dtype) and calls it cannot take (autograd, another device, non-finite
// activations) run LibTorch's kernel, so the route never changes what fails.
torch::jit::Module route_int8_linears_to_onednn(const torch::jit::Module& module);

// Drops what the route prepared for the weights of modules that no longer exist (their packed
// parameters stay allocated while it holds them): call after destroying int8 modules.
void release_unused_int8_weights();

// "oneDNN 2.6.3" (the library LibTorch also runs), or what keeps LibTorch's kernel.
std::string int8_linear_description();

}  // namespace cnclip::detail
