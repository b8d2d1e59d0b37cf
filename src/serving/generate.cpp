#include "serving/generate.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "adapters/lora_weights.h"
#include "common/error.h"
#include "model/forward.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

// Per-row decoding state: sampling, detokenisation and stop-string holdback.
struct RowState {
  const GenerationRequest* request = nullptr;
  std::mt19937_64 rng;
  std::unique_ptr<StreamingDetokenizer> detok;
  std::vector<int32_t> history;  // prompt and generated ids, for the repetition penalty
  std::string text;              // everything decoded so far
  size_t emitted = 0;            // bytes of `text` already handed to the callback
  int64_t length = 0;            // tokens in the KV cache
  bool done = false;
  bool cut_by_stop = false;      // a stop string ended the text
  GenerationResult result;
};

void validate_request(const Engine& engine, const GenerationRequest& r) {
  const ModelConfig& c = engine.model->config;
  if (r.prompt.empty()) throw Error(ErrorKind::InvalidArgument, "the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab_size)
      throw Error(ErrorKind::InvalidArgument, "prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                                  std::to_string(c.vocab_size - 1) + ")");
  if (static_cast<int64_t>(r.prompt.size()) >= c.context_length)
    throw Error(ErrorKind::ContextOverflow, "the prompt has " + std::to_string(r.prompt.size()) +
                                                " tokens but the model's context holds " +
                                                std::to_string(c.context_length) + " (prompt plus at least one new token)");
  validate_sampling(r.sampling);
  for (int32_t id : r.sampling.stop_token_ids)
    if (id < 0 || id >= c.vocab_size)
      throw Error(ErrorKind::InvalidArgument, "stop token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                                  std::to_string(c.vocab_size - 1) + ")");
  if (!std::isfinite(r.adapter_scale))
    throw Error(ErrorKind::InvalidArgument, "the adapter scale must be a finite number");
  if (!r.sampling.stop.empty() && !engine.tokenizer)
    throw Error(ErrorKind::InvalidArgument, "stop strings need a tokenizer, and this model has none");
}

int64_t row_len(const std::vector<int32_t>& prompt) { return static_cast<int64_t>(prompt.size()); }

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t pending_stop_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const auto& s : stops)
    for (size_t n = std::min(s.size() - 1, text.size()); n > best; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        best = n;
        break;
      }
  return best;
}

// Appends a token to the row; returns the text it releases and whether a stop string ended the row.
std::string accept_token(RowState& row, int32_t id, bool* hit_stop) {
  *hit_stop = false;
  if (!row.detok) return "";
  row.text += row.detok->push(id);
  const auto& stops = row.request->sampling.stop;
  size_t cut = std::string::npos;
  for (const auto& s : stops) {
    size_t at = row.text.find(s, row.emitted > s.size() ? row.emitted - s.size() : 0);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    row.text.resize(cut);
    *hit_stop = true;
  }
  size_t release_to = *hit_stop ? row.text.size() : row.text.size() - pending_stop_prefix(row.text, stops);
  if (release_to < row.emitted) release_to = row.emitted;
  std::string piece = row.text.substr(row.emitted, release_to - row.emitted);
  row.emitted = release_to;
  return piece;
}

// Non-finite logits mean the weights overflowed: sampling from them would emit garbage with no error.
void check_finite(const std::vector<float>& logits, const GenerationRequest& r, size_t generated) {
  for (float x : logits)
    if (!std::isfinite(x)) {
      const std::string source = r.adapter ? "adapter '" + r.adapter->name + "' version " +
                                                 std::to_string(r.adapter->version) + " (scale " +
                                                 std::to_string(r.adapter_scale) + ")"
                                           : "the model's weights";
      throw Error(ErrorKind::CorruptFile, "the model produced non-finite logits at generated token " +
                                              std::to_string(generated) + ": " + source +
                                              " overflow float arithmetic; roll the adapter back or lower its scale");
    }
}

}  // namespace

