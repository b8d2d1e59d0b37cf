#pragma once
// Next-token selection on the host: repetition penalty, temperature, top-k, top-p, min-p, seeded draw.
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace hs {

struct SamplingParams {
  float temperature = 0.8f;  // 0 means greedy
  int32_t top_k = 40;        // 0 disables
  float top_p = 0.95f;       // 1 disables
  float min_p = 0.05f;       // 0 disables; relative to the most likely token
  float repetition_penalty = 1.0f;
  // OpenAI's: logit -= presence * [token generated before] + frequency * (times generated before).
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;
  int64_t seed = -1;         // -1 draws a seed from the system
  int32_t max_tokens = 256;
  std::vector<std::string> stop;         // stop strings, excluded from the output
  std::vector<int32_t> stop_token_ids;   // in addition to the model's end-of-sequence tokens
  bool ignore_eos = false;
  bool logprobs = true;
  int32_t top_logprobs = 0;  // alternatives reported per token with their logprobs (0..20)
};

// Throws InvalidArgument naming the first out-of-range field.
void validate_sampling(const SamplingParams& p);

// Picks the next token. `logits` is modified in place; `history` feeds the repetition penalty, and its
// tokens from `generated_from` on (those generated, not the prompt) the presence and frequency penalties.
int32_t sample_next(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                    std::mt19937_64& rng, size_t generated_from = 0);

// log softmax(logits)[id], from the unmodified logits.
float token_logprob(const std::vector<float>& logits, int32_t id);

// The k most likely tokens of the unmodified logits with their log probabilities, most likely first.
std::vector<std::pair<int32_t, float>> top_logprobs(const std::vector<float>& logits, int32_t k);

}  // namespace hs
