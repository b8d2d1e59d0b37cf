#include "model/forward.h"

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "common/error.h"
#include "model/cpu_ops.h"
#include "model/int4_weights.h"
#include "model/rope_frequencies.h"
#include "model/slot_attention.h"

namespace hs {

namespace {

// RMSNorm over the last dimension as transformers computes it: in float32, cast back before the weight
// multiply. The weight is [D], or one row per head ([heads, D]) for norms of several heads at once. On CUDA,
// ATen's fused kernel instead of eight launches; with a [D] weight it rounds once, after the weight multiply
// (a difference within one rounding of the model's dtype).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t D = x.size(-1);
  if (takes_cpu_loops(x) && weight.scalar_type() == at::kFloat)
    return cpu_rms_norm(x, weight, eps);
  if (x.is_cuda()) {
    if (weight.dim() == 1) return at::rms_norm(x, {D}, weight, eps);
    return at::rms_norm(x, {D}, std::nullopt, eps) * weight;
  }
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

// Rotary embedding of heads x [B, T, heads, D] with the step's tables [B, T, 1, D]. The sine table carries
// rotate-half's sign (build_rope_tables), so that x cos + rotate_half(x) sin is three kernels:
// rotate_half(x) sin = roll(x, D / 2) * [-sin, sin].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  if (takes_cpu_loops(x) && cos.scalar_type() == at::kFloat && cos.size(0) == x.size(0) && cos.size(1) == x.size(1))
    return cpu_rope(x, cos, signed_sin);
  return at::addcmul(x * cos, at::roll(x, x.size(-1) / 2, -1), signed_sin);
}

// x [..., in] times a weight kept quantized. The kernels have no derivative: a pass that needs x's gradient
// multiplies by the dequantized weight instead.
at::Tensor quantized_linear(const at::Tensor& x, const Linear& lin) {
  const at::Tensor x2 = x.reshape({-1, x.size(-1)});
  const bool grad = tracks_grad(x);
  at::Tensor y;
  if (lin.q4.defined()) {
    y = int4_linear(x2, lin);
  } else if (lin.rows.defined()) {
    y = grad ? at::linear(x2, ggml_dequantize_rows(lin.rows).to(x.scalar_type())) : ggml_matmul(x2, lin.rows);
  } else {
    // At any row count the int8 kernel keeps pace with, or beats, a float32 product (2 cores, 49152 x 576: 1
    // row in 1.7 ms, 8 in 5.4, 128 in 87 against 124 dequantized).
    y = grad ? at::linear(x2, lin.q8.to(x.scalar_type()) * lin.q8_scale.to(x.scalar_type()).unsqueeze(1))
             : at::_weight_int8pack_mm(x2.to(at::kBFloat16).contiguous(), lin.q8, lin.q8_scale);
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = y.size(-1);
  return y.to(x.scalar_type()).view(shape);
}

// A dense projection adds its bias inside the product, rounding once as torch's Linear does (in bfloat16 a
// separate add rounds twice).
at::Tensor linear(const at::Tensor& x, const Linear& lin) {
  if (lin.weight.defined()) return at::linear(x, lin.weight, lin.bias);
  const at::Tensor y = quantized_linear(x, lin);
  return lin.bias.defined() ? y + lin.bias : y;
}

// A (fused) projection plus, where the batch adapts any of its parts, each row's scaled B (A x) (see LoraGroup).
at::Tensor project(const at::Tensor& x, const Linear& lin, const LoraBatch* lora, int64_t layer, LoraGroupIndex group) {
  at::Tensor y = linear(x, lin);
  if (!lora || !lora->groups[layer][group].a.defined()) return y;
  const LoraGroup& g = lora->groups[layer][group];
  const int64_t in = x.size(-1), out = y.size(-1);
  at::Tensor u = at::mm(x.reshape({-1, in}), g.a.t());  // [rows * T, parts * width]
  if (lora->uniform) return at::addmm(y.reshape({-1, out}), u, g.b.t(), 1.0, lora->uniform_scale).view(y.sizes());
  // Every part's rank components scaled by the row's slot mask: [rows, T, parts, width] * [rows|1, 1|T, 1, width].
  u = (u.view({x.size(0), -1, g.parts, lora->width}) * lora->row_scale.unsqueeze(2)).view({-1, g.parts * lora->width});
  return at::addmm(y.reshape({-1, out}), u, g.b.t()).view(y.sizes());
}

// RoPE rows at positions pos ([B, T] int64): [B, T, 1, head_dim] each. Padding tokens may sit past the
// context; their rows are clamped (their results are never read).
std::pair<at::Tensor, at::Tensor> rope_tables(const Model& model, const at::Tensor& pos) {
  const at::Tensor flat = pos.reshape({-1}).clamp(0, model.rope_cos.size(0) - 1);
  auto rows = [&](const at::Tensor& table) {
    return table.index_select(0, flat).view({pos.size(0), pos.size(1), 1, table.size(1)});
  };
  return {rows(model.rope_cos), rows(model.rope_sin)};
}

// Which keys (positions `keys`) each query (positions `queries`) attends, broadcast: the causal ones, and of
// those only the last `window` with a sliding window (0: none), as transformers' sliding_window_overlay.
at::Tensor visible_keys(const at::Tensor& keys, const at::Tensor& queries, int64_t window) {
  at::Tensor seen = keys <= queries;
  return window > 0 ? seen.logical_and_(keys > queries - window) : seen;
}

// Decode rows through the flash kernel, reading each row's keys where its slot keeps them: [R1, H, D].
at::Tensor flash_decode_rows(int64_t layer, const at::Tensor& q, KvCache& cache, const SlotAttention& a,
                             double scale) {
  const int64_t KVH = cache.k[layer].size(2), D = cache.k[layer].size(3);
  const at::Tensor queries = a.one_token.defined() ? q[0].index_select(0, a.one_token) : q[0];
  return std::get<0>(at::_flash_attention_forward(
      queries, cache.k[layer].view({-1, KVH, D}), cache.v[layer].view({-1, KVH, D}), a.flash_cu_q, a.flash_cu_k,
      /*max_q=*/1, /*max_k=*/cache.capacity + 1, 0.0, /*is_causal=*/false, /*return_debug_mask=*/false, scale,
      std::nullopt, std::nullopt, a.flash_len));
}

// Decode rows through one masked attention over a range of slots: [R1, H, D].
at::Tensor masked_decode_rows(int64_t layer, const at::Tensor& q, KvCache& cache, const SlotAttention& a,
                              double scale) {
  // The query heads sharing a key head are that head's "sequence" of queries (one token each, so no causal
  // order among them): grouped-query attention without copying keys and values per query head.
  const int64_t S = a.one_slots, H = q.size(2), D = q.size(3), KVH = cache.k[layer].size(2);
  const int64_t keys_read = a.one_extent - a.one_begin;
  const at::Tensor rows = a.chunks.empty() ? q[0] : q[0].index_select(0, a.one_token);  // [R1, H, D]
  at::Tensor keys = cache.k[layer].narrow(0, a.one_first, S).narrow(1, a.one_begin, keys_read).transpose(1, 2);
  at::Tensor values = cache.v[layer].narrow(0, a.one_first, S).narrow(1, a.one_begin, keys_read).transpose(1, 2);
  // A single row reads all of its slot's keys from one_begin: no mask, and no scatter to slots and back.
  if (rows.size(0) == 1)
    return at::scaled_dot_product_attention(rows.view({1, KVH, H / KVH, D}), keys, values, std::nullopt, 0.0, false,
                                            scale)
        .reshape({1, H, D});
  at::Tensor queries = at::zeros({S, H, D}, q.options());
  queries.index_copy_(0, a.one_slot, rows);
  at::Tensor o = at::scaled_dot_product_attention(queries.view({S, KVH, H / KVH, D}), keys, values, a.one_mask, 0.0,
                                                  false, scale);  // [S, KVH, H / KVH, D]
  return o.reshape({S, H, D}).index_select(0, a.one_slot);
}

// Attention of a token-major step: q [1, N, H, D], k and v [1, N, KVH, D]; returns [1, H, N, D].
at::Tensor attend_slots(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        KvCache& cache, const SlotAttention& a, double scale) {
  const int64_t KVH = k.size(2), D = k.size(3);
  cache.k[layer].view({-1, KVH, D}).index_copy_(0, a.write_flat, k[0]);
  cache.v[layer].view({-1, KVH, D}).index_copy_(0, a.write_flat, v[0]);
  if (a.flash && !a.one_token.defined()) return flash_decode_rows(layer, q, cache, a, scale).transpose(0, 1).unsqueeze(0);
  if (!a.flash && a.one_token.defined() && a.chunks.empty())  // decode rows only: no scatter into a step's tokens
    return masked_decode_rows(layer, q, cache, a, scale).transpose(0, 1).unsqueeze(0);
  at::Tensor out = at::empty_like(q[0]);  // [N, H, D]
  if (a.one_token.defined())
    out.index_copy_(0, a.one_token, a.flash ? flash_decode_rows(layer, q, cache, a, scale)
                                            : masked_decode_rows(layer, q, cache, a, scale));
  for (const SlotAttention::Chunk& c : a.chunks) {
    at::Tensor queries = q[0].narrow(0, c.first_token, c.len).transpose(0, 1).unsqueeze(0);  // [1, H, len, D]
    at::Tensor keys = cache.k[layer][c.slot].narrow(0, 0, c.start + c.len).transpose(0, 1).unsqueeze(0);
    at::Tensor values = cache.v[layer][c.slot].narrow(0, 0, c.start + c.len).transpose(0, 1).unsqueeze(0);
    // A chunk without a mask is plain causal attention, which the fused kernels take without one.
    const bool causal = !c.mask.defined();
    const std::optional<at::Tensor> mask = causal ? std::nullopt : std::optional<at::Tensor>(c.mask);
    at::Tensor o = at::scaled_dot_product_attention(queries, keys, values, mask, 0.0, /*is_causal=*/causal, scale,
                                                    /*enable_gqa=*/true);  // [1, H, len, D]
    out.narrow(0, c.first_token, c.len).copy_(o[0].transpose(0, 1));
  }
  return out.transpose(0, 1).unsqueeze(0);
}

// Attention of this step's queries [B, T, H, D] to keys and values [B, T, KVH, D] (already rotated): through
// the cache, whose positions are written first, or causally over the step alone.
at::Tensor attend(const Model& model, int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const LayerContext& ctx) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(model.config.head_dim));
  if (ctx.slots) return attend_slots(layer, q, k, v, *ctx.cache, *ctx.slots, scale);
  if (!ctx.cache) {
    const bool causal = !ctx.mask.defined();
    const std::optional<at::Tensor> mask = causal ? std::nullopt : std::optional<at::Tensor>(ctx.mask);
    return at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, 0.0,
                                            /*is_causal=*/causal, scale, /*enable_gqa=*/true);
  }
  KvCache& cache = *ctx.cache;
  cache.k[layer].index_put_({ctx.cache_rows, ctx.write_pos}, k);
  cache.v[layer].index_put_({ctx.cache_rows, ctx.write_pos}, v);
  at::Tensor keys = cache.k[layer].narrow(1, 0, ctx.extent).transpose(1, 2);  // [B, KVH, L, D]
  at::Tensor values = cache.v[layer].narrow(1, 0, ctx.extent).transpose(1, 2);
  return at::scaled_dot_product_attention(q.transpose(1, 2), keys, values, ctx.mask, 0.0, false, scale,
                                          /*enable_gqa=*/true);
}

}  // namespace

