#pragma once
// General-purpose user prompts the trainer needs no client for. Replay prompts anchor training: the adapter is
// distilled toward the base model's answers on them (Learning without Forgetting). Canary prompts guard
// publication: a new version whose answers to them drift too far from the base model's is not published.
// The two sets are disjoint from each other and from the evaluation's control prompts
// (bench/data/learning_eval.json), so that neither the guard nor the evaluation grades what training optimised.
// Torch-free.
#include <string>
#include <vector>

namespace hs {

const std::vector<std::string>& builtin_replay_prompts();  // 32 prompts
const std::vector<std::string>& builtin_canary_prompts();  // 16 prompts

}  // namespace hs
