#pragma once
// The engine thread: it owns the device, the KV cache and every request's state, and runs continuous
// batching. Torch-free header.
//
//   submit() ─ validated, its adapter version pinned by the caller ─ bounded queue (full: Busy, "retry")
//   engine thread, each step:
//     drop cancelled requests ── admit waiting ones first come, first served into free slots (copying a
//     cached prompt prefix when there is one) ── one token-major forward: a token for every decoding request
//     first, then prefill chunks of waiting prompts with what is left of the token budget ── sample ──
//     stream tokens ── free the slots of finished requests
//     between steps: trainers' compute (run_compute) within their share of the thread's time
//
// Each request has its own adapter, scale and sampling; a step mixes any of them. An adapter with a relevance
// scope answers only prompts inside it: admission reads the prompt's keys (a few base-model layers) and
// runs the others on the base model. A request's callbacks run
// on the engine thread and must not block (transports queue the events and return).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "serving/engine.h"
#include "serving/generate.h"

namespace hs {

class MetricsRegistry;
class MetricFamily;
class DecodeGraphs;
class PrefixCache;
struct RowLogits;
struct KvCache;
struct LoraBatch;
struct LoraWeights;
struct ScopeIndex;

struct SchedulerOptions {
  int64_t max_seqs = 16;           // requests decoded together: the KV cache's slots
  int64_t max_seq_tokens = 2048;   // KV positions per slot: a request's prompt plus its completion
  int64_t max_step_tokens = 512;   // tokens per forward: decodes plus prefill chunks
  size_t queue_capacity = 256;     // requests waiting for a slot; beyond it submit() throws Busy
  int64_t max_adapters = 8;        // distinct adapters in one step
  int64_t prefix_cache_tokens = 8192;  // KV positions kept for shared prompt prefixes (0: off)
  int64_t prefix_block_tokens = 32;
  double training_share = 0.25;    // of the thread's time, for trainers while requests are running
  // A request inside an adapter's scope is served with the taught conversation nearest it before its own
  // turns (adapters/scope.h, ScopeMemory), when both fit in its slot.
  bool recall_taught = true;
  // On CUDA, decode-only steps replay a captured graph per bucket of rows (model/decode_graphs.h); off runs
  // every step eagerly (vLLM's enforce_eager).
  bool cuda_graphs = true;
};

// Throws InvalidArgument naming the first option out of range.
void validate_scheduler_options(const SchedulerOptions& options);

// A submitted request's events. Both run on the engine thread.
struct RequestCallbacks {
  std::function<void(const TokenEvent& token)> on_token;
  // Exactly once, when the request ends: finished, cancelled, or failed (result.error set).
  std::function<void(const GenerationResult& result)> on_finish;
};

class RequestHandle {
 public:
  // The client went away: the request's slot is freed at the next step boundary, and on_finish reports
  // finish_reason "cancelled".
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::atomic<bool> cancelled_{false};
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_slots = 0, kv_slots_used = 0, kv_tokens_used = 0, kv_tokens = 0;
  int64_t prefix_blocks = 0, prefix_blocks_used = 0;
  uint64_t steps = 0, training_jobs = 0;
  double tokens_per_second = 0;  // generated, over the last few seconds
};

class Scheduler {
 public:
  // `metrics` (optional) receives the serving metrics (requests, latencies, tokens, KV and prefix use).
  Scheduler(const Engine& engine, SchedulerOptions options, MetricsRegistry* metrics = nullptr);
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Throws InvalidArgument / ContextOverflow for a request that can never run here (naming the numbers),
  // Busy when the queue is full or the scheduler is draining.
  std::shared_ptr<RequestHandle> submit(GenerationRequest request, RequestCallbacks callbacks);

  // Runs `work` on the engine thread between steps and returns when it is done, rethrowing what it threw.
  // Trainers pass their compute through here, so serving and training never use the model at once.
  void run_compute(const std::function<void()>& work);

  // Stops admission: later submissions get Busy, waiting requests fail with "shutting down", running ones
  // finish. Returns when none is left.
  void drain();
  void stop();  // drain(), then the thread ends; run_compute() afterwards runs inline

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }
  // The most tokens a request (prompt plus completion) may have here.
  int64_t max_request_tokens() const;

 private:
  struct Sequence;
  struct Job;
  struct Metrics;
  void loop();
  bool any_running() const;
  bool wait_for_work();
  void admit();
  bool resolve_scope(Sequence& seq);
  void recall(Sequence& seq, const ScopeIndex& scope, int64_t example) const;
  void start(std::unique_ptr<Sequence> seq, int64_t slot);
  void step();
  void finish(Sequence& seq, const std::string& reason, std::optional<Error> error = std::nullopt);
  void emit(Sequence& seq, const RowLogits& logits);
  const LoraBatch* step_adapters(const std::vector<Sequence*>& rows, const struct SlotStep& step);
  void run_jobs(bool serving);
  void publish_stats();
  void fail_running(const Error& error);

  const Engine& engine_;
  SchedulerOptions options_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<PrefixCache> prefix_;
  std::unique_ptr<DecodeGraphs> graphs_;  // on CUDA, unless options_.cuda_graphs is off

  // Engine thread only.
  std::vector<std::unique_ptr<Sequence>> slots_;  // by KV slot; null when free
  std::deque<std::unique_ptr<Sequence>> waiting_;
  uint64_t admitted_ = 0;  // admission order, for first come first served prefill
  double serve_seconds_ = 0, train_seconds_ = 0;  // decayed, for the training share
  uint64_t generated_ = 0, steps_ = 0;
  std::vector<std::string> stacked_;  // keys of the adapters in the cached LoRA stack, in slot order
  std::unique_ptr<LoraBatch> lora_stack_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> inbox_;
  std::deque<Job*> jobs_;
  bool draining_ = false, stopping_ = false, exited_ = false;
  SchedulerStats stats_;
  uint64_t generated_total_ = 0;  // generated_ as last published
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> rate_samples_;
  std::thread thread_;
};

}  // namespace hs
