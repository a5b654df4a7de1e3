// The int8 towers' Linear layers on oneDNN's u8 x s8 matmul, with the activation scale and zero point
// given at run time (model module only; model.h, "int8 Linear layers").
//
// LibTorch 1.13's dynamic int8 Linear (quantized::linear_dynamic, oneDNN engine) builds a new oneDNN
// primitive whenever the activations' scale differs from the last call's, which for a text query is
// every call: ~72 primitive builds per ViT-B-16 query, 29 ms against ONNX Runtime's 8.5 (README
// "Against ONNX Runtime"). cnclip::linear_int8 computes the same product (activations quantized to
// uint8 with LibTorch's own parameters, the bundle's int8 weights with their per-channel scales, int32
// sums, float32 bias) through one primitive per weight matrix and row count, whose scales and zero
// point are arguments of each call.
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

// "oneDNN 2.6.3" (the library LibTorch also runs), or what keeps LibTorch's kernel.
std::string int8_linear_description();

}  // namespace cnclip::detail
