#pragma once
// The online learning pipeline of one domain: events in, a new adapter version out after every micro-batch.
//
//   submit() ── checks the event, refuses duplicates ── bounded queue (full: Busy, "retry")
//   worker ─── takes up to batch_events events, or what arrived within batch_ms of the oldest
//          ─── appends the batch to the write-ahead log (one fdatasync: group commit) ── on_durable (the ack)
//          ─── gradients of the active adapter values (libtorch autograd through the frozen model), a few
//              examples of earlier batches rehearsed with them, and the submitted sparse gradients, averaged;
//              optional per-example clipping and Gaussian noise (DP); clipping of the global norm; AdamW on the
//              active values; steps_per_batch times
//          ─── publishes the new version to the registry's memory (served from then on) ── on_applied
//          ─── writes the version's file (no sync: the log and checkpoint are the durable record)
//          ─── every checkpoint_every batches: checkpoint, then the log before it is deleted
//
// On start the state is the last checkpoint plus the log records after it, applied again with the same
// batches, so a killed process comes back to the state an uninterrupted one would have. A batch whose
// gradient or update fails is quarantined (learning/quarantine.h) instead of stopping the domain; a failure
// to write a version's files stops the trainer (the version, already announced, leaves memory too), and the
// log replays the batch at the next start. Each domain has its own
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
#include "adapters/registry.h"
#include "adapters/scope.h"
#include "learning/adamw.h"
#include "learning/checkpoint.h"
#include "learning/distillation.h"
#include "common/error.h"
#include "common/file_lock.h"
#include "learning/events.h"
#include "learning/lora_gradients.h"
#include "learning/quarantine.h"
#include "learning/rehearsal.h"
#include "storage/write_ahead_log.h"