KvCache make_kv_cache(const Model& model, int64_t rows, int64_t capacity) {
  const ModelConfig& c = model.config;
  KvCache cache;
  cache.rows = rows;
  cache.capacity = capacity;
  auto opts = at::TensorOptions().dtype(model.dtype).device(model.device);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    cache.k.push_back(at::zeros({rows, capacity + 1, c.num_kv_heads, c.head_dim}, opts));
    cache.v.push_back(at::zeros({rows, capacity + 1, c.num_kv_heads, c.head_dim}, opts));
  }
  return cache;
}

BatchStep make_step(const std::vector<int64_t>& tokens, int64_t T, const std::vector<int64_t>& start_pos,
                    const std::vector<int64_t>& n_new, const at::Device& device, bool all_logits) {
  const int64_t rows = static_cast<int64_t>(start_pos.size());
  int64_t extent = 0;
  for (int64_t b = 0; b < rows; ++b) extent = std::max(extent, start_pos[b] + n_new[b]);
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  return BatchStep{at::tensor(tokens, i64).view({rows, T}).to(device), at::tensor(start_pos, i64).to(device),
                   at::tensor(n_new, i64).to(device), extent, all_logits};
}

BatchStep prefill_chunk(const std::vector<std::vector<int32_t>>& prompts, int64_t offset, int64_t chunk,
                        const at::Device& device, bool all_logits) {
  const int64_t rows = static_cast<int64_t>(prompts.size());
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, p.size());
  const int64_t T = std::max<int64_t>(1, std::min(chunk, longest - offset));
  std::vector<int64_t> tokens(rows * T, 0), start(rows), n_new(rows);
  for (int64_t b = 0; b < rows; ++b) {
    const int64_t len = static_cast<int64_t>(prompts[b].size());
    start[b] = std::min(offset, len);
    n_new[b] = std::clamp<int64_t>(len - offset, 0, T);
    for (int64_t t = 0; t < n_new[b]; ++t) tokens[b * T + t] = prompts[b][offset + t];
  }
  return make_step(tokens, T, start, n_new, device, all_logits);
}

