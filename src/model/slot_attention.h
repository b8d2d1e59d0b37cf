#pragma once
// The device-side indices of a token-major step (forward.h: SlotStep), shared by every layer: where each
// token's keys and values go and how each row reads its slot. forward_slots builds them from the host step;
// the decode graphs (model/decode_graphs.h) derive them inside a captured graph from fixed device buffers.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/forward.h"

namespace hs {

struct SlotAttention {
  // [N] int64: each token's position, and its row in the cache flattened to [slots * (capacity + 1), ...].
  at::Tensor write_pos, write_flat;
  // Rows of one token (decodes). With `flash`, they read the cache in place through the flash kernel's
  // variable-length mode: row i's keys start at flattened row flash_cu_k[i] (its slot) and are flash_len[i]
  // long, so nothing is padded to the longest row or copied, and no shape depends on the lengths.
  // Otherwise they attend together over the slots [one_first, one_first + one_slots), one query per slot
  // (zeros where a slot has no such row), over key positions [one_begin, one_extent), masked outside each
  // row's own keys (beyond its length, or before its sliding window).
  at::Tensor one_token;  // [R1]: each such row's token index; with flash, undefined when every row is one
  bool flash = false;
  at::Tensor flash_cu_q, flash_cu_k, flash_len;  // int32 [R1 + 1], [R1 + 1], [R1]
  at::Tensor one_slot;                           // [R1]: each row's slot, from one_first
  at::Tensor one_mask;                           // [one_slots, 1, 1, one_extent - one_begin]
  int64_t one_first = 0, one_slots = 0, one_begin = 0, one_extent = 0;
  // Rows of several tokens (prefill chunks) attend one at a time, causally from their start position.
  struct Chunk {
    int64_t first_token, len, slot, start;
    at::Tensor mask;  // [1, 1, len, start + len]; undefined where plain causal attention is the same
  };
  std::vector<Chunk> chunks;
};

// Throws Internal unless row `r` of a step (slot, start position, tokens) fits the cache.
void check_row_fits(const KvCache& cache, size_t r, int64_t slot, int64_t start, int64_t len);

// Whether decode rows of this model take the flash path: CUDA, half precision, a head size the kernel takes.
// HYPRSTREAM_FLASH_DECODE=0 in the environment turns it off (to compare with the masked path).
bool flash_decode(const Model& model);

// The flash fields for decode rows in slots `slot` that read `len` keys each ([R1] int64 on the device).
void set_flash_decode(SlotAttention& a, const KvCache& cache, const at::Tensor& slot, const at::Tensor& len);

// Hidden states [N, hidden] after the last decoder layer, for a step's tokens [N] (int64 on the device).
at::Tensor slot_hidden(const Model& model, KvCache& cache, const SlotAttention& a, const at::Tensor& tokens,
                       const LoraBatch* lora);

}  // namespace hs
