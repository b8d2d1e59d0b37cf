#include "learning/lora_gradients.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "adapters/tile_layout.h"
#include "common/error.h"
#include "learning/distillation.h"
#include "model/forward.h"
#include "model/model.h"

namespace hs {

int64_t target_tokens(const TrainingExample& ex) {
  int64_t n = 0;
  for (size_t t = 1; t < ex.is_target.size(); ++t) n += ex.is_target[t];
  return n;
}

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
  for (const TrainingExample& ex : batch) n += target_tokens(ex);
  return n;
}

// Consecutive sequences grouped so that each group's padded size stays within the token budget (a sequence
// longer than the budget forms a group alone): memory then depends on the budget, not on the batch.
std::vector<std::pair<size_t, size_t>> group_sequences(const std::vector<const std::vector<int32_t>*>& seqs,
                                                       int64_t budget) {
  std::vector<std::pair<size_t, size_t>> groups;
  size_t begin = 0;
  int64_t longest = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t len = static_cast<int64_t>(seqs[i]->size());
    const int64_t padded = std::max(longest, len) * static_cast<int64_t>(i - begin + 1);
    if (i > begin && padded > budget) {
      groups.emplace_back(begin, i);
      begin = i;
      longest = 0;
    }
    longest = std::max(longest, len);
  }
  groups.emplace_back(begin, seqs.size());
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
  lora.slots = 1;
  lora.uniform = true;
  lora.uniform_scale = scale;
  LoraProjections a(model.config.num_layers), b(model.config.num_layers);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const LoraTensorInfo& t = layout.tensors[i];
    (t.is_b ? b : a)[t.layer][static_cast<int>(t.module)] = params[i].to(model.dtype);
  }
  set_lora_groups(lora, a, b, model.config);
  return lora;
}

// What a group's loss reads: the top hidden states at (row, position) pairs, and the loss of a chunk of them
// from their logits, already divided as the whole batch's loss is.
struct Head {
  std::vector<int64_t> rows, positions;
  std::function<at::Tensor(const at::Tensor& logits, int64_t begin, int64_t len)> loss;
};

// Cross-entropy of the examples' targets: token t is predicted by the hidden state at t - 1. Each example's
// summed loss is added to (*sums)[its index in the batch].
Head target_head(const Model& model, const std::vector<TrainingExample>& batch, size_t begin, size_t end,
                 int64_t total, std::vector<double>* sums) {
  Head h;
  std::vector<int64_t> labels;
  for (size_t b = begin; b < end; ++b)
    for (size_t i = 1; i < batch[b].tokens.size(); ++i)
      if (batch[b].is_target[i]) {
        h.rows.push_back(static_cast<int64_t>(b - begin));
        h.positions.push_back(static_cast<int64_t>(i) - 1);
        labels.push_back(batch[b].tokens[i]);
      }
  const at::Tensor y = at::tensor(labels, at::TensorOptions().dtype(at::kLong).device(model.device));
  // Summed on the host in position order (the chunk's loss is read there anyway), so that a replay adds the
  // same floats in the same order: early stopping compares the result.
  h.loss = [y, rows = h.rows, total, sums, begin](const at::Tensor& logits, int64_t at_, int64_t len) {
    const at::Tensor ce = at::cross_entropy_loss(logits, y.narrow(0, at_, len), {}, at::Reduction::None);
    const at::Tensor host = ce.detach().to(at::kDouble).to(at::kCPU).contiguous();
    for (int64_t i = 0; i < len; ++i)
      (*sums)[begin + static_cast<size_t>(rows[static_cast<size_t>(at_ + i)])] += host.data_ptr<double>()[i];
    return ce.sum() / static_cast<double>(total);
  };
  return h;
}

// Per position, KL(teacher || model) over the teacher's top k tokens and one bucket for the rest.
at::Tensor topk_kl(const at::Tensor& logits, const at::Tensor& ids, const at::Tensor& teacher,
                   const at::Tensor& teacher_rest) {
  const at::Tensor lse = logits.logsumexp(-1, true);
  const at::Tensor top = logits.gather(-1, ids) - lse;
  const at::Tensor rest = logits.scatter(-1, ids, -INFINITY).logsumexp(-1, true) - lse;
  return (teacher.exp() * (teacher - top)).sum(-1) + (teacher_rest.exp() * (teacher_rest - rest)).squeeze(-1);
}

