#pragma once
// Low-rank updates on top of a model's projections, chosen per batch row: y = W x + s_r * B_r (A_r x).
// The adapters layer (src/adapters) builds it; the forward pass only reads it.
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace hs {

// Projections in the order adapters name them (adapters/lora_config.h: q, k, v, o, gate, up, down).
constexpr int kLoraProjections = 7;

struct LoraBatch {
  // Per layer and projection, stacked over the batch's distinct adapters ("slots"): a [S, rank, in] and
  // b [S, out, rank] in the model's dtype and device; undefined where no adapter of the batch has the module.
  std::vector<std::array<at::Tensor, kLoraProjections>> a, b;
  at::Tensor slot;   // [rows] int64: the slot of each row (rows without an adapter have scale 0)
  at::Tensor scale;  // [rows, 1, 1] in the model dtype: alpha / rank times the request's scale
  int64_t slots = 0;
};

}  // namespace hs
