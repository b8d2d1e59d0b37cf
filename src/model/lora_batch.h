#pragma once
// Low-rank updates on top of a model's projections, chosen per batch row: y = W x + s_r * B_r (A_r x).
// The adapters layer (src/adapters) builds it; the forward pass only reads it.
#include <ATen/ATen.h>

#include <array>
#include <vector>

namespace hs {

// Projections in the order adapters name them (adapters/lora_config.h: q, k, v, o, gate, up, down).
constexpr int kLoraProjections = 7;

// The adapters of a batch ("slots") stacked along the rank axis, so that one pair of matrix products serves
// every row whatever adapter it uses: u = x A^T gives every slot's rank components, a per-row mask keeps (and
// scales) the row's own slot, and u B^T adds the update. Shapes depend on the number of slots only.
struct LoraBatch {
  // Per layer and projection: a [slots * rank, in] and b [out, slots * rank] in the model's dtype and device;
  // undefined where no adapter of the batch has the projection.
  std::vector<std::array<at::Tensor, kLoraProjections>> a, b;
  at::Tensor row_scale;  // [rows, 1, slots * rank]: alpha / rank times the request's scale in the row's slot, else 0
  int64_t slots = 0;
  // Every row uses the one slot at the same scale: the mask is skipped and the scale folds into addmm.
  bool uniform = false;
  double uniform_scale = 0;
};

}  // namespace hs
