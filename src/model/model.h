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

// A projection y = x W^T + b. Dense models keep `weight`; weight-only int8 models keep `q8` and
// `q8_scale` instead (per output row, symmetric), which halve to quarter the bytes a decode step reads.
struct Linear {
  at::Tensor weight;    // [out, in], as in PyTorch's Linear
  at::Tensor bias;      // [out] or undefined
  at::Tensor q8;        // [out, in] int8
  at::Tensor q8_scale;  // [out] bfloat16
};

struct LayerWeights {
  at::Tensor attn_norm;         // [hidden]
  Linear q, k, v, o;            // biases only with attention_bias
  at::Tensor q_norm, k_norm;    // [head_dim], Qwen3 only
  at::Tensor ffn_norm;          // [hidden]
  Linear gate, up, down;        // biases only with mlp_bias
};

struct ModelWeights {
  at::Tensor embed;       // [vocab, hidden]
  at::Tensor final_norm;  // [hidden]
  Linear lm_head;         // its weight is the embed tensor itself when tied
  bool lm_head_tied = false;
  std::vector<LayerWeights> layers;
};

struct Model {
  ModelConfig config;
  ModelWeights weights;
  at::ScalarType dtype = at::kFloat;  // of activations and dense weights
  bool int8_weights = false;
  at::Device device = at::kCPU;
  std::string source;  // the path it came from, or "random"
  std::string format;  // "safetensors", "gguf" or "random"
  std::vector<std::shared_ptr<MappedFile>> files;  // maps that weight views point into
  // RoPE at every position of the context, [context_length, head_dim] in the model's dtype, built at load so
  // that a step only gathers its positions' rows (model/forward.h: build_rope_tables).
  at::Tensor rope_cos, rope_sin;
};

// Calls fn(name, tensor) for every defined weight tensor, with Hugging Face names.
void for_each_weight(ModelWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn);

// Every projection, the lm_head included.
void for_each_linear(ModelWeights& w, const std::function<void(Linear&)>& fn);

int64_t parameter_count(const Model& model);

}  // namespace hs
