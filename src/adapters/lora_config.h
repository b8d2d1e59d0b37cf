#pragma once
// What a LoRA adapter adapts: which projections, at what rank and scale, how sparse. Torch-free.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace hs {

// The projections of a decoder layer that an adapter may target, in the order tensors are laid out.
enum class LoraModule : uint8_t { Q, K, V, O, Gate, Up, Down };
constexpr int kNumLoraModules = 7;
constexpr std::array<LoraModule, kNumLoraModules> kAllLoraModules = {
    LoraModule::Q, LoraModule::K, LoraModule::V, LoraModule::O, LoraModule::Gate, LoraModule::Up, LoraModule::Down};

// PEFT's name for the module: "q_proj", ..., "down_proj".
const char* lora_module_name(LoraModule m);

// Accepts "q" or "q_proj" (and so on); throws InvalidArgument naming the accepted values.
LoraModule parse_lora_module(std::string_view name);

struct AdapterConfig {
  int64_t rank = 16;
  double alpha = 32;  // the update is scaled by alpha / rank, as in LoRA and PEFT
  std::vector<LoraModule> targets{kAllLoraModules.begin(), kAllLoraModules.end()};
  double sparsity = 0.99;  // fraction of A and B entries that are structurally zero; 0 is a dense LoRA
  uint64_t seed = 0;       // picks the sparsity pattern and A's initial values

  double scale() const { return alpha / static_cast<double>(rank); }
  bool targets_module(LoraModule m) const;
};

// Throws InvalidArgument for a rank that is not a positive multiple of 8, sparsity outside [0, 1),
// no or repeated targets.
void validate_adapter_config(const AdapterConfig& config);

struct ModuleShape {
  int64_t in = 0, out = 0;
};

ModuleShape lora_module_shape(const ModelConfig& model, LoraModule m);

}  // namespace hs