namespace hs {

struct Model;
struct Tokenizer;

struct PrivacyOptions {
  double noise_multiplier = 0;  // > 0 turns differential privacy on: noise std = noise_multiplier * clip
  double clip = 1.0;            // per-example gradient norm bound
  double delta = 1e-5;          // the delta the spent epsilon is reported at
};

// What keeps a domain's adapter answering everything else as the base model does while it learns (issue 12).
// These defaults suit the server's one-step batches; `hyprstream train` and `chat --learn` default to the
// teaching recipe bench/bench_learning_eval.cpp measured best (README, "What learning keeps").
struct RetentionOptions {
  // Weight of the distillation term: KL from the base model's answers to replay prompts (Learning without
  // Forgetting). 0 turns it off; so does differential privacy (its per-example clipping leaves it out).
  double distill_weight = 0;
  size_t anchors_per_step = 4;  // replay prompts in each step's term, taken in turn from the set
  std::vector<std::string> replay_prompts;  // empty: the built-in set (learning/general_prompts.h)
  // A batch's steps stop once its examples' mean loss is this low, instead of always taking steps_per_batch
  // (which then bounds them). 0 always takes every step.
  double stop_loss = 0;
  // Rehearsal (learning/rehearsal.h): each step of a batch of examples alone adds this many examples taught by
  // earlier batches to its loss (the mean over all their target tokens); early stopping still judges the
  // batch's own. 0 turns it off; so does differential privacy (an example rehearsed would take part in more
  // steps than its privacy budget counts). The memory is kept in the checkpoint: it holds taught examples.
  size_t rehearse_per_step = 0;
  size_t rehearsal_examples = 256;  // the memory's bound: a uniform sample of everything taught is kept
  TeacherOptions teacher;
  // The relevance scope (adapters/scope.h): each version keeps the keys of the prompts taught so far, read
  // after this many of the base model's decoder layers, and requests outside it get the base model. A domain
  // has one only while everything its adapter learnt came from prompted examples ("prompt" / "messages"
  // events): a text event or a gradient submission, training with the scope off (0) or under differential
  // privacy (the scope would store the private prompts), or an adapter that had learnt before, make it apply
  // to every request from then on.
  int64_t scope_layers = 6;
};

// The publication guard: a candidate version whose answers to canary prompts drift from the base model's by
// more than max_drift (mean KL in nats over the answers' tokens) is not published. It is kept as a rejected
// candidate with its figures, its batch is set aside like a quarantined one, and the domain stays at its last
// published version.
struct GuardOptions {
  double max_drift = 0;  // 0 turns the guard off
  // The domain's own canary prompts, checked with the built-in ones; given, they replace those registered
  // before (kept in training/canaries.json), else the registered ones apply.
  std::vector<std::string> canaries;
};

struct TrainerOptions {
  size_t batch_events = 32;     // events per micro-batch at most
  int64_t batch_ms = 100;       // a batch closes this long after its oldest event arrived
  // ... or this long when it holds gradient submissions only: they cost little to apply, and remote workers
  // wait for their acknowledgement. 0: at once; under load, what arrives while a batch applies forms the next.
  int64_t gradient_batch_ms = 0;
  size_t queue_capacity = 1024; // events waiting; beyond it submit() throws Busy
  int steps_per_batch = 1;      // AdamW steps on each micro-batch at most (see RetentionOptions::stop_loss)
  AdamWOptions adamw{1e-3};
  double max_grad_norm = 1.0;   // global norm clip of each step's gradient; 0 disables
  PrivacyOptions privacy;
  // A gradient submission's base version may be this many versions behind the current one at most.
  uint64_t max_staleness = 256;
  FsyncPolicy fsync = FsyncPolicy::Always;
  // fsync batch: a logged batch waits this long at most for others to share its sync. 0: the log's thread syncs
  // at once, and what is appended during a sync shares the next one (a domain appends one batch at a time, so a
  // wait only delays: 0 measured submit -> applied 1.7 ms over gRPC where 1,000 us gave 2.5, at the same rate).
  int64_t group_commit_us = 0;
  uint64_t checkpoint_every = 64;  // batches between checkpoints (and log compactions)
  // Batches close only when full (or on flush/stop), never on the timer, so that the same events in the same
  // order always form the same batches: replays and reruns then give bit-identical adapters.
  bool deterministic = false;
  uint64_t seed = 0;            // the privacy noise and the rehearsal memory's choices of batch k: from (seed, k)
  // Tokens an example may have at most, checked before it is acknowledged; 0 allows the model's context.
  int64_t max_example_tokens = 0;
  GradientOptions gradients;    // what bounds training memory
  RetentionOptions retention;
  GuardOptions guard;
  AdapterConfig create;         // used when the domain has no adapter yet
  // Runs each step's gradient and optimizer work; unset runs it on the trainer's own thread. A server passes
  // its engine thread's Scheduler::run_compute, so that training and serving take turns on the model.
  std::function<void(const std::function<void()>& work)> compute;
};

// Throws InvalidArgument naming the first option out of range.
void validate_trainer_options(const TrainerOptions& options);

// The teaching recipe bench/bench_learning_eval.cpp measured best on the default model, the defaults of
// `hyprstream train` and `chat --learn`: up to 60 AdamW steps at lr 1e-2 per batch, stopped once the examples'
// loss is 0.05, distillation toward the base model on four replay prompts a step (weight 1), four examples of
// earlier batches rehearsed a step, and the publication guard at 0.5 nats.
TrainerOptions teaching_recipe();

struct BatchReport {
  uint64_t seq = 0;             // log record of the batch
  uint64_t version = 0;         // the adapter version published with it
  double loss = 0;              // mean target-token loss before the batch's first step (0 with no examples)
  int64_t tokens = 0;           // target tokens of its examples
  size_t examples = 0, gradients = 0;
  double final_loss = 0;        // at the last step's start (what early stopping compared)
  int steps = 0;                // AdamW steps taken
  size_t rehearsed = 0;         // examples of earlier batches added to each step
  double rehearsal_loss = 0;    // their mean target-token loss before the batch's first step (0 with none)
  double drift = -1;            // canary drift of the new version (mean KL, nats); -1 without a guard
  double grad_norm = 0;         // before clipping, of the last step
  double update_ms = 0;         // gradients, optimizer and publishing to memory
  double teacher_ms = 0;        // making the teachers' answers and the general prompts' keys first (once)
  size_t scope_examples = 0;    // taught prompts in the new version's scope (0: it applies everywhere)
  bool replayed = false;        // applied again from the log at start (its version: the one published after replay)
  std::vector<std::string> ids;
};

struct TrainerCallbacks {
  std::function<void(const std::vector<std::string>& ids, uint64_t seq)> on_durable;  // in the log: acknowledged
  std::function<void(const BatchReport& report)> on_applied;
  std::function<void(const QuarantinedBatch& batch)> on_quarantined;  // set aside, not applied
  // The worker stopped (a failed log append or publish, or the teachers' answers could not be made): events
  // not yet applied never will be in this run.
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
  uint64_t rejected_versions = 0;  // candidates the guard refused (counted among quarantined batches too)
  double last_drift = -1;          // canary drift of the last version published or refused; -1: none yet
  double max_drift = 0;            // the guard's bound (0: no guard)
  size_t queue_depth = 0;
  double last_loss = 0;
  std::vector<double> recent_losses;  // one per applied batch, the last 256
  double update_ms_p50 = 0, update_ms_p99 = 0;  // over the last 1024 batches
  uint64_t log_bytes = 0;
  std::string failure;          // why the trainer stopped, when it did (a failed log append or publish, say)
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
  // A gradient submission given as arrays (the gRPC API's form), checked and queued as submit() does with
  // its JSON form, without JSON on the way.
  SubmitResult submit_gradient(std::string id, uint64_t base_version, const std::vector<GradientPart>& parts);

