#include "serving/generate.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <mutex>

#include "adapters/lora_weights.h"
#include "model/model.h"
#include "serving/scheduler.h"

namespace hs {

void validate_generation_request(const Engine& engine, const GenerationRequest& r, int64_t max_tokens_total) {
  const ModelConfig& c = engine.model->config;
  if (r.prompt.empty()) throw Error(ErrorKind::InvalidArgument, "the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab_size)
      throw Error(ErrorKind::InvalidArgument, "prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                                  std::to_string(c.vocab_size - 1) + ")");
  if (static_cast<int64_t>(r.prompt.size()) >= max_tokens_total)
    throw Error(ErrorKind::ContextOverflow, "the prompt has " + std::to_string(r.prompt.size()) +
                                                " tokens but the context holds " + std::to_string(max_tokens_total) +
                                                " here (prompt plus at least one new token)");
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

Error non_finite_logits_error(const GenerationRequest& r, size_t generated) {
  const std::string source = r.adapter ? "adapter '" + r.adapter->name + "' version " +
                                             std::to_string(r.adapter->version) + " (scale " +
                                             std::to_string(r.adapter_scale) + ")"
                                       : "the model's weights";
  return Error(ErrorKind::CorruptFile, "the model produced non-finite logits at generated token " +
                                           std::to_string(generated) + ": " + source +
                                           " overflow float arithmetic; roll the adapter back or lower its scale");
}

namespace {

// The most prompt tokens a recalled conversation may add to the request (SchedulerOptions::recall_taught).
int64_t recall_room(const GenerationRequest& r, const GenerateOptions& options) {
  if (!options.recall_taught || !r.adapter || !r.adapter->scope) return 0;
  size_t most = 0;
  for (const ScopeMemory& m : r.adapter->scope->memory) most = std::max(most, m.tokens.size() - m.opening);  // valid_memory
  return static_cast<int64_t>(most);
}

}  // namespace

std::vector<GenerationResult> generate_batch(const Engine& engine, const std::vector<GenerationRequest>& requests,
                                             const TokenCallback& on_token, const GenerateOptions& options) {
  if (!engine.model) throw Error(ErrorKind::Internal, "generate called on an engine without weights");
  if (requests.empty()) return {};
  const int64_t B = static_cast<int64_t>(requests.size());
  SchedulerOptions o;
  o.max_seqs = B;
  o.max_adapters = B;
  o.queue_capacity = static_cast<size_t>(B);
  o.max_step_tokens = std::max<int64_t>(std::max<int64_t>(1, options.prefill_chunk), B);
  o.prefix_cache_tokens = 0;  // one batch: nothing to share with later requests
  o.recall_taught = options.recall_taught;
  o.max_seq_tokens = 2;
  for (const auto& r : requests)
    o.max_seq_tokens = std::max<int64_t>(o.max_seq_tokens, static_cast<int64_t>(r.prompt.size()) +
                                                               r.sampling.max_tokens + recall_room(r, options));
  std::vector<GenerationResult> results(requests.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  // Declared after what its callbacks touch: if a submit throws, it drains before they are destroyed.
  Scheduler scheduler(engine, o);
  for (size_t row = 0; row < requests.size(); ++row) {
    auto handle = std::make_shared<std::shared_ptr<RequestHandle>>();
    RequestCallbacks cb;
    cb.on_token = [&, row, handle](const TokenEvent& ev) {
      if (!on_token || on_token(row, ev)) return;
      std::lock_guard<std::mutex> lock(mu);
      if (*handle) (*handle)->cancel();
    };
    cb.on_finish = [&, row](const GenerationResult& r) {
      std::lock_guard<std::mutex> lock(mu);
      results[row] = r;
      ++done;
      cv.notify_all();
    };
    auto submitted = scheduler.submit(requests[row], std::move(cb));
    std::lock_guard<std::mutex> lock(mu);
    *handle = std::move(submitted);
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done == requests.size(); });
  }
  scheduler.stop();
  for (const auto& r : results)
    if (r.error) throw *r.error;
  return results;
}

GenerationResult generate(const Engine& engine, const GenerationRequest& request,
                          const std::function<bool(const TokenEvent&)>& on_token) {
  TokenCallback cb;
  if (on_token) cb = [&](size_t, const TokenEvent& ev) { return on_token(ev); };
  return generate_batch(engine, {request}, cb)[0];
}

}  // namespace hs
