#pragma once
// A scope (adapters/scope.h) on the model's device, and the keys of a prompt: what admission compares to
// decide whether a request gets its adapter.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "adapters/scope.h"

namespace hs {

struct Model;

struct ScopeIndex {
  int64_t layers = 0;
  at::Tensor keys;     // [rows, dim] float32 on the model's device
  at::Tensor members;  // [examples, longest] int64: each example's compared rows, padded with `rows` (always matched)
  at::Tensor radius;   // [examples] float32: what each taught prompt's similarity must exceed (scope_index.cpp)
  std::vector<ScopeMemory> memory;  // per example, on the host: its taught conversation, if it has one
  std::vector<std::vector<int32_t>> prompts;  // per example, on the host: the taught prompt
};

// Whether `prompt` starts with a taught prompt of the index, or is the start of one: a request that asks what
// was taught, in the words it was taught.
bool starts_with_taught(const ScopeIndex& index, const std::vector<int32_t>& prompt);

// The keys of a prompt: the base model's hidden states after `layers` decoder layers (fewer when the model has
// fewer), each scaled to unit length; float32 [tokens, hidden] on the model's device.
at::Tensor scope_keys(const Model& model, const std::vector<int32_t>& tokens, int64_t layers);

// Throws InvalidArgument when the scope's keys were read from a model of another hidden size, and CorruptFile
// when a memory holds tokens outside the model's vocabulary or is not an opening followed by turns.
ScopeIndex make_scope_index(const AdapterScope& scope, const Model& model);

// A prompt's similarity to each taught prompt (float32 [examples] on the device): the lowest over the taught
// prompt's compared tokens of the token's best cosine with the prompt's keys.
at::Tensor scope_similarities(const ScopeIndex& index, const at::Tensor& prompt_keys);

// The taught prompt a prompt is nearest to, measured against that prompt's radius: inside when similarity >
// radius for it. Without taught prompts, similarity -1 (outside).
struct ScopeMatch {
  double similarity = -1, radius = 0;
  int64_t example = -1;  // the taught prompt's index in the scope
  bool inside() const { return similarity > radius; }
};
ScopeMatch scope_match(const ScopeIndex& index, const at::Tensor& prompt_keys);

}  // namespace hs
