#pragma once
// Low-rank updates on top of a model's projections, chosen per batch row: y = W x + s_r * B_r (A_r x).
// The adapters layer (src/adapters) and the trainers build it; the forward pass only reads it.
#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "model/config.h"

namespace hs {

// Projections in the order adapters name them (adapters/lora_config.h: q, k, v, o, gate, up, down).
constexpr int kLoraProjections = 7;

// Per layer and projection, as adapters and trainers hold them: A [width, in] and B [out, width], undefined
// where nothing adapts the projection.
using LoraProjections = std::vector<std::array<at::Tensor, kLoraProjections>>;

// The forward's fused projections (model/model.h: qkv and gate_up read the same input), each carrying the
// updates of the adapter projections it fuses.
enum LoraGroupIndex : int { kLoraQkv = 0, kLoraO = 1, kLoraGateUp = 2, kLoraDown = 3 };
constexpr int kLoraGroups = 4;

// One product u = x A^T serves every part of a group, and one u B^T adds every part's update to the fused
// output, so a group costs the launches of a single projection.
struct LoraGroup {
  at::Tensor a;  // [parts * width, in]: the A of each adapted part, stacked
  at::Tensor b;  // [fused out, parts * width]: block diagonal, each part's B at its output rows, zero elsewhere
  int64_t parts = 0;
};

// The adapters of a batch ("slots") stacked along the rank axis, so that one pair of matrix products serves
// every row whatever adapter it uses: u = x A^T gives every slot's rank components, a per-row mask keeps (and
// scales) the row's own slot, and u B^T adds the update. Shapes depend on the number of slots only.
struct LoraBatch {
  std::vector<std::array<LoraGroup, kLoraGroups>> groups;  // per layer; a group without parts has undefined a
  int64_t width = 0;     // slots * rank: the columns of one part
  // alpha / rank times the request's scale in the columns of the row's slot, else 0: [rows, 1, width] per row
  // of a padded batch, or [1, tokens, width] per token of a token-major step.
  at::Tensor row_scale;
  int64_t slots = 0;
  // Every row uses the one slot at the same scale: the mask is skipped and the scale folds into addmm.
  bool uniform = false;
  double uniform_scale = 0;
};

// Sets batch.groups and batch.width from per-projection A and B (all parts of width columns) for a model of
// this configuration. Differentiable: trainers pass leaves that require gradients.
void set_lora_groups(LoraBatch& batch, const LoraProjections& a, const LoraProjections& b, const ModelConfig& config);

}  // namespace hs
