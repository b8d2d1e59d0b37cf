#include "learning/lora_gradients.h"

#include <ATen/ATen.h>

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

}  // namespace

LoraGradients lora_gradients(const Model& model, const TileLayout& layout, const std::vector<float>& values,
                             double scale, const std::vector<TrainingExample>& batch) {
  validate_batch(model, batch);
  if (static_cast<int64_t>(values.size()) != layout.num_values())
    throw Error(ErrorKind::Internal, "adapter values do not match the pattern");
  const int64_t L = model.config.num_layers;

  // Dense float32 leaves for autograd, zero outside the pattern; the forward sees them in the model's dtype.
  std::vector<at::Tensor> params;
  LoraBatch lora;
  lora.a.resize(L);
  lora.b.resize(L);
  lora.slots = 1;
  lora.uniform = true;
  lora.uniform_scale = scale;
  for (const LoraTensorInfo& t : layout.tensors) {
    at::Tensor dense = at::zeros({t.rows, t.cols}, at::kFloat);
    scatter_tiles(layout, t, [&](int64_t g) { return values.data() + g * kTileValues; }, dense.data_ptr<float>());
    at::Tensor param = dense.to(model.device).requires_grad_(true);
    params.push_back(param);
    (t.is_b ? lora.b : lora.a)[t.layer][static_cast<int>(t.module)] = param.to(model.dtype);
  }

  // Token t is predicted by the logits at t - 1: one forward over the padded batch, logits at those only.
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> rows, positions, labels;
  int64_t longest = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const TrainingExample& ex = batch[b];
    seqs.push_back(ex.tokens);
    longest = std::max<int64_t>(longest, ex.tokens.size());
    for (size_t t = 1; t < ex.tokens.size(); ++t)
      if (ex.is_target[t]) {
        rows.push_back(static_cast<int64_t>(b));
        positions.push_back(static_cast<int64_t>(t) - 1);
        labels.push_back(ex.tokens[t]);
      }
  }
  if (labels.empty()) throw Error(ErrorKind::InvalidArgument, "the training batch has no target tokens");
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
  KvCache cache = make_kv_cache(model, static_cast<int64_t>(batch.size()), longest);
  BatchStep step = prefill_chunk(seqs, 0, longest, model.device);
  step.pick_rows = at::tensor(rows, i64);
  step.pick_positions = at::tensor(positions, i64);
  at::Tensor picked = forward(model, cache, step, &lora);  // [N, vocab]
  at::Tensor loss = at::cross_entropy_loss(picked, at::tensor(labels, i64));
  loss.backward();

  LoraGradients out;
  out.loss = loss.item<double>();
  out.target_tokens = static_cast<int64_t>(labels.size());
  out.values.resize(layout.num_values());
  for (size_t ti = 0; ti < layout.tensors.size(); ++ti) {
    const LoraTensorInfo& t = layout.tensors[ti];
    // Only the active entries are parameters: the dense gradient elsewhere is dropped here.
    at::Tensor g = params[ti].grad().to(at::kCPU).contiguous();
    gather_tiles(layout, t, g.data_ptr<float>(), out.values.data());
  }
  return out;
}

}  // namespace hs