void build_rope_tables(Model& model) {
  const ModelConfig& c = model.config;
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
  const RopeFrequencies f = rope_frequencies(c);
  at::Tensor freqs = at::arange(c.context_length, i64).to(at::kFloat).unsqueeze(-1) * f.inv_freq.to(model.device);
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [ctx, D]
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (f.attention_factor != 1.0) {
    cos = cos * f.attention_factor;
    sin = sin * f.attention_factor;
  }
  model.rope_cos = cos.to(model.dtype);
  // rotate_half's sign folded in: its first half rotates in -x2 (forward.cpp: rope).
  sin.narrow(-1, 0, c.head_dim / 2).neg_();
  model.rope_sin = sin.to(model.dtype);
}

LayerContext causal_context(const Model& model, int64_t rows, int64_t T) {
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);
  LayerContext ctx;
  const at::Tensor pos = at::arange(T, i64);
  std::tie(ctx.cos, ctx.sin) = rope_tables(model, pos.unsqueeze(0).expand({rows, T}));
  const int64_t window = model.config.sliding_window;
  if (window > 0 && T > window) ctx.mask = visible_keys(pos.view({1, 1, 1, T}), pos.view({1, 1, T, 1}), window);
  return ctx;
}

at::Tensor embed_tokens(const Model& model, const at::Tensor& tokens) {
  const at::Tensor flat = tokens.reshape({-1});
  const ModelWeights& w = model.weights;
  // A tied table kept only in the vocabulary projection's quantized form (int4 models): the rows dequantized.
  at::Tensor rows;
  if (w.embed.defined())
    rows = w.embed.index_select(0, flat);
  else if (w.lm_head.rows.defined())
    rows = ggml_dequantize_rows(w.lm_head.rows, flat).to(model.dtype);
  else
    rows = w.lm_head.q8.index_select(0, flat).to(model.dtype) *
           w.lm_head.q8_scale.index_select(0, flat).to(model.dtype).unsqueeze(1);
  return rows.view({tokens.size(0), tokens.size(1), model.config.hidden_size});
}

