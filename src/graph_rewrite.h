// Rewrites of the towers' TorchScript graphs at load: a LibTorch operator replaced by one of cnclip's
// (model module only; src/model.cpp, src/linear_int8.cpp, src/batched_matmul.cpp).
#pragma once

#include <torch/script.h>

#include <vector>

namespace cnclip::detail {

// The top blocks of the graphs of `module`'s methods (a frozen tower has one: forward).
inline std::vector<torch::jit::Block*> method_blocks(const torch::jit::Module& module) {
  std::vector<torch::jit::Block*> blocks;
  for (const auto& method : module.get_methods()) {
    blocks.push_back(torch::jit::toGraphFunction(method.function()).graph()->block());
  }
  return blocks;
}

// The nodes of `kind` with `inputs` inputs in `block` and in the blocks within, collected first so
// that the caller may destroy them.
inline std::vector<torch::jit::Node*> nodes_of_kind(torch::jit::Block* block, c10::Symbol kind, size_t inputs) {
  std::vector<torch::jit::Node*> found;
  for (torch::jit::Node* node : block->nodes()) {
    for (torch::jit::Block* inner : node->blocks()) {
      const auto more = nodes_of_kind(inner, kind, inputs);
      found.insert(found.end(), more.begin(), more.end());
    }
    if (node->kind() == kind && node->inputs().size() == inputs) found.push_back(node);
  }
  return found;
}

// A call of `op` on `args`, inserted before `node`, takes over the uses of `node`'s output (and its
// type); `node` is left unused, for the caller to destroy with whatever else the call replaces.
inline void replace_uses_with_call(torch::jit::Node* node, c10::Symbol op, at::ArrayRef<torch::jit::Value*> args) {
  torch::jit::WithInsertPoint guard(node);
  torch::jit::Value* out =
      node->owningGraph()->insert(op, std::vector<torch::jit::NamedValue>(args.begin(), args.end()));
  out->setType(node->output()->type());
  node->output()->replaceAllUsesWith(out);
}

}  // namespace cnclip::detail
