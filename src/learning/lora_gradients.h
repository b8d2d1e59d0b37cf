#pragma once
// Gradients of the training loss with respect to an adapter's active values, through the frozen base model,
// from libtorch autograd. The loss is transformers' causal-LM loss (mean cross-entropy over the tokens marked
// as targets, each predicted from the tokens before it), plus, when asked, a distillation term that keeps the
// adapter's answers to general prompts close to the base model's (learning/distillation.h).
#include <cstdint>
#include <vector>

namespace hs {

struct Model;
struct TileLayout;
struct TeacherTargets;

struct TrainingExample {
  std::vector<int32_t> tokens;     // the whole sequence: prompt and completion
  std::vector<uint8_t> is_target;  // per token, 1 where it counts in the loss (never the first token)
};

// The tokens an example's loss counts.
int64_t target_tokens(const TrainingExample& example);

// weight * the mean over every anchor position of KL(teacher || model with the adapter), the distributions
// taken over the teacher's top k tokens and one bucket for all others (exact when the teacher's mass outside
// its top k is zero, and a lower bound of the full KL otherwise).
struct DistillationTerm {
  double weight = 0;
  std::vector<const TeacherTargets*> anchors;
};

struct LoraGradients {
  double loss = 0;            // mean over target tokens
  std::vector<double> example_losses;  // per example of the batch, the mean over its own target tokens
  double kl = 0;              // the distillation term's mean KL, unweighted (0 without one)
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
                             const GradientOptions& options = {}, const DistillationTerm* distill = nullptr);

// How far an adapter moved the model's answers from the teacher's: KL as the distillation term measures it,
// averaged over every position of the anchors, and the largest average of one anchor.
struct Drift {
  double mean = 0, max = 0;
  std::vector<double> per_anchor;  // each anchor's mean over its positions
};
Drift distillation_drift(const Model& model, const TileLayout& layout, const std::vector<float>& values, double scale,
                         const std::vector<TeacherTargets>& anchors, const GradientOptions& options = {});

}  // namespace hs
