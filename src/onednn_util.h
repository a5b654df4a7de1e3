// What cnclip's oneDNN operators share (model module only; src/model.cpp, src/linear_int8.cpp,
// src/batched_matmul.cpp).
#pragma once

#include <ATen/ATen.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <vector>

namespace cnclip::detail {

inline const dnnl::engine& onednn_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Runs `primitive` on `args` with scratch memory of the calling thread's own, and waits for it. Its
// primitive_attr must have set scratchpad_mode::user: Debian's oneDNN is built without concurrent
// execution, so its own scratchpad is one for the process, and two threads running primitives at
// once (index workers) overwrote each other's (Concurrency.TextTowersEncodeOnSeveralThreadsAtOnce).
// The memory is kept between calls, as long as the thread lives (it grows to the largest asked for,
// up to a few MB for these towers' products): a new allocation for each of
// a query's 72 products cost page faults on every call (a 15-token fp32 query on oneDNN's route,
// 2 threads: 16.2-18.3 -> 15.8-16.2 ms).
inline void execute_with_own_scratchpad(const dnnl::primitive& primitive, const dnnl::memory::desc& scratchpad,
                                        std::unordered_map<int, dnnl::memory> args) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < scratchpad.get_size()) scratch.resize(scratchpad.get_size());
  args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(scratchpad, onednn_engine(), scratch.data()));
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
