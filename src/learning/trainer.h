#pragma once
// The online learning pipeline of one domain: events in, a new adapter version out after every micro-batch.
//
//   submit() ── checks the event, refuses duplicates ── bounded queue (full: Busy, "retry")
//   worker ─── takes up to batch_events events, or what arrived within batch_ms of the oldest
//          ─── appends the batch to the write-ahead log (one fdatasync: group commit) ── on_durable (the ack)
//          ─── gradients of the active adapter values (libtorch autograd through the frozen model) and the
//              submitted sparse gradients, averaged; optional per-example clipping and Gaussian noise (DP);
//              clipping of the global norm; AdamW on the active values; steps_per_batch times
//          ─── publishes the new version to the registry ── on_applied
//          ─── every checkpoint_every batches: checkpoint, then the log before it is deleted
//
// On start the state is the last checkpoint plus the log records after it, applied again with the same
// batches, so a killed process comes back to the state an uninterrupted one would have. A batch whose
// gradient or update fails is quarantined (learning/quarantine.h) instead of stopping the domain; a failure
// to publish stops the trainer, and the log replays the batch at the next start. Each domain has its own
// trainer and thread; the domain lock (AdapterRegistry::lock_domain) keeps every other writer out while it
// runs. Torch-free.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <vector>

#include "adapters/lora_config.h"
#include "learning/adamw.h"
#include "learning/checkpoint.h"
#include "common/error.h"
#include "common/file_lock.h"
#include "learning/events.h"
#include "learning/lora_gradients.h"
#include "learning/quarantine.h"
#include "storage/write_ahead_log.h"

namespace hs {

class AdapterRegistry;
class AdapterImage;
struct Model;
struct Tokenizer;

struct PrivacyOptions {
  double noise_multiplier = 0;  // > 0 turns differential privacy on: noise std = noise_multiplier * clip
  double clip = 1.0;            // per-example gradient norm bound
  double delta = 1e-5;          // the delta the spent epsilon is reported at
};

struct TrainerOptions {
  size_t batch_events = 32;     // events per micro-batch at most
  int64_t batch_ms = 100;       // a batch closes this long after its oldest event arrived
  size_t queue_capacity = 1024; // events waiting; beyond it submit() throws Busy
  int steps_per_batch = 1;      // AdamW steps on each micro-batch
  AdamWOptions adamw;
  double max_grad_norm = 1.0;   // global norm clip of each step's gradient; 0 disables
  PrivacyOptions privacy;
  FsyncPolicy fsync = FsyncPolicy::Always;
  uint64_t checkpoint_every = 64;  // batches between checkpoints (and log compactions)
  // Batches close only when full (or on flush/stop), never on the timer, so that the same events in the same
  // order always form the same batches: replays and reruns then give bit-identical adapters.
  bool deterministic = false;
  uint64_t seed = 0;            // the privacy noise of batch k is drawn from (seed, k)
  // Tokens an example may have at most, checked before it is acknowledged; 0 allows the model's context.
  int64_t max_example_tokens = 0;
  GradientOptions gradients;    // what bounds training memory
  AdapterConfig create;         // used when the domain has no adapter yet
  // Runs each step's gradient and optimizer work; unset runs it on the trainer's own thread. A server passes
  // its engine thread's Scheduler::run_compute, so that training and serving take turns on the model.
  std::function<void(const std::function<void()>& work)> compute;
};

// Throws InvalidArgument naming the first option out of range.
void validate_trainer_options(const TrainerOptions& options);

struct BatchReport {
  uint64_t seq = 0;             // log record of the batch
  uint64_t version = 0;         // the adapter version published with it
  double loss = 0;              // mean target-token loss before the batch's first step (0 with no examples)
  int64_t tokens = 0;           // target tokens of its examples
  size_t examples = 0, gradients = 0;
  double grad_norm = 0;         // before clipping, of the last step
  double update_ms = 0;         // gradients, optimizer and publish
  bool replayed = false;        // applied again from the log at start (its version: the one published after replay)
  std::vector<std::string> ids;
};

struct TrainerCallbacks {
  std::function<void(const std::vector<std::string>& ids, uint64_t seq)> on_durable;  // in the log: acknowledged
  std::function<void(const BatchReport& report)> on_applied;
  std::function<void(const QuarantinedBatch& batch)> on_quarantined;  // set aside, not applied
  // The worker stopped (a failed log append or publish): events not yet applied never will be in this run.
  std::function<void(const Error& error)> on_failed;
};

struct TrainerStats {
  std::string domain;
  uint64_t version = 0;
  uint64_t accepted = 0, duplicates = 0, rejected = 0, busy = 0;
  TrainerCounters totals;       // applied since the adapter first trained, across restarts
  uint64_t replayed_batches = 0;
  uint64_t quarantined_batches = 0, quarantined_events = 0;  // since the adapter first trained
  std::string last_quarantine_reason;
  size_t queue_depth = 0;
  double last_loss = 0;
  std::vector<double> recent_losses;  // one per applied batch, the last 256
  double update_ms_p50 = 0, update_ms_p99 = 0;  // over the last 1024 batches
  uint64_t log_bytes = 0;
  std::string failure;          // why the trainer stopped, when it did (a failed log append or publish)
  double epsilon = 0;           // privacy spent per event at `delta` (0 without privacy)
  double delta = 0;
};

enum class SubmitResult { Queued, Duplicate };

class DomainTrainer {
 public:
  // Loads or creates the domain's adapter, recovers from checkpoint and log, and starts the worker.
  DomainTrainer(AdapterRegistry& registry, std::shared_ptr<const Model> model,
                std::shared_ptr<const Tokenizer> tokenizer, std::string domain, TrainerOptions options,
                TrainerCallbacks callbacks = {});
  ~DomainTrainer();  // stop()
  DomainTrainer(const DomainTrainer&) = delete;
  DomainTrainer& operator=(const DomainTrainer&) = delete;