// A group of anchors' positions (into h) and their teacher targets as tensors, position after position:
// ids [n, k] int64, log-probabilities [n, k] and the rest's [n, 1].
std::array<at::Tensor, 3> teacher_tensors(const Model& model, const std::vector<const TeacherTargets*>& anchors,
                                          size_t begin, size_t end, Head& h) {
  std::vector<int64_t> ids;
  std::vector<float> lp, rest;
  const int64_t k = anchors[begin]->top_k;
  for (size_t a = begin; a < end; ++a) {
    const TeacherTargets& t = *anchors[a];
    if (t.top_k != k) throw Error(ErrorKind::Internal, "teacher targets of different top k in one batch");
    for (int64_t p = 0; p < t.positions(); ++p) {
      h.rows.push_back(static_cast<int64_t>(a - begin));
      h.positions.push_back(t.first + p);
    }
    ids.insert(ids.end(), t.top_ids.begin(), t.top_ids.end());
    lp.insert(lp.end(), t.top_logprobs.begin(), t.top_logprobs.end());
    rest.insert(rest.end(), t.rest_logprobs.begin(), t.rest_logprobs.end());
  }
  const int64_t n = static_cast<int64_t>(rest.size());
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(model.device);
  return {at::tensor(ids, at::TensorOptions().dtype(at::kLong).device(model.device)).view({n, k}),
          at::tensor(lp, f32).view({n, k}), at::tensor(rest, f32).view({n, 1})};
}

// weight * KL summed over a group of anchors' positions, divided by `total` positions.
Head distillation_head(const Model& model, const std::vector<const TeacherTargets*>& anchors, size_t begin,
                       size_t end, double weight, int64_t total) {
  Head h;
  const std::array<at::Tensor, 3> t = teacher_tensors(model, anchors, begin, end, h);
  h.loss = [t, weight, total](const at::Tensor& logits, int64_t at_, int64_t len) {
    const at::Tensor kl = topk_kl(logits, t[0].narrow(0, at_, len), t[1].narrow(0, at_, len), t[2].narrow(0, at_, len));
    return kl.sum() * (weight / static_cast<double>(total));
  };
  return h;
}

// The group's tokens, padded at the end of rows (causal attention never reads the padding).
at::Tensor group_tokens(const Model& model, const std::vector<const std::vector<int32_t>*>& seqs, size_t begin,
                        size_t end) {
  const int64_t B = static_cast<int64_t>(end - begin);
  int64_t T = 0;
  for (size_t b = begin; b < end; ++b) T = std::max<int64_t>(T, seqs[b]->size());
  std::vector<int64_t> ids(B * T, 0);
  for (size_t b = begin; b < end; ++b)
    std::copy(seqs[b]->begin(), seqs[b]->end(), ids.begin() + static_cast<int64_t>(b - begin) * T);
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({B, T}).to(model.device);
}

// The head's loss backpropagated to the top hidden states, a chunk of positions at a time so that at most
// `chunk` rows of vocabulary logits exist at once. Returns the loss; top.grad() then holds d loss / d top.
double head_backward(const Model& model, const at::Tensor& top, const Head& head, int64_t chunk) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
  const int64_t n = static_cast<int64_t>(head.rows.size());
  at::Tensor rows = at::tensor(head.rows, i64), positions = at::tensor(head.positions, i64);
  double loss = 0;
  for (int64_t at_ = 0; at_ < n; at_ += chunk) {
    const int64_t len = std::min(chunk, n - at_);
    at::Tensor h = top.index({rows.narrow(0, at_, len), positions.narrow(0, at_, len)});
    at::Tensor l = head.loss(output_logits(model, h), at_, len);
    l.backward();
    loss += l.item<double>();
  }
  return loss;
}

// One group's contribution to the gradient, with activation checkpointing by layer: a forward without
// autograd keeps only each layer's input; the backward then recomputes one layer at a time with autograd and
// pushes the gradient through it. Memory holds one layer's activations, not the whole model's.
double accumulate_group(const Model& model, const LoraBatch& lora, const at::Tensor& tokens, const Head& head,
                        const GradientOptions& options) {
  const int64_t L = model.config.num_layers;
  const LayerContext ctx = causal_context(model, tokens.size(0), tokens.size(1));
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
  const double loss = head_backward(model, top, head, options.logits_chunk);
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

void validate_values(const TileLayout& layout, const std::vector<float>& values, const GradientOptions& options) {
  if (static_cast<int64_t>(values.size()) != layout.num_values())
    throw Error(ErrorKind::Internal, "adapter values do not match the pattern");
  if (options.tokens_per_forward < 1 || options.logits_chunk < 1)
    throw Error(ErrorKind::InvalidArgument, "the training token budget and logits chunk must be positive");
}

std::vector<const std::vector<int32_t>*> anchor_sequences(const std::vector<const TeacherTargets*>& anchors) {
  std::vector<const std::vector<int32_t>*> seqs;
  for (const TeacherTargets* t : anchors) seqs.push_back(&t->tokens);
  return seqs;
}

int64_t anchor_positions(const std::vector<const TeacherTargets*>& anchors) {
  int64_t n = 0;
  for (const TeacherTargets* t : anchors) n += t->positions();
  return n;
}

// The distillation term's gradient added to the leaves; returns its mean KL, unweighted.
double accumulate_distillation(const Model& model, const TileLayout& layout, const std::vector<at::Tensor>& params,
                               double scale, const DistillationTerm& d, const GradientOptions& options) {
  const int64_t total = anchor_positions(d.anchors);
  const std::vector<const std::vector<int32_t>*> seqs = anchor_sequences(d.anchors);
  double kl = 0;
  for (const auto& [begin, end] : group_sequences(seqs, options.tokens_per_forward)) {
    const LoraBatch lora = lora_of(model, layout, params, scale);
    const Head head = distillation_head(model, d.anchors, begin, end, d.weight, total);
    kl += accumulate_group(model, lora, group_tokens(model, seqs, begin, end), head, options);
  }
  return kl / d.weight;
}

}  // namespace

