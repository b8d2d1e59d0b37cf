#pragma once
// The transformer forward pass over a batch in which every row has its own start position and its own
// number of new tokens, reading and extending a preallocated KV cache.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/lora_batch.h"
#include "model/model.h"

namespace hs {

// Keys and values per layer, [rows, capacity + 1, kv_heads, head_dim]. The extra position is a scratch
// slot that absorbs writes from padding tokens, so a step's shapes never depend on the data.
struct KvCache {
  std::vector<at::Tensor> k, v;
  int64_t rows = 0;
  int64_t capacity = 0;
};

KvCache make_kv_cache(const Model& model, int64_t rows, int64_t capacity);

struct BatchStep {
  at::Tensor tokens;     // [rows, T] int64 on the model's device; row r's tokens past n_new[r] are padding
  at::Tensor start_pos;  // [rows] int64: tokens of each row already in the cache
  at::Tensor n_new;      // [rows] int64: valid tokens of each row in `tokens` (0 leaves the row untouched)
  int64_t kv_extent = 0; // max over rows of start_pos + n_new; attention reads this much of the cache
  bool all_logits = false;
};

// A step from host-side values: tokens are rows x T, row-major; kv_extent is derived.
BatchStep make_step(const std::vector<int64_t>& tokens, int64_t T, const std::vector<int64_t>& start_pos,
                    const std::vector<int64_t>& n_new, const at::Device& device, bool all_logits = false);

// Tokens [offset, offset + chunk) of every prompt, padded: one step of a chunked prefill. A row whose prompt
// is shorter than offset gets no new tokens; a row's last prompt token falls in exactly one chunk.
BatchStep prefill_chunk(const std::vector<std::vector<int32_t>>& prompts, int64_t offset, int64_t chunk,
                        const at::Device& device, bool all_logits = false);

// Returns float32 logits: [rows, vocab] for each row's last new token, or [rows, T, vocab] with all_logits.
// With `lora`, each row's projections add its adapter's low-rank update.
at::Tensor forward(const Model& model, KvCache& cache, const BatchStep& step, const LoraBatch* lora = nullptr);

// A token-major step over the slots of a KV cache: rows of consecutive tokens, each row one sequence that
// continues at its own position in its own slot. A prefill chunk is a row of many tokens, a decode a row of
// one; a single forward serves any mix, with the projections run once over all the step's tokens.
struct SlotStep {
  std::vector<int64_t> tokens;       // every row's tokens, row after row
  std::vector<int64_t> row_slot;     // per row: its slot in the cache
  std::vector<int64_t> row_start;    // per row: positions already in its slot
  std::vector<int64_t> row_len;      // per row: its tokens in this step (>= 1)
  std::vector<int64_t> logits_rows;  // rows whose last token's logits are returned, in this order
};

// Float32 logits [logits_rows, vocab]. `lora`, when given, is per token: its row_scale is [1, tokens, slots * rank].
at::Tensor forward_slots(const Model& model, KvCache& cache, const SlotStep& step, const LoraBatch* lora = nullptr);

// Fills model.rope_cos / rope_sin, as transformers computes them (float32 positions times float32 inverse
// frequencies, then cos and sin, cast to the model's dtype), the sine's first half negated (rotate-half's
// sign, so that RoPE needs no negation per step). Loading calls it.
void build_rope_tables(Model& model);

// The pieces of the forward pass, for callers that run the layers one at a time (training with activation
// checkpointing recomputes one layer at a time during the backward pass).

// What every layer of a step shares: rotary tables at the step's positions, and where keys come from.
struct LayerContext {
  at::Tensor cos, sin;          // [B, T, 1, head_dim] in the model's dtype; sin signed as model.rope_sin
  // Null: causal attention over the step's own tokens, every row starting at position 0 with any padding at
  // its end (training); flash-style kernels then keep attention memory linear in T (quadratic under a sliding
  // window shorter than T, which takes a mask).
  KvCache* cache = nullptr;
  at::Tensor cache_rows, write_pos;  // with a cache: [B, T], [B, T]
  // Which keys each query attends: with a cache [B, 1, T, extent]; without one, [1, 1, T, T] where a sliding
  // window hides some of the causal keys, else undefined (plain causal).
  at::Tensor mask;
  int64_t extent = 0;
  const struct SlotAttention* slots = nullptr;  // a token-major step (forward_slots): B = 1, T = its tokens
};

// Rows of T tokens starting at position 0, without a KV cache.
LayerContext causal_context(const Model& model, int64_t rows, int64_t T);

at::Tensor embed_tokens(const Model& model, const at::Tensor& tokens);  // [B, T] -> [B, T, hidden]
at::Tensor decoder_layer(const Model& model, int64_t layer, const at::Tensor& x, const LayerContext& ctx,
                         const LoraBatch* lora);
// Final norm and vocabulary projection of hidden states [..., hidden]: float32 logits [..., vocab].
at::Tensor output_logits(const Model& model, const at::Tensor& hidden);

}  // namespace hs
