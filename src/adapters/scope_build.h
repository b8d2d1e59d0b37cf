#pragma once
// Growing a scope (adapters/scope.h) from taught prompts: what a trainer does after a batch. Torch-free.
#include <cstdint>
#include <vector>

namespace hs {

struct AdapterScope;
struct ScopeMemory;
struct Model;

// Reads each prompt's keys from the base model (scope.layers decoder layers) and adds it to the scope, compared
// from the end of the opening it shares with every prompt of `general`, with its radius: the highest
// similarity any prompt of `general` has to it (so that they all stay outside). `general` holds prompts
// added with this function and no general set. `scope.dim` must be the model's hidden size. `memories`, when
// given, holds each prompt's taught conversation (ScopeMemory), in the order of `prompts`.
void add_scope_prompts(AdapterScope& scope, const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                       const AdapterScope* general = nullptr, const std::vector<ScopeMemory>& memories = {});

}  // namespace hs
