#include "adapters/lora_config.h"

#include <algorithm>

#include "common/error.h"

namespace hs {

namespace {
constexpr const char* kNames[kNumLoraModules] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
}

const char* lora_module_name(LoraModule m) { return kNames[static_cast<int>(m)]; }

LoraModule parse_lora_module(std::string_view name) {
  // Without allocating: a gradient submission names a module for each of its hundreds of parts.
  for (LoraModule m : kAllLoraModules) {
    const std::string_view full = kNames[static_cast<int>(m)];
    if (name == full || name == full.substr(0, full.size() - 5)) return m;
  }
  throw Error(ErrorKind::InvalidArgument, "unknown LoRA target module '" + std::string(name) +
                                              "'; expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                                              "down_proj (or q, k, v, o, gate, up, down)");
}

bool AdapterConfig::targets_module(LoraModule m) const {
  return std::find(targets.begin(), targets.end(), m) != targets.end();
}

void validate_adapter_config(const AdapterConfig& c) {
  // Patterns are made of 8x8 tiles, so the rank axis must split into whole tiles.
  if (c.rank <= 0 || c.rank % 8 != 0 || c.rank > 1024)
    throw Error(ErrorKind::InvalidArgument,
                "adapter rank must be a positive multiple of 8 up to 1024, got " + std::to_string(c.rank));
  if (!(c.alpha > 0)) throw Error(ErrorKind::InvalidArgument, "adapter alpha must be positive");
  if (!(c.sparsity >= 0 && c.sparsity < 1))
    throw Error(ErrorKind::InvalidArgument, "adapter sparsity must be in [0, 1), got " + std::to_string(c.sparsity));
  if (c.targets.empty()) throw Error(ErrorKind::InvalidArgument, "an adapter needs at least one target module");
  for (size_t i = 0; i < c.targets.size(); ++i)
    for (size_t j = i + 1; j < c.targets.size(); ++j)
      if (c.targets[i] == c.targets[j])
        throw Error(ErrorKind::InvalidArgument,
                    std::string("target module ") + lora_module_name(c.targets[i]) + " is listed twice");
}

ModuleShape lora_module_shape(const ModelConfig& c, LoraModule m) {
  const int64_t q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  switch (m) {
    case LoraModule::Q: return {c.hidden_size, q_width};
    case LoraModule::K:
    case LoraModule::V: return {c.hidden_size, kv_width};
    case LoraModule::O: return {q_width, c.hidden_size};
    case LoraModule::Gate:
    case LoraModule::Up: return {c.hidden_size, c.intermediate_size};
    case LoraModule::Down: return {c.intermediate_size, c.hidden_size};
  }
  throw Error(ErrorKind::Internal, "unknown LoRA module");
}

}  // namespace hs