namespace {

// Queries and keys of a fused q/k/v output [B, T, (H + 2 KVH) D]: Qwen3's per-head norms and RoPE run over
// the query and key heads at once. Returns q [B, T, H, D] and k [B, T, KVH, D].
std::pair<at::Tensor, at::Tensor> rotated_qk(const Model& model, const LayerWeights& l, const at::Tensor& qkv,
                                             const LayerContext& ctx) {
  const ModelConfig& c = model.config;
  const int64_t H = c.num_heads, KVH = c.num_kv_heads, D = c.head_dim;
  at::Tensor qk = qkv.narrow(-1, 0, (H + KVH) * D).view({qkv.size(0), qkv.size(1), H + KVH, D});
  if (l.qk_norm.defined()) qk = rms_norm(qk, l.qk_norm, c.rms_norm_eps);
  qk = rope(qk, ctx.cos, ctx.sin);
  return {qk.narrow(2, 0, H), qk.narrow(2, H, KVH)};
}

}  // namespace

at::Tensor decoder_layer(const Model& model, int64_t li, const at::Tensor& x, const LayerContext& ctx,
                         const LoraBatch* lora) {
  const ModelConfig& c = model.config;
  const LayerWeights& l = model.weights.layers[li];
  const int64_t B = x.size(0), T = x.size(1), kv_out = c.num_kv_heads * c.head_dim;
  at::Tensor h = rms_norm(x, l.attn_norm, c.rms_norm_eps);
  at::Tensor qkv = project(h, l.qkv, lora, li, kLoraQkv);
  auto [q, k] = rotated_qk(model, l, qkv, ctx);
  at::Tensor v = qkv.narrow(-1, qkv.size(-1) - kv_out, kv_out).view({B, T, c.num_kv_heads, c.head_dim});
  at::Tensor attn = attend(model, li, q, k, v, ctx);  // [B, H, T, D]
  at::Tensor out = x + project(attn.transpose(1, 2).reshape({B, T, c.num_heads * c.head_dim}), l.o, lora, li, kLoraO);
  h = rms_norm(out, l.ffn_norm, c.rms_norm_eps);
  at::Tensor gate_up = project(h, l.gate_up, lora, li, kLoraGateUp);
  const int64_t ff = c.intermediate_size;
  return out + project(at::silu(gate_up.narrow(-1, 0, ff)) * gate_up.narrow(-1, ff, ff), l.down, lora, li, kLoraDown);
}

