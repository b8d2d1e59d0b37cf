#pragma once
// Generation over a batch of prompts: one batched prefill (in chunks), then batched decode steps,
// each row with its own sampling parameters, stop conditions and streaming callback. Torch-free header.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "serving/engine.h"
#include "serving/sampling.h"

namespace hs {

struct LoraWeights;

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  // The adapter version this request runs with (null: the base model), held for the whole generation so a
  // newer published version never changes it midway; its update is scaled by adapter_scale.
  std::shared_ptr<const LoraWeights> adapter;
  double adapter_scale = 1.0;
};

struct TokenEvent {
  int32_t id = 0;
  std::string text;  // whole UTF-8; may be empty while a character or a possible stop string is pending.
                    // Streaming callers print result.text past what events carried when generation ends.
  float logprob = 0;
};

struct GenerationResult {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::string text;
  std::string finish_reason;  // "stop" or "length"
  int64_t prompt_tokens = 0;
};

// Called for each generated token of row `row`; returning false stops that row.
using TokenCallback = std::function<bool(size_t row, const TokenEvent& event)>;

struct GenerateOptions {
  int64_t prefill_chunk = 512;  // prompt tokens per forward during prefill
};

std::vector<GenerationResult> generate_batch(const Engine& engine, const std::vector<GenerationRequest>& requests,
                                             const TokenCallback& on_token = {}, const GenerateOptions& options = {});

GenerationResult generate(const Engine& engine, const GenerationRequest& request,
                          const std::function<bool(const TokenEvent&)>& on_token = {});

}  // namespace hs
