#include "serving/row_logits.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace hs {

int64_t candidates_needed(const SamplingParams& p) {
  if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) return 0;
  if (p.temperature != 0.0f && (p.top_k <= 0 || p.top_k > kDeviceTopK)) return 0;
  return std::max<int64_t>(p.temperature == 0.0f ? 1 : p.top_k, p.top_logprobs);
}

namespace {

// Orders a reduced row as the host's sampler orders candidates: larger logit first, then lower id.
void order_candidates(RowLogits& row) {
  std::vector<size_t> order(row.top_ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return row.top_values[a] > row.top_values[b] || (row.top_values[a] == row.top_values[b] && row.top_ids[a] < row.top_ids[b]);
  });
  std::vector<float> values;
  std::vector<int32_t> ids;
  for (size_t i : order) {
    values.push_back(row.top_values[i]);
    ids.push_back(row.top_ids[i]);
  }
  row.top_values = std::move(values);
  row.top_ids = std::move(ids);
}

// The reduced rows `rows` of `logits`: the kDeviceTopK + 1 largest logits (the last one only to see ties at
// the cut), their ids and the log-normaliser, in one copy to the host.
void fetch_reduced(const at::Tensor& logits, const std::vector<int64_t>& rows, std::vector<RowLogits>& out) {
  const int64_t V = logits.size(1), K = std::min(kDeviceTopK + 1, V);
  at::Tensor sub = logits;
  if (static_cast<int64_t>(rows.size()) < logits.size(0))
    sub = logits.index_select(0, at::tensor(rows, at::kLong).to(logits.device()));
  const auto [values, ids] = at::topk(sub, K, -1);
  // Ids stay exact in float32 below 2^24 tokens. A row's sum is finite exactly when every logit is (logits
  // are far too small for a sum to overflow), and one sum costs a tenth of isfinite().all() on a CPU.
  const at::Tensor host = at::cat({values, ids.to(at::kFloat), at::logsumexp(sub, -1, true),
                                   at::isfinite(sub.sum(-1, true)).to(at::kFloat)}, 1).cpu().contiguous();
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* p = host[static_cast<int64_t>(i)].data_ptr<float>();
    RowLogits& row = out[static_cast<size_t>(rows[i])];
    row.top_values.assign(p, p + K);
    for (int64_t j = 0; j < K; ++j) row.top_ids.push_back(static_cast<int32_t>(p[K + j]));
    row.log_normalizer = p[2 * K];
    row.finite = p[2 * K + 1] != 0.0f;
    order_candidates(row);
  }
}

}  // namespace

std::vector<RowLogits> fetch_row_logits(const at::Tensor& logits, const std::vector<int64_t>& needed) {
  const int64_t R = logits.size(0), V = logits.size(1);
  std::vector<RowLogits> rows(static_cast<size_t>(R));
  std::vector<int64_t> reduced, whole;
  for (int64_t r = 0; r < R; ++r) (needed.at(static_cast<size_t>(r)) > 0 ? reduced : whole).push_back(r);
  if (!reduced.empty()) fetch_reduced(logits, reduced, rows);
  for (int64_t r : reduced) {
    RowLogits& row = rows[static_cast<size_t>(r)];
    const size_t n = static_cast<size_t>(std::min<int64_t>(needed[static_cast<size_t>(r)], V));
    if (V > kDeviceTopK && row.finite && row.top_values[n - 1] == row.top_values[kDeviceTopK]) {
      whole.push_back(r);  // equal logits straddle the cut
      row = RowLogits{};
    } else if (V > kDeviceTopK) {
      row.top_values.resize(kDeviceTopK);
      row.top_ids.resize(kDeviceTopK);
    }
  }
  if (whole.empty()) return rows;
  std::sort(whole.begin(), whole.end());
  const at::Tensor host =
      logits.index_select(0, at::tensor(whole, at::kLong).to(logits.device())).cpu().contiguous();
  for (size_t i = 0; i < whole.size(); ++i) {
    RowLogits& row = rows[static_cast<size_t>(whole[i])];
    const float* src = host[static_cast<int64_t>(i)].data_ptr<float>();
    row.full.assign(src, src + V);
    row.finite = std::all_of(row.full.begin(), row.full.end(), [](float x) { return std::isfinite(x); });
  }
  return rows;
}

int32_t sample_row(const RowLogits& row, const SamplingParams& p, const std::vector<int32_t>& history,
                   std::mt19937_64& rng, size_t generated_from) {
  if (!row.full.empty()) {
    std::vector<float> logits = row.full;  // penalties are applied to a copy
    return sample_next(logits, p, history, rng, generated_from);
  }
  if (candidates_needed(p) == 0) throw Error(ErrorKind::Internal, "a reduced row was sampled with parameters that need all logits");
  // The candidates in the host's order: sampling among them by position draws as sample_next does.
  std::vector<float> candidates = row.top_values;
  return row.top_ids[static_cast<size_t>(sample_next(candidates, p, {}, rng, 0))];
}

float row_logprob(const RowLogits& row, int32_t id) {
  if (!row.full.empty()) return token_logprob(row.full, id);
  auto it = std::find(row.top_ids.begin(), row.top_ids.end(), id);
  if (it == row.top_ids.end()) throw Error(ErrorKind::Internal, "the token is not among the row's candidates");
  return static_cast<float>(row.top_values[static_cast<size_t>(it - row.top_ids.begin())] - row.log_normalizer);
}

std::vector<std::pair<int32_t, float>> row_top_logprobs(const RowLogits& row, int32_t k) {
  if (!row.full.empty()) return top_logprobs(row.full, k);
  std::vector<std::pair<int32_t, float>> out;
  for (size_t i = 0; i < row.top_ids.size() && static_cast<int32_t>(i) < k; ++i)
    out.emplace_back(row.top_ids[i], static_cast<float>(row.top_values[i] - row.log_normalizer));
  return out;
}

}  // namespace hs
