// What cnclip's oneDNN operators share (model module only; src/model.cpp, src/linear_int8.cpp,
// src/batched_matmul.cpp).
#pragma once

#include <ATen/ATen.h>
#include <oneapi/dnnl/dnnl.hpp>

#include "graph_rewrite.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
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

// `activation` (graph_rewrite.h: kSilu, kGeluErf, kGeluTanh; nothing for kNoActivation) as a post-op.
inline void append_activation(dnnl::post_ops& ops, int64_t activation) {
  if (activation == kSilu) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
  if (activation == kGeluErf) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  if (activation == kGeluTanh) ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_tanh, 0.0f, 0.0f);
}

// Primitives (or what else is made per operand shape) by key, for any thread. get() returns the value
// made for `key`, or makes it with `make()` under the lock (a null value is kept too: "no oneDNN kernel
// worth it for this key"; an exception leaves nothing). Past `limit` entries the map starts again:
// image batches of every size, text queries of every length.
template <class Key, class Value>
class PrimitiveCache {
 public:
  explicit PrimitiveCache(size_t limit) : limit_(limit) {}

  template <class Make>
  std::shared_ptr<const Value> get(const Key& key, Make&& make) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = map_.find(key); it != map_.end()) return it->second;
    if (map_.size() >= limit_) map_.clear();
    std::shared_ptr<const Value> made = make();
    map_.emplace(key, made);
    return made;
  }

 private:
  const size_t limit_;
  std::mutex mu_;
  std::map<Key, std::shared_ptr<const Value>> map_;
};

// The uninitialized result of a product of `x` ([..., k]) by a [k, n] matrix: [..., n], x's options.
inline at::Tensor product_output(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = n;
  return at::empty(sizes, x.options());
}

// "2.6.3": the oneDNN library that runs (LibTorch's).
inline std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

// Whether a route is on: unless its environment variable says "libtorch" (for measurement, and for a
// CPU where oneDNN's kernels disappoint).
inline bool route_on_unless_libtorch(const char* variable) {
  const char* env = std::getenv(variable);
  return !(env && std::strcmp(env, "libtorch") == 0);
}

}  // namespace cnclip::detail