  // Whether the event with this id (a duplicate's, say) is not durable yet, or with `until_applied` not yet
  // applied: a client told "duplicate" must still wait for it before taking it as acknowledged.
  bool waiting(const std::string& id, bool until_applied);

  // Waits until the queue has room, at most `timeout` (a stream's flow control instead of "busy, retry").
  void wait_for_room(std::chrono::milliseconds timeout);
  // Stopped or stopping (a rollback or delete, the server draining): submissions will never be taken.
  bool stopping() const;

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
    std::shared_ptr<const AdapterScope> scope;  // null: the adapter applies everywhere
    bool unscoped = false;  // it learnt what no scope describes: no scope ever again (RetentionOptions)
    RehearsalMemory rehearsal;
  };
  void recover();
  bool current_version_holds_state(const AdapterManifest& manifest);
  void replay(const WalRecord& record, std::optional<ApplyAttempt> attempt, std::vector<BatchReport>& reports);
  void run();
  void durable(uint64_t seq);  // the log's report: batches through seq are durable
  void announce_applied(BatchReport report);
  void write_unwritten();
  void sync_failed(const std::string& why);
  void process(std::vector<LearningEvent> batch);
  // Applies the batch (attempt: how many processes have now started it) and publishes when asked. Returns
  // nothing when the batch was quarantined instead.
  std::optional<BatchReport> apply(const std::vector<LearningEvent>& batch, uint64_t seq, int attempt, bool publish);
  BatchReport compute(const std::vector<LearningEvent>& batch, uint64_t seq, State& state) const;
  // Adds the batch's taught prompts to the state's scope, or ends the scope for good when the batch teaches
  // what no scope describes.
  void widen_scope(const std::vector<LearningEvent>& batch, State& state) const;
  // Whether a batch applied to `state` would add to its scope (it needs the general prompts' keys).
  bool scoping(const std::vector<LearningEvent>& batch, const State& state) const;
  // Keys of the prompts each radius keeps outside, the built-in replay and canary sets; made at the first
  // batch that needs them. Returns the milliseconds spent making them.
  double load_general_scope();
  // What one step measured: the mean loss of the batch's own examples and of those rehearsed (each over its
  // target tokens), and the gradient's norm before clipping.
  struct StepFigures {
    double loss = 0, rehearsal_loss = 0, norm = 0;
  };
  // The step's gradient: the batch's `own` examples come first in `examples`, then those rehearsed.
  std::vector<float> step_gradient(const std::vector<TrainingExample>& examples, size_t own,
                                   const std::vector<const LearningEvent*>& submitted, const std::vector<float>& values,
                                   uint64_t seq, int step, const DistillationTerm& distill, StepFigures& f) const;
  // The replay prompts of the step after `steps_taken` AdamW steps: anchors_per_step of them, in turn.
  DistillationTerm distillation_for(int64_t steps_taken) const;
  // Reads the stored teacher answers; with `make`, makes (and stores) those still missing. Returns the
  // milliseconds spent making them.
  double load_teachers(bool make);
  std::vector<std::string> domain_canaries() const;
  // Runs model work where options_.compute says (the server's engine thread), else here.
  void run_compute(const std::function<void()>& work) const;
  // The candidate's canary drift, also set in the report and the stats; nothing without a guard.
  std::optional<Drift> canary_drift(const std::vector<float>& values, BatchReport& report) const;
  // Whether the guard refuses the candidate `values` of batch `seq`; when it does, the batch is set aside with
  // the candidate and its figures.
  bool refuse(const std::vector<LearningEvent>& batch, uint64_t seq, const std::vector<float>& values,
              const Drift& drift);
  void quarantine(uint64_t seq, const std::string& payload, const std::vector<std::string>& ids,
                  const std::string& reason, const std::optional<GuardRejection>& rejection = std::nullopt);
  void record_applied(const BatchReport& report);
  void checkpoint();
  EventContext context(bool live) const;
  // The context of a submission, holding the layout it checks against; Busy once the trainer stops.
  EventContext live_context(std::shared_ptr<const TileLayout>& layout);
  bool duplicate(const std::string& id);  // counted as one when it is
  SubmitResult enqueue(LearningEvent ev);
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
  // Logged batches not yet reported durable (their ids by log record), reported by durable().
  std::mutex unacked_mu_;
  std::map<uint64_t, std::vector<std::string>> unacked_;
  std::map<uint64_t, BatchReport> held_reports_;  // applied before durable: announced by durable()
  std::mutex announce_mu_;  // durable and applied announcements, one reporter at a time
  State state_;
  // The version the batch being processed published to memory; its files are written after the announcement.
  std::optional<AdapterRegistry::PendingVersion> unwritten_;
  uint64_t seq_ = 0;
  uint64_t checkpoint_seq_ = 0;
  double scale_ = 1;
  std::vector<std::string> canary_prompts_;  // built-in then the domain's own; empty without a guard
  struct TeacherSet {
    std::vector<TeacherTargets> targets;  // none fit when the model's context is too small for the prompts
    bool ready = false;
  };
  TeacherSet anchors_, canaries_;  // the base model's answers (training/*-targets.json)
  AdapterScope general_;            // built at the first batch that widens a scope

