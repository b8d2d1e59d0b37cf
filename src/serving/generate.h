#pragma once
// Requests, their token events and results, and generation in this process: generate() and generate_batch()
// run the requests through a Scheduler of their own (serving/scheduler.h), the one generation path that the
// server uses too. Torch-free header.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"
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
  std::string id;  // for logs; any string
  // sampling.max_tokens is a default (what the context had room for) rather than the client's: recalling a taught
  // conversation (SchedulerOptions::recall_taught) may lower it to make room.
  bool max_tokens_defaulted = false;
};

struct TokenEvent {
  int32_t id = 0;
  std::string text;  // whole UTF-8; may be empty while a character or a possible stop string is pending
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top_logprobs;  // sampling.top_logprobs alternatives
};

struct GenerationResult {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::string text;           // the whole text; `tail` is what no token event carried
  std::string tail;
  std::string finish_reason;  // "stop", "length", "cancelled" or "error"
  std::optional<Error> error; // with "error": what failed, with its kind
  int64_t prompt_tokens = 0;
  int64_t cached_tokens = 0;  // prompt tokens whose KV came from the prefix cache
  std::string adapter;        // name and version asked for; empty for the base model
  uint64_t adapter_version = 0;
  // With an adapter that has a relevance scope (adapters/scope.h): "inside" when the adapter answered, or
  // "outside" when the prompt was not near anything it was taught and the base model answered. Empty otherwise.
  std::string adapter_scope;
  // The taught prompt nearest the request (relative to its radius): their similarity, and that radius.
  double scope_similarity = 0, scope_radius = 0;
  // Inside: the prompt tokens of the taught conversation it was served with before its own turns
  // (adapters/scope.h, ScopeMemory), counted in prompt_tokens; 0 when none was recalled.
  int64_t recalled_tokens = 0;
  double queue_seconds = 0, first_token_seconds = 0, total_seconds = 0;  // from submission
};

// Called for each generated token of request `row`; returning false stops that request.
using TokenCallback = std::function<bool(size_t row, const TokenEvent& event)>;

struct GenerateOptions {
  int64_t prefill_chunk = 512;  // prompt tokens per forward during prefill
  bool recall_taught = true;    // SchedulerOptions::recall_taught
};

// Throws InvalidArgument / ContextOverflow for a request the engine cannot run: an empty prompt or one of
// max_tokens_total tokens or more, token ids outside the vocabulary, bad sampling parameters.
void validate_generation_request(const Engine& engine, const GenerationRequest& request, int64_t max_tokens_total);

// The error for logits that stopped being finite: names the adapter and scale, or the model's weights.
Error non_finite_logits_error(const GenerationRequest& request, size_t generated);

// Runs the requests together and returns their results in order; throws the first request's error.
std::vector<GenerationResult> generate_batch(const Engine& engine, const std::vector<GenerationRequest>& requests,
                                             const TokenCallback& on_token = {}, const GenerateOptions& options = {});

GenerationResult generate(const Engine& engine, const GenerationRequest& request,
                          const std::function<bool(const TokenEvent&)>& on_token = {});

}  // namespace hs
