#pragma once
// A loaded model: plain structs of weight tensors, immutable after load. Per-request state (KV cache,
// sampling) lives elsewhere. Weights read from a file of the same dtype are views into its memory map.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "model/config.h"

namespace hs {

struct LayerWeights {
  at::Tensor attn_norm;               // [hidden]
  at::Tensor wq, wk, wv, wo;          // [out, in], as in PyTorch's Linear
  at::Tensor bq, bk, bv, bo;          // undefined unless attention_bias
  at::Tensor q_norm, k_norm;          // [head_dim], Qwen3 only
  at::Tensor ffn_norm;                // [hidden]
  at::Tensor w_gate, w_up, w_down;
  at::Tensor b_gate, b_up, b_down;    // undefined unless mlp_bias
};

struct ModelWeights {
  at::Tensor embed;       // [vocab, hidden]
  at::Tensor final_norm;  // [hidden]
  at::Tensor lm_head;     // [vocab, hidden]; the same tensor as embed when tied
  std::vector<LayerWeights> layers;
};

struct Model {
  ModelConfig config;
  ModelWeights weights;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  std::string source;  // the path it came from, or "random"
  std::string format;  // "safetensors", "gguf" or "random"
  std::vector<std::shared_ptr<MappedFile>> files;  // maps that weight views point into
};

// Calls fn(name, tensor) for every defined weight tensor, with Hugging Face names.
void for_each_weight(ModelWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn);

int64_t parameter_count(const Model& model);

}  // namespace hs
