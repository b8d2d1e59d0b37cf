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
#include "model/ggml_rows.h"

namespace hs {

// A projection y = x W^T + b. Dense models keep `weight`; weight-only quantized models keep instead `q8` and
// `q8_scale` (int8 per output row, symmetric) or `q4` and `q4_scale_zero` (4-bit in groups of 32,
// model/int4_weights.h), which cut the bytes a decode step reads by 4 to 8 times against float32, or `rows`
// (ggml block rows, model/ggml_rows.h: the vocabulary projection of int4 models).
struct Linear {
  at::Tensor weight;         // [out, in], as in PyTorch's Linear
  at::Tensor bias;           // [out] or undefined
  at::Tensor q8;             // [out, in] int8
  at::Tensor q8_scale;       // [out] bfloat16
  at::Tensor q4;             // [out, in / 2] uint8, packed as torch's CPU int4 kernel wants
  at::Tensor q4_scale_zero;  // [in / 32, out, 2] bfloat16
  GgmlRows rows;
};

// How a model keeps its projections.
enum class WeightFormat { Dense, Int8, Int4 };

struct LayerWeights {
  at::Tensor attn_norm;         // [hidden]
  Linear q, k, v, o;            // biases only with attention_bias
  at::Tensor q_norm, k_norm;    // [head_dim], Qwen3 only
  at::Tensor ffn_norm;          // [hidden]
  Linear gate, up, down;        // biases only with mlp_bias
  // What the forward runs: projections that read the same input as one product (a step launches one matmul
  // where it launched three, or two). q, k, v, gate and up are views of their rows, for their names; in int4
  // models only their biases are (the packed 4-bit form has no row views).
  Linear qkv;                   // [q_out + 2 kv_out, hidden]
  Linear gate_up;               // [2 intermediate, hidden]
  at::Tensor qk_norm;           // [heads + kv_heads, head_dim]: q_norm per query head, then k_norm per key head
};

// Rows of ModelWeights::embed_head.
constexpr int64_t kEmbedHeadRows = 64;

struct ModelWeights {
  at::Tensor embed;       // [vocab, hidden]; undefined when tied to an lm_head kept only quantized (int4 models)
  // The embedding table's first rows as the file holds them, kept whatever form the table computes in (int4
  // models drop the table itself): part of what identifies the base model (adapters/fingerprint.h).
  at::Tensor embed_head;
  at::Tensor final_norm;  // [hidden]
  Linear lm_head;         // its weight is the embed tensor itself when tied (int4 models: its ggml rows only)
  bool lm_head_tied = false;
  std::vector<LayerWeights> layers;
};

struct Model {
  ModelConfig config;
  ModelWeights weights;
  at::ScalarType dtype = at::kFloat;  // of activations and dense weights
  WeightFormat weight_format = WeightFormat::Dense;
  int64_t parameters = 0;  // of the model as its file holds it, counted at load
  at::Device device = at::kCPU;
  std::string source;  // the path it came from, or "random"
  std::string format;  // "safetensors", "gguf" or "random"
  std::vector<std::shared_ptr<MappedFile>> files;  // maps that weight views point into
  // RoPE at every position of the context, [context_length, head_dim] in the model's dtype, built at load so
  // that a step only gathers its positions' rows (model/forward.h: build_rope_tables). rope_sin's first half
  // is negated: rotate-half's sign.
  at::Tensor rope_cos, rope_sin;
};

// Calls fn(name, tensor) for every defined weight tensor, with Hugging Face names (int8 projections under their
// weight's name; int4 projections, which have no per-name form, are skipped: loading counts parameters before).
void for_each_weight(ModelWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn);

// Every projection, the lm_head included.
void for_each_linear(ModelWeights& w, const std::function<void(Linear&)>& fn);

// Of the weights as they are now (before quantization: as the file holds them).
int64_t count_parameters(ModelWeights& w);
int64_t parameter_count(const Model& model);  // model.parameters

// What the projections compute with: "int4", "int8", or the dtype ("float32", "bfloat16").
std::string weights_name(const Model& model);

}  // namespace hs
