#pragma once
// What the host receives of a step's logits. A row sampled without penalties and with top_k within
// kDeviceTopK needs only its most likely tokens and the log-normaliser, reduced on the device: the host then
// copies and scans a few hundred bytes instead of the vocabulary (sampling a whole row of 151,936 logits costs
// it about 2 ms: hyprstream-bench's host_sampling). Other rows come whole.
#include <ATen/ATen.h>

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "serving/sampling.h"

namespace hs {

constexpr int64_t kDeviceTopK = 64;

struct RowLogits {
  bool finite = true;            // no NaN or infinity anywhere in the row
  std::vector<float> full;       // the whole row, when its sampling needs it
  std::vector<float> top_values; // otherwise its kDeviceTopK largest logits, largest first (ties: lower id first)
  std::vector<int32_t> top_ids;
  double log_normalizer = 0;     // logsumexp of the whole row, with top_values
};

// How many of a row's largest logits sampling with `p` reads (top_k, or 1 when greedy, and the top logprobs),
// or 0 when it can reach beyond kDeviceTopK: penalties change logits anywhere in the vocabulary, and top_k 0
// (off) or above kDeviceTopK keeps more candidates.
int64_t candidates_needed(const SamplingParams& p);

// Rows of float32 logits [rows, vocab] (any device): reduced where needed[r] > 0, else whole. A reduced row
// whose needed[r]-th largest logit ties with the first one left out comes whole too: which of equal logits the
// device keeps is unspecified, and the host keeps the lower ids.
std::vector<RowLogits> fetch_row_logits(const at::Tensor& logits, const std::vector<int64_t>& needed);

// The token sample_next picks from the whole row with the same generator state. The row is left as it is (the
// logprobs read it afterwards).
int32_t sample_row(const RowLogits& row, const SamplingParams& p, const std::vector<int32_t>& history, std::mt19937_64& rng,
                   size_t generated_from);

// log softmax of the unmodified row at `id`, which must be among the row's candidates when it is reduced.
float row_logprob(const RowLogits& row, int32_t id);

// The k (<= 20) most likely tokens with their log probabilities, most likely first.
std::vector<std::pair<int32_t, float>> row_top_logprobs(const RowLogits& row, int32_t k);

}  // namespace hs