std::vector<GenerationResult> generate_batch(const Engine& engine, const std::vector<GenerationRequest>& requests,
                                             const TokenCallback& on_token, const GenerateOptions& options) {
  if (!engine.model) throw Error(ErrorKind::Internal, "generate called on an engine without weights");
  if (requests.empty()) return {};
  const Model& model = *engine.model;
  const int64_t ctx = model.config.context_length;
  const int64_t B = static_cast<int64_t>(requests.size());
  for (const auto& r : requests) validate_request(engine, r);

  std::vector<RowState> rows(B);
  int64_t capacity = 0, longest_prompt = 0;
  for (int64_t b = 0; b < B; ++b) {
    RowState& row = rows[b];
    row.request = &requests[b];
    const SamplingParams& p = requests[b].sampling;
    row.rng.seed(p.seed >= 0 ? static_cast<uint64_t>(p.seed) : std::random_device{}());
    if (engine.tokenizer) row.detok = std::make_unique<StreamingDetokenizer>(*engine.tokenizer, true);
    row.history = requests[b].prompt;
    row.result.prompt_tokens = static_cast<int64_t>(requests[b].prompt.size());
    capacity = std::max(capacity, std::min(ctx, row.result.prompt_tokens + p.max_tokens));
    longest_prompt = std::max(longest_prompt, row.result.prompt_tokens);
  }

  at::InferenceMode guard;
  KvCache cache = make_kv_cache(model, B, capacity);
  std::vector<const LoraWeights*> adapters;
  std::vector<double> adapter_scales;
  for (const auto& r : requests) {
    adapters.push_back(r.adapter.get());
    adapter_scales.push_back(r.adapter_scale);
  }
  const LoraBatch lora_batch = make_lora_batch(adapters, adapter_scales, model);
  const LoraBatch* lora = lora_batch.slots > 0 ? &lora_batch : nullptr;
  at::Tensor logits;  // [B, V] on the host: each row's logits for its next token

  std::vector<std::vector<int32_t>> prompts;
  for (const auto& r : requests) prompts.push_back(r.prompt);
  const int64_t chunk = std::max<int64_t>(1, options.prefill_chunk);
  for (int64_t off = 0; off < longest_prompt; off += chunk) {
    BatchStep step = prefill_chunk(prompts, off, chunk, model.device);
    at::Tensor out = forward(model, cache, step, lora).cpu();
    if (!logits.defined()) logits = out.clone();
    for (int64_t b = 0; b < B; ++b)
      if (off < row_len(prompts[b]) && off + chunk >= row_len(prompts[b])) logits[b] = out[b];
  }
  for (int64_t b = 0; b < B; ++b) rows[b].length = rows[b].result.prompt_tokens;

  const int64_t V = logits.size(1);
  std::vector<float> row_logits(V);
  while (true) {
    std::vector<int64_t> next(B, 0), n_new(B, 0), start(B, 0);
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      RowState& row = rows[b];
      start[b] = std::min(row.length, capacity);
      if (row.done) continue;
      const SamplingParams& p = row.request->sampling;
      const float* src = logits[b].data_ptr<float>();
      row_logits.assign(src, src + V);
      check_finite(row_logits, *row.request, row.result.ids.size());
      std::vector<float> raw;
      if (p.logprobs) raw = row_logits;
      const int32_t id = sample_next(row_logits, p, row.history, row.rng);
      const float logprob = p.logprobs ? token_logprob(raw, id) : 0.0f;
      const bool is_eos = !p.ignore_eos && std::find(engine.eos_ids.begin(), engine.eos_ids.end(), id) != engine.eos_ids.end();
      const bool is_stop_id = std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) != p.stop_token_ids.end();
      if (is_eos || is_stop_id) {
        row.done = true;
        row.result.finish_reason = "stop";
        continue;
      }
      bool hit_stop = false;
      TokenEvent ev{id, accept_token(row, id, &hit_stop), logprob};
      row.result.ids.push_back(id);
      row.result.logprobs.push_back(logprob);
      row.history.push_back(id);
      const bool keep_going = !on_token || on_token(static_cast<size_t>(b), ev);
      row.cut_by_stop = hit_stop;
      if (hit_stop || !keep_going) {
        row.done = true;
        row.result.finish_reason = "stop";
        continue;
      }
      if (static_cast<int32_t>(row.result.ids.size()) >= p.max_tokens || row.length + 1 >= ctx ||
          row.length + 1 > capacity) {
        row.done = true;
        row.result.finish_reason = "length";
        continue;
      }
      next[b] = id;
      n_new[b] = 1;
      any = true;
    }
    if (!any) break;
    logits = forward(model, cache, make_step(next, 1, start, n_new, model.device), lora).cpu();
    for (int64_t b = 0; b < B; ++b) rows[b].length += n_new[b];
  }

  std::vector<GenerationResult> results;
  for (int64_t b = 0; b < B; ++b) {
    RowState& row = rows[b];
    // Unless a stop string cut it, the text is complete: flush a trailing partial character. Text
    // held back for a possible stop string is in result.text; streaming callers print the remainder.
    if (row.detok && !row.cut_by_stop) row.text += row.detok->flush();
    row.result.text = row.text;
    results.push_back(std::move(row.result));
  }
  return results;
}

GenerationResult generate(const Engine& engine, const GenerationRequest& request,
                          const std::function<bool(const TokenEvent&)>& on_token) {
  TokenCallback cb;
  if (on_token) cb = [&](size_t, const TokenEvent& ev) { return on_token(ev); };
  return generate_batch(engine, {request}, cb)[0];
}

}  // namespace hs