at::Tensor output_logits(const Model& model, const at::Tensor& hidden) {
  return linear(rms_norm(hidden, model.weights.final_norm, model.config.rms_norm_eps), model.weights.lm_head)
      .to(at::kFloat);
}

at::Tensor forward(const Model& model, KvCache& cache, const BatchStep& step, const LoraBatch* lora) {
  const int64_t B = step.tokens.size(0), T = step.tokens.size(1), L = step.kv_extent;
  if (B != cache.rows) throw Error(ErrorKind::Internal, "batch rows do not match the KV cache");
  if (L > cache.capacity)
    throw Error(ErrorKind::ContextOverflow, "the sequence needs " + std::to_string(L) +
                                                " positions but the KV cache holds " + std::to_string(cache.capacity));
  const auto i64 = at::TensorOptions().dtype(at::kLong).device(model.device);

  // Absolute positions of this step's tokens; padding tokens write to the scratch slot.
  LayerContext ctx;
  ctx.cache = &cache;
  ctx.extent = L;
  at::Tensor offsets = at::arange(T, i64);
  at::Tensor pos = step.start_pos.unsqueeze(1) + offsets.unsqueeze(0);                    // [B, T]
  at::Tensor valid = offsets.unsqueeze(0) < step.n_new.unsqueeze(1);                      // [B, T]
  ctx.write_pos = at::where(valid, pos, at::full_like(pos, cache.capacity));              // [B, T]
  ctx.cache_rows = at::arange(B, i64).unsqueeze(1).expand({B, T});
  ctx.mask = visible_keys(at::arange(L, i64).view({1, 1, 1, L}), pos.view({B, 1, T, 1}),
                         model.config.sliding_window);                                  // [B, 1, T, L]
  std::tie(ctx.cos, ctx.sin) = rope_tables(model, pos);

  at::Tensor x = embed_tokens(model, step.tokens);
  for (int64_t li = 0; li < model.config.num_layers; ++li) x = decoder_layer(model, li, x, ctx, lora);
  if (!step.all_logits) {
    at::Tensor last = (step.n_new - 1).clamp_min(0);
    x = x.index({at::arange(B, i64), last});  // [B, hidden]
  }
  return output_logits(model, x);
}

