#pragma once
// Gradients of the next-token loss with respect to an adapter's active values, through the frozen base
// model, from libtorch autograd. The loss is transformers' causal-LM loss: mean cross-entropy over the
// tokens marked as targets, each predicted from the tokens before it.
#include <cstdint>
#include <vector>

namespace hs {

struct Model;
struct TileLayout;

struct TrainingExample {
  std::vector<int32_t> tokens;     // the whole sequence: prompt and completion
  std::vector<uint8_t> is_target;  // per token, 1 where it counts in the loss (never the first token)
};

struct LoraGradients {
  double loss = 0;            // mean over target tokens
  int64_t target_tokens = 0;
  std::vector<float> values;  // d loss / d value for every active value, in the layout's order
};

// What bounds training memory: activations of at most `tokens_per_forward` padded tokens at a time (one
// layer at a time, with activation checkpointing), and vocabulary logits of `logits_chunk` positions at a
// time. Neither changes the result beyond float rounding.
struct GradientOptions {
  int64_t tokens_per_forward = 4096;  // an example longer than this is run alone
  int64_t logits_chunk = 1024;
};

// `values` holds layout.num_values() floats; `scale` is alpha / rank. Throws InvalidArgument for an empty
// batch, token ids outside the vocabulary, sequences longer than the context, or no target tokens.
LoraGradients lora_gradients(const Model& model, const TileLayout& layout, const std::vector<float>& values,
                             double scale, const std::vector<TrainingExample>& batch,
                             const GradientOptions& options = {});

}  // namespace hs
