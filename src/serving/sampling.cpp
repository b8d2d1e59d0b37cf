#include "serving/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"

namespace hs {

void validate_sampling(const SamplingParams& p) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) bad("temperature must be a finite number >= 0");
  if (p.top_k < 0) bad("top_k must be >= 0 (0 disables it)");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) bad("top_p must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) bad("min_p must be in [0, 1]");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) bad("repetition_penalty must be > 0");
  if (p.max_tokens < 1) bad("max_tokens must be >= 1");
  if (!(std::fabs(p.presence_penalty) <= 2.0f)) bad("presence_penalty must lie in [-2, 2]");
  if (!(std::fabs(p.frequency_penalty) <= 2.0f)) bad("frequency_penalty must lie in [-2, 2]");
  if (p.top_logprobs < 0 || p.top_logprobs > 20) bad("top_logprobs must lie in [0, 20]");
  for (const auto& s : p.stop)
    if (s.empty()) bad("stop strings must not be empty");
}

int32_t sample_next(std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& history,
                    std::mt19937_64& rng, size_t generated_from) {
  const int32_t V = static_cast<int32_t>(logits.size());
  if (p.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = logits[id];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  // After the repetition penalty, as vLLM orders them; only generated tokens count.
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (size_t i = generated_from; i < history.size(); ++i) counts[history[i]] += 1;
    for (const auto& [id, n] : counts)
      if (id >= 0 && id < V) logits[id] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
  }
  if (p.temperature == 0.0f) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());

  std::vector<int32_t> cand(V);
  std::iota(cand.begin(), cand.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (p.top_k > 0 && p.top_k < V) {
    std::nth_element(cand.begin(), cand.begin() + p.top_k, cand.end(), by_logit);
    cand.resize(p.top_k);
  }
  std::sort(cand.begin(), cand.end(), by_logit);

  // Probabilities of the remaining candidates at this temperature.
  const float top = logits[cand[0]];
  std::vector<double> probs(cand.size());
  double total = 0;
  for (size_t i = 0; i < cand.size(); ++i) total += probs[i] = std::exp((logits[cand[i]] - top) / p.temperature);
  size_t keep = cand.size();
  if (p.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < cand.size(); ++i) {
      cum += probs[i] / total;
      if (cum >= p.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (p.min_p > 0.0f) {
    // probs[0] is the largest, so the threshold is min_p times it.
    size_t n = 1;
    while (n < keep && probs[n] >= p.min_p * probs[0]) ++n;
    keep = n;
  }
  double kept_total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  double r = std::uniform_real_distribution<double>(0.0, kept_total)(rng);
  for (size_t i = 0; i < keep; ++i) {
    r -= probs[i];
    if (r < 0) return cand[i];
  }
  return cand[keep - 1];
}

std::vector<std::pair<int32_t, float>> top_logprobs(const std::vector<float>& logits, int32_t k) {
  const int32_t V = static_cast<int32_t>(logits.size());
  k = std::min(k, V);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  const float m = logits[ids[0]];
  double s = 0;
  for (float l : logits) s += std::exp(static_cast<double>(l - m));
  const double log_total = std::log(s);
  std::vector<std::pair<int32_t, float>> out;
  for (int32_t i = 0; i < k; ++i) out.emplace_back(ids[i], static_cast<float>(logits[ids[i]] - m - log_total));
  return out;
}

float token_logprob(const std::vector<float>& logits, int32_t id) {
  const float m = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float l : logits) s += std::exp(static_cast<double>(l - m));
  return static_cast<float>(logits[id] - m - std::log(s));
}

}  // namespace hs