void check_row_fits(const KvCache& cache, size_t r, int64_t slot, int64_t start, int64_t len) {
  if (len < 1 || slot < 0 || slot >= cache.rows || start < 0 || start + len > cache.capacity)
    throw Error(ErrorKind::Internal, "step row " + std::to_string(r) + " (slot " + std::to_string(slot) + ", positions " +
                                         std::to_string(start) + " + " + std::to_string(len) +
                                         ") does not fit a KV cache of " + std::to_string(cache.rows) + " slots of " +
                                         std::to_string(cache.capacity) + " positions");
}

bool flash_decode(const Model& model) {
  static const bool allowed = [] {
    const char* v = std::getenv("HYPRSTREAM_FLASH_DECODE");
    return !v || std::string(v) != "0";
  }();
  const int64_t D = model.config.head_dim;
  // A sliding window would need the kernel's window_size_left, which no GPU test here covers yet: such models
  // decode through the masked path (and without CUDA graphs).
  if (model.config.sliding_window > 0) return false;
  if (!allowed || !model.device.is_cuda() || (model.dtype != at::kBFloat16 && model.dtype != at::kHalf) || D % 8 != 0 ||
      D > 256)
    return false;
  // The flash kernel runs on Ampere (compute capability 8.0) and later.
  const int index = model.device.has_index() ? model.device.index() : at::cuda::current_device();
  return at::cuda::getDeviceProperties(index)->major >= 8;
}

void set_flash_decode(SlotAttention& a, const KvCache& cache, const at::Tensor& slot, const at::Tensor& len) {
  const auto i32 = at::TensorOptions().dtype(at::kInt).device(slot.device());
  a.flash = true;
  a.flash_cu_q = at::arange(slot.size(0) + 1, i32);
  // With lengths given (seqused_k), the kernel reads only each row's start from cu_k; the array still needs
  // rows + 1 entries, and the last one is never read.
  a.flash_cu_k = at::cat({(slot * (cache.capacity + 1)).to(at::kInt), at::zeros({1}, i32)});
  a.flash_len = len.to(at::kInt);
}

at::Tensor slot_hidden(const Model& model, KvCache& cache, const SlotAttention& a, const at::Tensor& tokens,
                       const LoraBatch* lora) {
  LayerContext ctx;
  ctx.cache = &cache;
  ctx.slots = &a;
  std::tie(ctx.cos, ctx.sin) = rope_tables(model, a.write_pos.unsqueeze(0));
  at::Tensor x = embed_tokens(model, tokens.unsqueeze(0));  // [1, N, hidden]
  for (int64_t li = 0; li < model.config.num_layers; ++li) x = decoder_layer(model, li, x, ctx, lora);
  return x[0];
}

