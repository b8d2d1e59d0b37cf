#include "learning/lora_gradients.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include "adapters/tile_layout.h"
#include "common/error.h"
#include "model/forward.h"
#include "model/model.h"

namespace hs {

namespace {

void validate_batch(const Model& model, const std::vector<TrainingExample>& batch) {
  if (batch.empty()) throw Error(ErrorKind::InvalidArgument, "a training batch needs at least one example");
  for (size_t i = 0; i < batch.size(); ++i) {
    const TrainingExample& ex = batch[i];
    const std::string which = "training example " + std::to_string(i);
    if (ex.tokens.size() < 2) throw Error(ErrorKind::InvalidArgument, which + " has fewer than two tokens");
    if (ex.is_target.size() != ex.tokens.size())
      throw Error(ErrorKind::InvalidArgument, which + " has a target mask of a different length than its tokens");
    if (static_cast<int64_t>(ex.tokens.size()) > model.config.context_length)
      throw Error(ErrorKind::ContextOverflow, which + " has " + std::to_string(ex.tokens.size()) +
                                                 " tokens; the model's context holds " +
                                                 std::to_string(model.config.context_length));
    for (int32_t id : ex.tokens)
      if (id < 0 || id >= model.config.vocab_size)
        throw Error(ErrorKind::InvalidArgument, which + " has token id " + std::to_string(id) + " outside the vocabulary");
  }
}

int64_t count_targets(const std::vector<TrainingExample>& batch) {
  int64_t n = 0;
  for (const TrainingExample& ex : batch)
    for (size_t t = 1; t < ex.is_target.size(); ++t) n += ex.is_target[t];
  return n;
}

// Consecutive examples grouped so that each group's padded size stays within the token budget (an example
// longer than the budget forms a group alone): memory then depends on the budget, not on the batch.
std::vector<std::pair<size_t, size_t>> group_examples(const std::vector<TrainingExample>& batch, int64_t budget) {
  std::vector<std::pair<size_t, size_t>> groups;
  size_t begin = 0;
  int64_t longest = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t len = static_cast<int64_t>(batch[i].tokens.size());
    const int64_t padded = std::max(longest, len) * static_cast<int64_t>(i - begin + 1);
    if (i > begin && padded > budget) {
      groups.emplace_back(begin, i);
      begin = i;
      longest = 0;
    }
    longest = std::max(longest, len);
  }
  groups.emplace_back(begin, batch.size());
  return groups;
}

// The dense adapter matrices as float32 leaves for autograd, zero outside the pattern.
std::vector<at::Tensor> dense_leaves(const Model& model, const TileLayout& layout, const std::vector<float>& values) {
  std::vector<at::Tensor> params;
  for (const LoraTensorInfo& t : layout.tensors) {
    at::Tensor dense = at::zeros({t.rows, t.cols}, at::kFloat);
    scatter_tiles(layout, t, [&](int64_t g) { return values.data() + g * kTileValues; }, dense.data_ptr<float>());
    params.push_back(dense.to(model.device).requires_grad_(true));
  }
  return params;
}

// The leaves as the forward reads them, in the model's dtype (the casts are recorded by autograd).
LoraBatch lora_of(const Model& model, const TileLayout& layout, const std::vector<at::Tensor>& params, double scale) {
  LoraBatch lora;
  lora.a.resize(model.config.num_layers);
  lora.b.resize(model.config.num_layers);
  lora.slots = 1;
  lora.uniform = true;
  lora.uniform_scale = scale;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const LoraTensorInfo& t = layout.tensors[i];
    (t.is_b ? lora.b : lora.a)[t.layer][static_cast<int>(t.module)] = params[i].to(model.dtype);
  }
  return lora;
}

// Target positions of a group: token t is predicted by the hidden state at t - 1.
struct Targets {
  std::vector<int64_t> rows, positions, labels;
};

Targets targets_of(const std::vector<TrainingExample>& batch, size_t begin, size_t end) {
  Targets t;
  for (size_t b = begin; b < end; ++b)
    for (size_t i = 1; i < batch[b].tokens.size(); ++i)
      if (batch[b].is_target[i]) {
        t.rows.push_back(static_cast<int64_t>(b - begin));
        t.positions.push_back(static_cast<int64_t>(i) - 1);
        t.labels.push_back(batch[b].tokens[i]);
      }
  return t;
}

