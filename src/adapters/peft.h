#pragma once
// PEFT interoperability: adapter_config.json + adapter_model.safetensors, the folder layout that PEFT's
// PeftModel.from_pretrained and vLLM's LoRA loader read.
#include <string>
#include <vector>

#include "adapters/lora_config.h"
#include "adapters/tile_layout.h"

namespace hs {

struct AdapterSnapshot;
struct Model;

// Writes the snapshot's A and B as dense float32 matrices (zeros outside the pattern).
void export_peft(const AdapterSnapshot& snapshot, const std::string& folder, const std::string& base_model_name);

struct ImportedAdapter {
  AdapterConfig config;
  TileLayout layout;
  std::vector<float> values;
};

// Largest |value| an imported A or B may hold. Trained LoRA weights are far below it (typically < 1); beyond
// it, B (A x) overflows float arithmetic and the model would answer with non-finite logits.
constexpr double kMaxImportedMagnitude = 1e4;

// Reads a PEFT LoRA folder for `model`. sparsity 0 keeps every entry; otherwise each tensor keeps its
// highest-norm 8x8 tiles at that sparsity. A rank that is not a multiple of 8 is zero-padded (alpha is
// adjusted so the update is unchanged); rsLoRA's scale is folded into alpha. Refuses DoRA, biases,
// fan_in_fan_out, per-layer rank or alpha patterns, modules other than the seven projections, and values
// that are not finite or exceed kMaxImportedMagnitude.
ImportedAdapter import_peft(const std::string& folder, const Model& base, double sparsity);

}  // namespace hs