  // Checks one event (a JSON object) and queues it. Duplicate: its id was already accepted (applied once).
  // Throws InvalidArgument / ContextOverflow for a bad event (or one longer than max_example_tokens), Busy
  // when the queue is full, and the kind of the failure that stopped the trainer, if one did.
  SubmitResult submit(std::string_view event_json);

  // Blocks until every event queued so far is applied (a partial batch closes at once).
  void flush();
  // Applies what is queued, writes a checkpoint and stops the worker. Idempotent.
  void stop();

  TrainerStats stats() const;
  const std::string& domain() const { return domain_; }
  // The training folder: <adapter root>/<domain>/training.
  const std::string& dir() const { return dir_; }

 private:
  struct Pending {
    LearningEvent event;
    std::chrono::steady_clock::time_point arrived;
  };
  // What the log's batches change, replaced whole when a batch applies (a failed batch changes nothing).
  struct State {
    std::vector<float> values;
    AdamWState adam;
    TrainerCounters totals;
  };
  void recover();
  void replay(const WalRecord& record, std::optional<ApplyAttempt> attempt, std::vector<BatchReport>& reports);
  void run();
  void process(std::vector<LearningEvent> batch);
  // Applies the batch (attempt: how many processes have now started it) and publishes when asked. Returns
  // nothing when the batch was quarantined instead.
  std::optional<BatchReport> apply(const std::vector<LearningEvent>& batch, uint64_t seq, int attempt, bool publish);
  BatchReport compute(const std::vector<LearningEvent>& batch, uint64_t seq, State& state) const;
  std::vector<float> step_gradient(const std::vector<TrainingExample>& examples,
                                   const std::vector<const LearningEvent*>& submitted, const std::vector<float>& values,
                                   uint64_t seq, int step, double& loss, double& norm) const;
  void quarantine(uint64_t seq, const std::string& payload, const std::vector<std::string>& ids,
                  const std::string& reason);
  void record_applied(const BatchReport& report);
  void checkpoint();
  EventContext context(bool live) const;
  Error failure_error() const;  // mu_ held

  AdapterRegistry& registry_;
  std::shared_ptr<const Model> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::unique_ptr<ChatTemplate> chat_;
  std::string domain_, dir_;
  TrainerOptions options_;
  TrainerCallbacks callbacks_;
  std::optional<FileLock> domain_lock_;

  // Owned by the worker thread (and by recover() before it starts).
  std::unique_ptr<WriteAheadLog> log_;
  State state_;
  uint64_t seq_ = 0;
  uint64_t checkpoint_seq_ = 0;
  double scale_ = 1;

  mutable std::mutex mu_;
  std::condition_variable wake_, done_;
  std::deque<Pending> queue_;
  std::unordered_set<std::string> ids_;  // accepted: queued, logged or applied
  std::shared_ptr<const TileLayout> layout_;
  size_t in_flight_ = 0;
  int flushing_ = 0;      // flush() calls waiting: a partial batch closes at once
  bool stopping_ = false;
  std::optional<Error> failure_;  // set when the worker stopped on an error, with its kind
  uint64_t version_ = 0, accepted_ = 0, duplicates_ = 0, rejected_ = 0, busy_ = 0, replayed_ = 0;
  std::map<uint64_t, QuarantinedBatch> quarantined_;
  TrainerCounters totals_;  // state_.totals as of the last applied batch, for stats()
  uint64_t log_bytes_ = 0;
  std::deque<double> losses_, update_ms_;
  std::thread worker_;
};

// The epsilon of (epsilon, delta)-differential privacy spent per event when each event takes part in
// `compositions` Gaussian mechanisms of noise multiplier `noise_multiplier` (Renyi DP, converted at delta).
double gaussian_epsilon(double noise_multiplier, uint64_t compositions, double delta);

}  // namespace hs