namespace {

// The masked path's fields for decode rows: their token indices, slots and key lengths. With a sliding window
// a row reads only its last `window` keys: the range starts at the earliest such key of any row.
void set_masked_decode(SlotAttention& a, const std::vector<int64_t>& one_token, std::vector<int64_t> one_slot,
                       const std::vector<int64_t>& one_len, int64_t slots, const Model& model) {
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  const int64_t window = model.config.sliding_window;
  const auto first_key = [&](int64_t len) { return window > 0 ? std::max<int64_t>(0, len - window) : int64_t{0}; };
  a.one_begin = one_len[0];
  for (size_t i = 0; i < one_slot.size(); ++i) {
    a.one_extent = std::max(a.one_extent, one_len[i]);
    a.one_begin = std::min(a.one_begin, first_key(one_len[i]));
  }
  // Per slot, its visible key positions [first, end); a slot without a row reads one (ignored) key.
  const size_t n = static_cast<size_t>(slots);
  std::vector<int64_t> slot_first(n, a.one_begin), slot_end(n, a.one_begin + 1);
  for (size_t i = 0; i < one_slot.size(); ++i) {
    slot_end[static_cast<size_t>(one_slot[i])] = one_len[i];
    slot_first[static_cast<size_t>(one_slot[i])] = first_key(one_len[i]);
  }
  a.one_first = *std::min_element(one_slot.begin(), one_slot.end());
  a.one_slots = *std::max_element(one_slot.begin(), one_slot.end()) - a.one_first + 1;
  for (int64_t& s : one_slot) s -= a.one_first;
  a.one_token = at::tensor(one_token, i64).to(model.device);
  a.one_slot = at::tensor(one_slot, i64).to(model.device);
  auto of_range = [&](const std::vector<int64_t>& v) {
    return at::tensor(std::vector<int64_t>(v.begin() + a.one_first, v.begin() + a.one_first + a.one_slots), i64)
        .view({-1, 1, 1, 1});
  };
  const at::Tensor key_pos = at::arange(a.one_begin, a.one_extent, i64).view({1, 1, 1, -1});
  a.one_mask = ((key_pos < of_range(slot_end)) & (key_pos >= of_range(slot_first))).to(model.device);
}

SlotAttention slot_attention(const Model& model, const KvCache& cache, const SlotStep& step) {
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  const auto dev = model.device;
  SlotAttention a;
  const int64_t window = model.config.sliding_window;
  std::vector<int64_t> write_flat, positions, one_token, one_slot, one_len;
  int64_t first = 0;
  for (size_t r = 0; r < step.row_slot.size(); ++r) {
    const int64_t slot = step.row_slot[r], start = step.row_start[r], len = step.row_len[r];
    check_row_fits(cache, r, slot, start, len);
    for (int64_t t = 0; t < len; ++t) {
      write_flat.push_back(slot * (cache.capacity + 1) + start + t);
      positions.push_back(start + t);
    }
    if (len == 1) {
      one_token.push_back(first);
      one_slot.push_back(slot);
      one_len.push_back(start + 1);
    } else {
      // From position 0 and within the window, attention is plain causal: no mask.
      at::Tensor mask;
      if (start > 0 || (window > 0 && len > window))
        mask = visible_keys(at::arange(start + len, i64).view({1, 1, 1, -1}),
                            (at::arange(len, i64) + start).view({1, 1, -1, 1}), window)
                   .to(dev);
      a.chunks.push_back({first, len, slot, start, mask});
    }
    first += len;
  }
  if (static_cast<int64_t>(positions.size()) != static_cast<int64_t>(step.tokens.size()))
    throw Error(ErrorKind::Internal, "step rows and tokens disagree");
  a.write_flat = at::tensor(write_flat, i64).to(dev);
  a.write_pos = at::tensor(positions, i64).to(dev);
  if (one_token.empty()) return a;
  if (!flash_decode(model)) {
    set_masked_decode(a, one_token, std::move(one_slot), one_len, cache.rows, model);
  } else {
    if (one_token.size() < positions.size()) a.one_token = at::tensor(one_token, i64).to(dev);
    set_flash_decode(a, cache, at::tensor(one_slot, i64).to(dev), at::tensor(one_len, i64).to(dev));
  }
  return a;
}

}  // namespace

at::Tensor forward_slots(const Model& model, KvCache& cache, const SlotStep& step, const LoraBatch* lora) {
  const int64_t N = static_cast<int64_t>(step.tokens.size());
  if (N == 0 || step.row_slot.size() != step.row_start.size() || step.row_slot.size() != step.row_len.size())
    throw Error(ErrorKind::Internal, "a malformed slot step");
  const SlotAttention attention = slot_attention(model, cache, step);
  const auto i64 = at::TensorOptions().dtype(at::kLong);
  at::Tensor hidden = slot_hidden(model, cache, attention, at::tensor(step.tokens, i64).to(model.device), lora);
  std::vector<int64_t> last(step.row_len.size());
  int64_t end = 0;
  for (size_t r = 0; r < step.row_len.size(); ++r) last[r] = (end += step.row_len[r]) - 1;
  std::vector<int64_t> picked;
  for (int64_t r : step.logits_rows) picked.push_back(last.at(static_cast<size_t>(r)));
  return output_logits(model, hidden.index_select(0, at::tensor(picked, i64).to(model.device)));
}

}  // namespace hs