// Loss of the group's targets (summed, divided by the whole batch's target count) backpropagated to the top
// hidden states, a chunk of positions at a time so that at most `chunk` rows of vocabulary logits exist at
// once. Returns the loss; top.grad() then holds d loss / d top.
double head_backward(const Model& model, const at::Tensor& top, const Targets& t, int64_t total, int64_t chunk) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
  const int64_t n = static_cast<int64_t>(t.labels.size());
  at::Tensor rows = at::tensor(t.rows, i64), positions = at::tensor(t.positions, i64);
  at::Tensor labels = at::tensor(t.labels, i64);
  double loss = 0;
  for (int64_t at_ = 0; at_ < n; at_ += chunk) {
    const int64_t len = std::min(chunk, n - at_);
    at::Tensor h = top.index({rows.narrow(0, at_, len), positions.narrow(0, at_, len)});
    at::Tensor l = at::cross_entropy_loss(output_logits(model, h), labels.narrow(0, at_, len), {},
                                          at::Reduction::Sum) /
                   static_cast<double>(total);
    l.backward();
    loss += l.item<double>();
  }
  return loss;
}

// One group's contribution to the gradient, with activation checkpointing by layer: a forward without
// autograd keeps only each layer's input; the backward then recomputes one layer at a time with autograd and
// pushes the gradient through it. Memory holds one layer's activations, not the whole model's.
double accumulate_group(const Model& model, const LoraBatch& lora, const std::vector<TrainingExample>& batch,
                        size_t begin, size_t end, int64_t total, const GradientOptions& options) {
  const int64_t B = static_cast<int64_t>(end - begin), L = model.config.num_layers;
  int64_t T = 0;
  for (size_t b = begin; b < end; ++b) T = std::max<int64_t>(T, batch[b].tokens.size());
  std::vector<int64_t> ids(B * T, 0);  // padding at the end of rows: causal attention never reads it
  for (size_t b = begin; b < end; ++b)
    std::copy(batch[b].tokens.begin(), batch[b].tokens.end(), ids.begin() + static_cast<int64_t>(b - begin) * T);
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  const at::Tensor tokens = at::tensor(ids, i64).view({B, T}).to(model.device);
  const LayerContext ctx = causal_context(model, B, T);

  std::vector<at::Tensor> inputs(L);
  at::Tensor x;
  {
    c10::NoGradGuard no_grad;
    x = embed_tokens(model, tokens);
    for (int64_t li = 0; li < L; ++li) {
      inputs[li] = x;
      x = decoder_layer(model, li, x, ctx, &lora);
    }
  }
  at::Tensor top = x.requires_grad_(true);
  const double loss = head_backward(model, top, targets_of(batch, begin, end), total, options.logits_chunk);
  at::Tensor grad = top.grad();
  for (int64_t li = L - 1; li >= 0; --li) {
    at::Tensor in = std::move(inputs[li]);
    if (li > 0) in.requires_grad_(true);  // layer 0 reads the frozen embeddings
    at::Tensor out = decoder_layer(model, li, in, ctx, &lora);
    if (out.requires_grad()) out.backward(grad);
    if (li > 0) grad = in.grad();
  }
  return loss;
}

}  // namespace

LoraGradients lora_gradients(const Model& model, const TileLayout& layout, const std::vector<float>& values,
                             double scale, const std::vector<TrainingExample>& batch, const GradientOptions& options) {
  validate_batch(model, batch);
  if (static_cast<int64_t>(values.size()) != layout.num_values())
    throw Error(ErrorKind::Internal, "adapter values do not match the pattern");
  if (options.tokens_per_forward < 1 || options.logits_chunk < 1)
    throw Error(ErrorKind::InvalidArgument, "the training token budget and logits chunk must be positive");
  const int64_t total = count_targets(batch);
  if (total == 0) throw Error(ErrorKind::InvalidArgument, "the training batch has no target tokens");

  const std::vector<at::Tensor> params = dense_leaves(model, layout, values);
  LoraGradients out;
  for (const auto& [begin, end] : group_examples(batch, options.tokens_per_forward)) {
    // Casts are rebuilt per group: each group's backward consumes its own graph.
    const LoraBatch lora = lora_of(model, layout, params, scale);
    out.loss += accumulate_group(model, lora, batch, begin, end, total, options);
  }
  out.target_tokens = total;
  out.values.resize(layout.num_values());
  for (size_t ti = 0; ti < layout.tensors.size(); ++ti) {
    // Only the active entries are parameters: the dense gradient elsewhere is dropped here.
    at::Tensor g = params[ti].grad();
    if (!g.defined()) g = at::zeros_like(params[ti]);
    g = g.to(at::kCPU).contiguous();
    gather_tiles(layout, layout.tensors[ti], g.data_ptr<float>(), out.values.data());
  }
  return out;
}

}  // namespace hs