LoraGradients lora_gradients(const Model& model, const TileLayout& layout, const std::vector<float>& values,
                             double scale, const std::vector<TrainingExample>& batch, const GradientOptions& options,
                             const DistillationTerm* distill) {
  validate_batch(model, batch);
  validate_values(layout, values, options);
  const int64_t total = count_targets(batch);
  if (total == 0) throw Error(ErrorKind::InvalidArgument, "the training batch has no target tokens");

  const std::vector<at::Tensor> params = dense_leaves(model, layout, values);
  std::vector<const std::vector<int32_t>*> seqs;
  for (const TrainingExample& ex : batch) seqs.push_back(&ex.tokens);
  LoraGradients out;
  std::vector<double> sums(batch.size(), 0.0);
  for (const auto& [begin, end] : group_sequences(seqs, options.tokens_per_forward)) {
    // Casts are rebuilt per group: each group's backward consumes its own graph.
    const LoraBatch lora = lora_of(model, layout, params, scale);
    const Head head = target_head(model, batch, begin, end, total, &sums);
    out.loss += accumulate_group(model, lora, group_tokens(model, seqs, begin, end), head, options);
  }
  for (size_t b = 0; b < batch.size(); ++b)
    out.example_losses.push_back(sums[b] / static_cast<double>(std::max<int64_t>(1, target_tokens(batch[b]))));
  if (distill && distill->weight > 0 && !distill->anchors.empty())
    out.kl = accumulate_distillation(model, layout, params, scale, *distill, options);
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

Drift distillation_drift(const Model& model, const TileLayout& layout, const std::vector<float>& values, double scale,
                         const std::vector<TeacherTargets>& anchors, const GradientOptions& options) {
  validate_values(layout, values, options);
  if (anchors.empty()) throw Error(ErrorKind::InvalidArgument, "drift is measured on at least one anchor");
  c10::NoGradGuard no_grad;
  std::vector<const TeacherTargets*> list;
  for (const TeacherTargets& t : anchors) list.push_back(&t);
  const std::vector<const std::vector<int32_t>*> seqs = anchor_sequences(list);
  std::vector<at::Tensor> params = dense_leaves(model, layout, values);
  for (at::Tensor& p : params) p.requires_grad_(false);
  const LoraBatch lora = lora_of(model, layout, params, scale);
  Drift d;
  double sum = 0;
  for (const auto& [begin, end] : group_sequences(seqs, options.tokens_per_forward)) {
    const at::Tensor tokens = group_tokens(model, seqs, begin, end);
    const LayerContext ctx = causal_context(model, tokens.size(0), tokens.size(1));
    at::Tensor x = embed_tokens(model, tokens);
    for (int64_t li = 0; li < model.config.num_layers; ++li) x = decoder_layer(model, li, x, ctx, &lora);
    Head h;
    const std::array<at::Tensor, 3> t = teacher_tensors(model, list, begin, end, h);
    const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
    const at::Tensor top = x.index({at::tensor(h.rows, i64), at::tensor(h.positions, i64)});
    // A chunk of positions at a time, as in training: at most logits_chunk rows of vocabulary logits at once.
    std::vector<at::Tensor> parts;
    for (int64_t at_ = 0; at_ < top.size(0); at_ += options.logits_chunk) {
      const int64_t len = std::min(options.logits_chunk, top.size(0) - at_);
      parts.push_back(topk_kl(output_logits(model, top.narrow(0, at_, len)), t[0].narrow(0, at_, len),
                              t[1].narrow(0, at_, len), t[2].narrow(0, at_, len)));
    }
    const at::Tensor kl = at::cat(parts).to(at::kCPU);
    for (size_t a = begin, at_ = 0; a < end; at_ += list[a]->positions(), ++a) {
      const double s = kl.narrow(0, static_cast<int64_t>(at_), list[a]->positions()).sum().item<double>();
      sum += s;
      d.per_anchor.push_back(s / static_cast<double>(list[a]->positions()));
      d.max = std::max(d.max, d.per_anchor.back());
    }
  }
  d.mean = sum / static_cast<double>(anchor_positions(list));
  return d;
}

}  // namespace hs