  mutable std::mutex mu_;
  std::condition_variable wake_, done_;
  std::deque<Pending> queue_;
  size_t queued_examples_ = 0;  // of queue_: while any waits, a batch closes after batch_ms
  // Of the batch being processed, until announced applied or quarantined; logged once in unacked_ (or durable).
  std::unordered_set<std::string> in_flight_ids_;
  bool in_flight_logged_ = false;
  std::unordered_set<std::string> ids_;  // accepted: queued, logged or applied
  std::shared_ptr<const TileLayout> layout_;
  size_t in_flight_ = 0;
  int flushing_ = 0;      // flush() calls waiting: a partial batch closes at once
  bool stopping_ = false;
  std::optional<Error> failure_;  // set when the worker stopped on an error, with its kind
  uint64_t version_ = 0, accepted_ = 0, duplicates_ = 0, rejected_ = 0, busy_ = 0, replayed_ = 0;
  std::map<uint64_t, QuarantinedBatch> quarantined_;
  mutable double last_drift_ = -1;
  TrainerCounters totals_;  // state_.totals as of the last applied batch, for stats()
  uint64_t log_bytes_ = 0;
  std::deque<double> losses_, update_ms_;
  std::thread worker_;
};

// The epsilon of (epsilon, delta)-differential privacy spent per event when each event takes part in
// `compositions` Gaussian mechanisms of noise multiplier `noise_multiplier` (Renyi DP, converted at delta).
double gaussian_epsilon(double noise_multiplier, uint64_t compositions, double delta);

}  // namespace hs
