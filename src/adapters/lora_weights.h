#pragma once
// An adapter version as dense tensors on the compute device (the "hot" form), and the per-batch stacking of
// several of them for the forward pass.
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/scope_index.h"
#include "model/lora_batch.h"

namespace hs {

class AdapterImage;
struct AdapterScope;
struct Model;

struct LoraWeights {
  std::string name;
  uint64_t version = 0;
  std::string key;  // name@version#crc32: these exact values (a deleted and re-created adapter differs)
  int64_t rank = 0;
  double scale = 1;  // alpha / rank
  // Per layer and projection: a [rank, in] and b [out, rank], zero outside the pattern; undefined when the
  // adapter does not target the projection.
  std::vector<std::array<at::Tensor, kLoraProjections>> a, b;
  size_t bytes = 0;  // on the device: A, B and the scope's index
  // Where the adapter applies (adapters/scope.h); null: everywhere.
  std::shared_ptr<const ScopeIndex> scope;
};

// Scatters the image's tiles into dense matrices in the model's dtype, on its device, with the version's scope
// (none: the adapter applies to every request).
std::shared_ptr<const LoraWeights> make_lora_weights(const AdapterImage& image, const Model& model, double scale,
                                                     const std::string& name, uint64_t version,
                                                     const AdapterScope* scope = nullptr);

// Stacks the adapters of a batch: rows[r] is row r's adapter or null, scales[r] its request scale. Returns a
// batch with slots == 0 when no row has an adapter (the forward then runs the base model alone).
LoraBatch make_lora_batch(const std::vector<const LoraWeights*>& rows, const std::vector<double>& scales,
                          const Model& model);

// The two halves of make_lora_batch, for a scheduler that keeps the stack while the set of adapters in its
// steps stays the same. stack_adapters: slot s owns rank columns [s * rank, s * rank + its rank).
LoraBatch stack_adapters(const std::vector<const LoraWeights*>& slots, const Model& model);
// Sets row_scale (and the uniform shortcut) for entries that each use slot_of[i] (-1: none) at scale_of[i]
// (times the adapter's alpha / rank): shape [n, 1, K] for rows, or [1, n, K] per token of a token-major step.
void set_lora_scales(LoraBatch& batch, const std::vector<const LoraWeights*>& slots,
                     const std::vector<int64_t>& slot_of, const std::vector<double>& scale_of, bool per_token,
                     const Model& model);

}  // namespace hs
