// What cnclip's oneDNN operators share (model module only; src/linear_int8.cpp,
// src/batched_matmul.cpp).
#pragma once

#include <ATen/ATen.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdlib>
#include <cstring>
#include <unordered_map>

namespace cnclip::detail {

inline const dnnl::engine& onednn_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Runs `primitive` on `args` with scratch memory of its own for this call, and waits for it. Its
// primitive_attr must have set scratchpad_mode::user: Debian's oneDNN is built without concurrent
// execution, so its own scratchpad is one for the process, and two threads running primitives at
// once (index workers) overwrote each other's (Concurrency.Int8TowersEncodeOnSeveralThreadsAtOnce).
inline void execute_with_own_scratchpad(const dnnl::primitive& primitive, const dnnl::memory::desc& scratchpad,
                                        std::unordered_map<int, dnnl::memory> args) {
  const at::Tensor scratch = at::empty({static_cast<int64_t>(scratchpad.get_size())}, at::kByte);
  args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(scratchpad, onednn_engine(), scratch.data_ptr()));
  dnnl::stream stream(onednn_engine());
  primitive.execute(stream, args);
  stream.wait();
}

// Whether a route is on: unless its environment variable says "libtorch" (for measurement, and for a
// CPU where oneDNN's kernels disappoint).
inline bool route_on_unless_libtorch(const char* variable) {
  const char* env = std::getenv(variable);
  return !(env && std::strcmp(env, "libtorch") == 0);
}

}  // namespace cnclip::detail
