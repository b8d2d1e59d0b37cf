#pragma once
// The generation fields every route shares (sampling, stop, logprobs, adapter), read from a request body with
// a type check per field and the field's name in every error.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "api/server/api_context.h"
#include "serving/generate.h"

namespace hs::api {

struct GenerationParams {
  SamplingParams sampling;
  std::optional<int64_t> max_tokens;  // unset: the route's default
  std::string adapter;                // empty: the base model
  double adapter_scale = 1.0;
  uint64_t adapter_version = 0;       // 0: current
  int n = 1;
  bool stream = false, include_usage = false;
};

// Refuses any field of `body` outside `allowed`, naming it.
void check_fields(const json& body, const std::set<std::string>& allowed);

// Sampling fields (temperature, top_p, top_k, min_p, repetition_penalty, presence_penalty, frequency_penalty,
// seed, stop, max_tokens / max_completion_tokens, n, stream, stream_options, ignore_eos) and the adapter fields
// (adapter, adapter_scale, adapter_version), over `defaults`. `logprobs` is read by the routes, whose forms
// differ.
GenerationParams read_generation_params(const json& body, const SamplingParams& defaults);

// The fields read_generation_params knows, for check_fields.
const std::set<std::string>& generation_fields();

// Typed getters: nothing when absent or null; InvalidArgument naming the field on a wrong type or range.
std::optional<double> get_number(const json& body, const std::string& key);
std::optional<int64_t> get_integer(const json& body, const std::string& key, int64_t min, int64_t max);
std::optional<bool> get_bool(const json& body, const std::string& key);
std::optional<std::string> get_string(const json& body, const std::string& key);
// An array of token ids, each an integer in [0, 2^31): a larger one is refused, not wrapped into a valid id.
std::vector<int32_t> read_token_ids(const json& ids, const std::string& key);
// "prompt": a string (encoded with the model's BOS when it wants one) or an array of token ids.
std::vector<int32_t> read_prompt(const json& body, const Tokenizer& tokenizer);

// The adapter a request names ("model" equal to an adapter, or "adapter"), pinned now, and the prompt
// length check against the scheduler's limit, with OpenAI's message. Fills request.adapter and max_tokens.
void prepare_request(ApiContext& ctx, const GenerationParams& params, GenerationRequest& request,
                     int64_t default_max_tokens);

}  // namespace hs::api
