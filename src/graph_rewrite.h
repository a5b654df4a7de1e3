// Rewrites of the towers' TorchScript graphs at load: a LibTorch operator replaced by one of cnclip's
// (model module only; src/model.cpp, src/linear_int8.cpp, src/batched_matmul.cpp).
#pragma once

#include <torch/csrc/jit/ir/constants.h>
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

// A call of `op` on `args`, inserted before `at` (default: `node`), takes over the uses of `node`'s
// output (and its type); `node` is left unused, for the caller to destroy with whatever else the call
// replaces.
inline void replace_uses_with_call(torch::jit::Node* node, c10::Symbol op, at::ArrayRef<torch::jit::Value*> args,
                                   torch::jit::Node* at = nullptr) {
  torch::jit::WithInsertPoint guard(at ? at : node);
  torch::jit::Value* out =
      node->owningGraph()->insert(op, std::vector<torch::jit::NamedValue>(args.begin(), args.end()));
  out->setType(node->output()->type());
  node->output()->replaceAllUsesWith(out);
}

// The activation that follows a Linear in the graph, computed by the product's last post-op instead of
// a separate pass over its output (the MLPs' first Linear: ViT's QuickGELU, exported as SiLU of
// pre-scaled weights; BERT's GELU).
constexpr int64_t kNoActivation = 0, kSilu = 1, kGeluErf = 2, kGeluTanh = 3;

inline at::Tensor apply_activation(at::Tensor y, int64_t activation) {
  if (activation == kSilu) return at::silu(y);
  if (activation == kGeluErf) return at::gelu(y, "none");
  if (activation == kGeluTanh) return at::gelu(y, "tanh");
  return y;
}

// The activation node that alone reads `linear`'s output (directly, or through the dtype no-op aten::to
// that PyTorch's dynamic Linear module adds), or nullptr; `activation` says which.
inline torch::jit::Node* fusable_activation(torch::jit::Node* linear, int64_t* activation) {
  static const auto to = c10::Symbol::fromQualString("aten::to");
  static const auto silu = c10::Symbol::fromQualString("aten::silu");
  static const auto gelu = c10::Symbol::fromQualString("aten::gelu");
  torch::jit::Value* v = linear->output();
  if (v->uses().size() != 1) return nullptr;
  torch::jit::Node* next = v->uses()[0].user;
  if (next->kind() == to) {
    // aten::to(x, dtype float32, non_blocking, copy, memory_format): the Linear's output already is.
    const auto dtype = torch::jit::toIValue(next->inputs().size() > 1 ? next->input(1) : nullptr);
    const auto copy = torch::jit::toIValue(next->inputs().size() > 3 ? next->input(3) : nullptr);
    if (next->inputs().size() != 5 || !dtype || !dtype->isInt() || dtype->toInt() != static_cast<int64_t>(at::kFloat) ||
        !copy || !copy->isBool() || copy->toBool() || next->output()->uses().size() != 1) {
      return nullptr;
    }
    next = next->output()->uses()[0].user;
  }
  if (next->kind() == silu && next->inputs().size() == 1) {
    *activation = kSilu;
    return next;
  }
  if (next->kind() == gelu && next->inputs().size() == 2) {
    const auto approximate = torch::jit::toIValue(next->input(1));
    if (!approximate || !approximate->isString()) return nullptr;
    if (approximate->toStringRef() == "none") *activation = kGeluErf;
    else if (approximate->toStringRef() == "tanh") *activation = kGeluTanh;
    else return nullptr;
    return next;
  }
  return nullptr;
}

// `linear` (a Linear node whose first three inputs are the input, weights and bias) and the
// activation that alone reads its output (fusable_activation) become one call of `op` on those three
// inputs (with `weights` instead of the Linear's when given) and the activation's code (kNoActivation
// without one), inserted at the Linear's place (its inputs as they were there); the Linear, the
// activation and any aten::to between are destroyed. The graph is left as it was if inserting the call
// throws.
inline void replace_with_fused_call(torch::jit::Node* linear, c10::Symbol op, torch::jit::Value* weights = nullptr) {
  int64_t activation = kNoActivation;
  torch::jit::Node* act = fusable_activation(linear, &activation);
  torch::jit::Node* last = act ? act : linear;  // whose output the new node's replaces
  torch::jit::Value* code = nullptr;
  {
    torch::jit::WithInsertPoint guard(linear);
    code = linear->owningGraph()->insertConstant(activation);
  }
  replace_uses_with_call(last, op, {linear->input(0), weights ? weights : linear->input(1), linear->input(2), code},
                         linear);
  for (torch::jit::Node* n = last; n != linear;) {
    torch::jit::Node* before = n->input(0)->node();
    n->destroy();
    n = before;
  }
  linear->destroy();
}

}  // namespace cnclip::detail
