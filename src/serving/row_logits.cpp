#include "serving/row_logits.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace hs {

bool needs_full_logits(const SamplingParams& p) {
  if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) return true;
  return p.temperature != 0.0f && (p.top_k <= 0 || p.top_k > kDeviceTopK);
}

namespace {

// Orders a reduced row as the host's sampler orders candidates: larger logit first, then lower id.
void order_candidates(RowLogits& row) {
  std::vector<size_t> order(row.top_ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return row.top_values[a] > row.top_values[b] || (row.top_values[a] == row.top_values[b] && row.top_ids[a] < row.top_ids[b]);
  });
  RowLogits sorted;
  for (size_t i : order) {
    sorted.top_values.push_back(row.top_values[i]);
    sorted.top_ids.push_back(row.top_ids[i]);
  }
  row.top_values = std::move(sorted.top_values);
  row.top_ids = std::move(sorted.top_ids);
}

}  // namespace

std::vector<RowLogits> fetch_row_logits(const at::Tensor& logits, const std::vector<bool>& full) {
  const int64_t R = logits.size(0), V = logits.size(1);
  std::vector<RowLogits> rows(static_cast<size_t>(R));
  if (R == 0) return rows;
  // One small copy per quantity; whole rows only where asked.
  const at::Tensor finite = at::isfinite(logits).all(-1).cpu();
  const at::Tensor lse = at::logsumexp(logits.to(at::kDouble), -1).cpu();
  const auto [values, ids] = at::topk(logits, std::min(kDeviceTopK, V), -1);
  const at::Tensor top_values = values.cpu().contiguous(), top_ids = ids.to(at::kInt).cpu().contiguous();
  std::vector<int64_t> whole;
  for (int64_t r = 0; r < R; ++r)
    if (full.at(static_cast<size_t>(r))) whole.push_back(r);
  at::Tensor whole_rows;
  if (!whole.empty())
    whole_rows = logits.index_select(0, at::tensor(whole, at::kLong).to(logits.device())).cpu().contiguous();
  size_t next_whole = 0;
  for (int64_t r = 0; r < R; ++r) {
    RowLogits& row = rows[static_cast<size_t>(r)];
    row.finite = finite.data_ptr<bool>()[r];
    row.log_normalizer = lse.data_ptr<double>()[r];
    if (full[static_cast<size_t>(r)]) {
      const float* src = whole_rows[static_cast<int64_t>(next_whole++)].data_ptr<float>();
      row.full.assign(src, src + V);
      continue;
    }
    row.top_values.assign(top_values[r].data_ptr<float>(), top_values[r].data_ptr<float>() + top_values.size(1));
    row.top_ids.assign(top_ids[r].data_ptr<int32_t>(), top_ids[r].data_ptr<int32_t>() + top_ids.size(1));
    order_candidates(row);
  }
  return rows;
}

int32_t sample_row(RowLogits& row, const SamplingParams& p, const std::vector<int32_t>& history, std::mt19937_64& rng,
                   size_t generated_from) {
  if (!row.full.empty()) return sample_next(row.full, p, history, rng, generated_from);
  if (needs_full_logits(p)) throw Error(ErrorKind::Internal, "a reduced row was sampled with parameters that need all logits");
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
