#include "learning/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <nlohmann/json.hpp>
#include <sstream>

#include "adapters/registry.h"
#include "adapters/scope_build.h"
#include "adapters/tile_layout.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/percentile.h"
#include "learning/general_prompts.h"
#include "learning/lora_gradients.h"
#include "model/model.h"
#include "model/torch_error.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

using Clock = std::chrono::steady_clock;

double norm_of(const std::vector<float>& g) {
  double s = 0;
  for (float x : g) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

void scale_by(std::vector<float>& g, double f) {
  for (float& x : g) x = static_cast<float>(x * f);
}

// The factor torch.nn.utils.clip_grad_norm_ scales by: bound / (norm + 1e-6), when that is below 1.
double clip_factor(double norm, double bound) { return std::min(1.0, bound / (norm + 1e-6)); }

void clip_to(std::vector<float>& g, double bound) {
  if (bound > 0) scale_by(g, clip_factor(norm_of(g), bound));
}

// Whether the adapter's update is zero, as a created adapter's is (every B value zero): it has learnt nothing.
bool learnt_nothing(const TileLayout& layout, const std::vector<float>& values) {
  for (const LoraTensorInfo& t : layout.tensors)
    if (t.is_b)
      for (int64_t i = t.first_tile * kTileValues; i < (t.first_tile + t.num_tiles) * kTileValues; ++i)
        if (values[static_cast<size_t>(i)] != 0) return false;
  return true;
}

// The mean loss over the target tokens of examples [from, to), from each one's own mean; 0 for none.
double mean_loss(const std::vector<TrainingExample>& examples, const std::vector<double>& losses, size_t from,
                 size_t to) {
  double sum = 0;
  int64_t tokens = 0;
  for (size_t i = from; i < to; ++i) {
    const int64_t n = target_tokens(examples[i]);
    sum += losses[i] * static_cast<double>(n);
    tokens += n;
  }
  return tokens > 0 ? sum / static_cast<double>(tokens) : 0;
}

// What a batch of `events` adds to the counters, its report told; rehearsed examples count as trained tokens.
void count_applied(TrainerCounters& t, const BatchReport& r, size_t events, int64_t rehearsed_tokens) {
  t.batches += 1;
  t.events_applied += events;
  t.examples += r.examples;
  t.gradients += r.gradients;
  t.steps += static_cast<uint64_t>(r.steps);
  t.tokens_trained += static_cast<uint64_t>(r.tokens) * static_cast<uint64_t>(r.steps) +
                      static_cast<uint64_t>(rehearsed_tokens);
}

// A batch as the log stores it (one event per line), and its ids.
std::string payload_of(const std::vector<LearningEvent>& batch, std::vector<std::string>& ids) {
  std::string payload;
  for (const LearningEvent& ev : batch) {
    payload += ev.json;
    payload += '\n';
    ids.push_back(ev.id);
  }
  return payload;
}

}  // namespace

void validate_trainer_options(const TrainerOptions& o) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (o.batch_events == 0) bad("a micro-batch needs at least one event");
  if (o.batch_ms < 0 || o.gradient_batch_ms < 0) bad("the micro-batch window must not be negative");
  if (o.max_staleness > (uint64_t{1} << 40)) bad("max_staleness is a count of versions (at most 2^40)");
  if (o.group_commit_us < 0 || o.group_commit_us > 1'000'000) bad("the group commit wait must lie in [0, 1 s]");
  if (o.queue_capacity == 0) bad("the event queue needs room for at least one event");
  if (o.steps_per_batch < 1 || o.steps_per_batch > 10000) bad("steps per batch must lie in [1, 10000]");
  if (!(o.max_grad_norm >= 0) || !std::isfinite(o.max_grad_norm)) bad("the gradient clip norm must be zero or positive");
  if (o.checkpoint_every == 0) bad("checkpoints must be written every 1 or more batches");
  if (o.max_example_tokens < 0) bad("the per-example token limit must be zero (the model's context) or positive");
  if (o.gradients.tokens_per_forward < 1 || o.gradients.logits_chunk < 1)
    bad("the training token budget and logits chunk must be positive");
  if (!(o.privacy.noise_multiplier >= 0) || !std::isfinite(o.privacy.noise_multiplier))
    bad("the privacy noise multiplier must be zero or positive");
  if (o.privacy.noise_multiplier > 0 && !(o.privacy.clip > 0)) bad("differential privacy needs a positive clip norm");
  if (!(o.privacy.delta > 0 && o.privacy.delta < 1)) bad("the privacy delta must lie in (0, 1)");
  const RetentionOptions& r = o.retention;
  if (!(r.distill_weight >= 0) || !std::isfinite(r.distill_weight)) bad("the distillation weight must be zero or positive");
  if (r.distill_weight > 0 && r.anchors_per_step == 0) bad("distillation needs at least one replay prompt per step");
  if (!(r.stop_loss >= 0) || !std::isfinite(r.stop_loss)) bad("the early-stopping loss must be zero or positive");
  if (r.teacher.answer_tokens < 1 || r.teacher.answer_tokens > 1024 || r.teacher.top_k < 1 || r.teacher.top_k > 1024)
    bad("teacher answers must hold 1 to 1024 tokens, and top k must lie in [1, 1024]");
  if (r.scope_layers < 0) bad("the scope's layer count must be zero (no scope) or positive");
  if (r.rehearse_per_step > 1024 || r.rehearsal_examples > 4096)
    bad("rehearsal takes at most 1024 examples a step from a memory of at most 4096");
  if (r.rehearse_per_step > 0 && r.rehearsal_examples == 0) bad("rehearsal needs a memory of at least one example");
  if (!(o.guard.max_drift >= 0) || !std::isfinite(o.guard.max_drift)) bad("the guard's drift bound must be zero or positive");
  for (const auto* prompts : {&r.replay_prompts, &o.guard.canaries})
    for (const std::string& p : *prompts)
      if (p.empty()) bad("replay and canary prompts must not be empty");
  validate_adamw_options(o.adamw);
}

TrainerOptions teaching_recipe() {
  TrainerOptions o;
  o.steps_per_batch = 60;
  o.adamw.lr = 1e-2;
  o.retention.stop_loss = 0.05;
  o.retention.distill_weight = 1.0;
  o.retention.anchors_per_step = 4;
  o.retention.rehearse_per_step = 4;
  o.guard.max_drift = 0.5;
  return o;
}

double gaussian_epsilon(double sigma, uint64_t compositions, double delta) {
  if (sigma <= 0 || compositions == 0) return 0;
  // Renyi DP of the Gaussian mechanism (sensitivity 1, noise sigma) at order a is a / (2 sigma^2); it adds up
  // over compositions, and converts to (eps, delta) as rdp + log(1/delta) / (a - 1), minimised over a.
  double best = INFINITY;
  for (double a = 1.01; a < 1e4; a *= 1.01)
    best = std::min(best, static_cast<double>(compositions) * a / (2 * sigma * sigma) + std::log(1 / delta) / (a - 1));
  return best;
}

DomainTrainer::DomainTrainer(AdapterRegistry& registry, std::shared_ptr<const Model> model,
                             std::shared_ptr<const Tokenizer> tokenizer, std::string domain, TrainerOptions options,
                             TrainerCallbacks callbacks)
    : registry_(registry),
      model_(std::move(model)),
      tokenizer_(std::move(tokenizer)),
      domain_(std::move(domain)),
      options_(std::move(options)),
      callbacks_(std::move(callbacks)) {
  validate_trainer_options(options_);
  validate_adapter_name(domain_);
  if (!model_ || !tokenizer_) throw Error(ErrorKind::InvalidArgument, "training needs a loaded model with a tokenizer");
  try {
    chat_ = std::make_unique<ChatTemplate>(chat_template_of(*tokenizer_));
  } catch (const Error&) {
    chat_.reset();  // "messages" events are then refused with a message naming the cause
  }
  try {
    registry_.manifest(domain_);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::NotFound) throw;
    registry_.create(domain_, options_.create);
  }
  domain_lock_.emplace(registry_.lock_domain(domain_, "start another trainer"));
  domain_lock_->record_holder();
  registry_.manifest(domain_);  // removed before the lock was taken: NotFound
  dir_ = registry_.root() + "/" + domain_ + "/training";
  ensure_directory(dir_);
  if (options_.guard.max_drift > 0) {
    canary_prompts_ = builtin_canary_prompts();
    const std::vector<std::string> own = domain_canaries();
    canary_prompts_.insert(canary_prompts_.end(), own.begin(), own.end());
  }
  load_teachers(false);
  recover();
  worker_ = std::thread([this] { run(); });
}

DomainTrainer::~DomainTrainer() {
  try {
    stop();
  } catch (...) {
    // A destructor must not throw; the log still holds every acknowledged event for the next start.
  }
  log_.reset();  // its syncer reports into this object: it ends first
}

// From the log's syncer (fsync batch), from append() or from a compaction: in log order (announce_mu_ keeps
// two reporters from interleaving), each batch's "applied" after its "durable".
void DomainTrainer::durable(uint64_t seq) {
  std::lock_guard<std::mutex> order(announce_mu_);
  std::vector<std::pair<uint64_t, std::vector<std::string>>> done;
  std::vector<BatchReport> held;
  {
    std::lock_guard<std::mutex> lock(unacked_mu_);
    while (!unacked_.empty() && unacked_.begin()->first <= seq) {
      done.emplace_back(unacked_.begin()->first, std::move(unacked_.begin()->second));
      unacked_.erase(unacked_.begin());
    }
    while (!held_reports_.empty() && held_reports_.begin()->first <= seq) {
      held.push_back(std::move(held_reports_.begin()->second));
      held_reports_.erase(held_reports_.begin());
    }
  }
  if (callbacks_.on_durable)
    for (const auto& [s, ids] : done) callbacks_.on_durable(ids, s);
  if (callbacks_.on_applied)
    for (const BatchReport& r : held) callbacks_.on_applied(r);
}

// A batch is served from memory as soon as it is applied, but announced applied only once durable: a client
// told "applied" may rely on it as acknowledged (fsync batch applies before its sync).
void DomainTrainer::announce_applied(BatchReport report) {
  std::lock_guard<std::mutex> order(announce_mu_);
  {
    // The ids leave the batch in flight in the same step as they are held or announced: waiting() never finds
    // them in neither, so a caller that subscribes after the announcement is not left waiting for it.
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& id : report.ids) in_flight_ids_.erase(id);
    std::lock_guard<std::mutex> unacked_lock(unacked_mu_);
    if (unacked_.count(report.seq)) {
      const uint64_t seq = report.seq;
      held_reports_.emplace(seq, std::move(report));
      return;
    }
  }
  if (callbacks_.on_applied) callbacks_.on_applied(report);
}

// The log's syncer could not sync (fsync batch): nothing more will be acknowledged, so the trainer stops as
// when an append fails, and those waiting hear why.
void DomainTrainer::sync_failed(const std::string& why) {
  const Error error(ErrorKind::Io, why);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (failure_) return;
    failure_ = error;
    done_.notify_all();
  }
  try {
    if (callbacks_.on_failed) callbacks_.on_failed(failure_error());
  } catch (...) {  // a listener's own failure must not end the process from the log's thread
  }
}

EventContext DomainTrainer::context(bool live) const {
  EventContext ctx;
  ctx.domain = domain_;
  ctx.tokenizer = tokenizer_.get();
  ctx.chat = chat_.get();
  ctx.context_length = model_->config.context_length;
  if (live) {
    // The example limit is checked when an event arrives; a logged event was accepted under the limit of its day.
    ctx.max_example_tokens = options_.max_example_tokens;
    // Staleness is counted in versions, not files: a remote worker's gradient stays welcome while the adapter
    // publishes many versions a second and keeps only a few on disk.
    ctx.base_version_problem = [this](uint64_t v) -> std::string {
      std::lock_guard<std::mutex> lock(mu_);
      const std::string base = "base version " + std::to_string(v);
      if (v > version_) return base + " is newer than the adapter's current version " + std::to_string(version_);
      if (version_ - v > options_.max_staleness)
        return base + " is more than " + std::to_string(options_.max_staleness) + " versions behind the current one (" +
               std::to_string(version_) + "); recompute the gradient on a recent version";
      return "";
    };
  }
  return ctx;
}

void DomainTrainer::run_compute(const std::function<void()>& work) const {
  if (options_.compute) {
    options_.compute(work);
  } else {
    work();
  }
}

// The base model's answers to the replay and canary prompts, made once per domain and kept in the training
// folder: replays after a crash then train and judge against exactly the same ones. Stored ones are read and
// checked at start (a damaged file refuses the start, before any event is acknowledged); missing ones are made
// at the first batch, so that a trainer with an empty log acknowledges events at once.
double DomainTrainer::load_teachers(bool make) {
  const RetentionOptions& r = options_.retention;
  double made_ms = 0;
  auto load = [&](TeacherSet& set, const std::string& name, const std::vector<std::string>& prompts) {
    if (set.ready) return;
    const std::string path = dir_ + "/" + name;
    if (auto stored = read_teacher_targets(path, prompts, r.teacher, weights_name(*model_))) {
      validate_teacher_targets(*model_, *stored, r.teacher);
      set = {std::move(*stored), true};
    } else if (make) {
      const auto start = Clock::now();
      std::vector<TeacherTargets> built;
      run_compute([&] { built = build_teacher_targets(*model_, *tokenizer_, chat_.get(), prompts, r.teacher); });
      write_teacher_targets(path, prompts, built, r.teacher, weights_name(*model_));
      set = {std::move(built), true};
      made_ms += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    }
  };
  if (r.distill_weight > 0 && options_.privacy.noise_multiplier == 0)
    load(anchors_, "replay-targets.json", r.replay_prompts.empty() ? builtin_replay_prompts() : r.replay_prompts);
  if (!canary_prompts_.empty()) load(canaries_, "canary-targets.json", canary_prompts_);
  return made_ms;
}

// The domain's registered canary prompts: those of the options, which replace the ones kept in
// training/canaries.json, else the kept ones.
std::vector<std::string> DomainTrainer::domain_canaries() const {
  const std::string path = dir_ + "/canaries.json";
  if (!options_.guard.canaries.empty()) {
    write_file_atomically(path, nlohmann::json(options_.guard.canaries).dump() + "\n");
    return options_.guard.canaries;
  }
  if (::access(path.c_str(), F_OK) != 0) return {};
  try {
    return nlohmann::json::parse(read_text_file(path, ErrorKind::CorruptFile)).get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "the canary prompts in '" + path + "' are unreadable: " + e.what());
  }
}

DistillationTerm DomainTrainer::distillation_for(int64_t steps_taken) const {
  DistillationTerm d;
  if (anchors_.targets.empty()) return d;
  d.weight = options_.retention.distill_weight;
  const size_t n = std::min(options_.retention.anchors_per_step, anchors_.targets.size());
  for (size_t i = 0; i < n; ++i)
    d.anchors.push_back(&anchors_.targets[(static_cast<size_t>(steps_taken) * n + i) % anchors_.targets.size()]);
  return d;
}

void DomainTrainer::recover() {
  const AdapterManifest manifest = registry_.manifest(domain_);
  scale_ = manifest.config.scale();
  const std::optional<TrainerCheckpoint> c = read_checkpoint(dir_);
  if (c) {
    layout_ = std::make_shared<TileLayout>(c->adapter->layout());
    state_ = State{c->adapter->values(), c->adam, c->counters, c->scope,
                   c->unscoped && !learnt_nothing(*layout_, c->adapter->values()), c->rehearsal};
    ids_ = c->ids;
    seq_ = checkpoint_seq_ = c->seq;
  } else {
    // First training of this adapter: its current version is the starting point, fixed by a checkpoint so
    // that a replay after a crash starts from the same values.
    auto snap = registry_.acquire(domain_);
    layout_ = std::make_shared<TileLayout>(snap->image->layout());
    state_.values = snap->image->values();
    // A rolled-back version keeps the scope it was published with; one that learnt without a scope (imported,
    // trained before scopes, or by text and gradients) never gets one.
    state_.scope = snap->scope;
    state_.unscoped = !snap->scope && !learnt_nothing(*layout_, state_.values);
    checkpoint();
  }
  quarantined_ = read_quarantine(dir_);
  log_ = std::make_unique<WriteAheadLog>(dir_ + "/log", options_.fsync,
                                         std::chrono::microseconds(options_.group_commit_us),
                                         [this](uint64_t seq) { durable(seq); },
                                         [this](const std::string& why) { sync_failed(why); });
  const std::optional<ApplyAttempt> attempt = read_apply_attempt(dir_);
  std::vector<BatchReport> reports;
  for (const WalRecord& rec : log_->recovered(seq_)) {
    if (!quarantined_.count(rec.seq)) replay(rec, attempt, reports);
    seq_ = rec.seq;
  }
  version_ = manifest.current;
  totals_ = state_.totals;
  // Without a checkpoint the values were just read from the current version, which is therefore whole.
  if (!reports.empty() || (c && !current_version_holds_state(manifest))) {
    version_ = registry_.publish(domain_, state_.values, state_.totals.events_applied, layout_.get(), state_.scope,
                                 Sync::Deferred).version;
    checkpoint();
  }
  for (BatchReport& r : reports) {
    r.version = version_;
    if (callbacks_.on_applied) callbacks_.on_applied(r);
  }
}

// Versions are published without a sync (the log and checkpoint are the durable record): after a power loss
// the current one may be torn, or the manifest may name one from before the checkpoint. Either is published
// again from the recovered state.
bool DomainTrainer::current_version_holds_state(const AdapterManifest& manifest) {
  const AdapterVersionInfo* current = manifest.find(manifest.current);
  if (!current || current->events != state_.totals.events_applied) return false;
  try {
    registry_.acquire(domain_);  // reads and checks the file when it is not in memory
    return true;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::CorruptFile && e.kind() != ErrorKind::NotFound) throw;  // torn, or never written
    return false;
  }
}

// One logged batch applied again. Events are parsed as when they arrived; a batch that no longer parses, or
// that processes kept dying on, is quarantined rather than stopping the domain for good.
void DomainTrainer::replay(const WalRecord& rec, std::optional<ApplyAttempt> attempt,
                           std::vector<BatchReport>& reports) {
  EventContext ctx = context(false);
  ctx.layout = layout_.get();
  std::vector<LearningEvent> batch;
  std::vector<std::string> ids;
  std::istringstream lines(rec.payload);
  for (std::string line; std::getline(lines, line);) {
    try {
      batch.push_back(parse_learning_event(line, ctx));
      ids.push_back(batch.back().id);
    } catch (const Error& e) {
      return quarantine(rec.seq, rec.payload, ids, std::string("an acknowledged event no longer parses: ") + e.what());
    }
  }
  const int attempts = attempt && attempt->seq == rec.seq ? attempt->attempts : 0;
  if (attempts >= kMaxApplyAttempts)
    return quarantine(rec.seq, rec.payload, ids,
                      "the process died " + std::to_string(attempts) +
                          " times while applying this batch (killed for lack of memory?)");
  ids_.insert(ids.begin(), ids.end());
  std::optional<BatchReport> r = apply(batch, rec.seq, attempts + 1, false);
  if (!r) return;
  r->replayed = true;
  r->ids = std::move(ids);
  replayed_ += 1;
  reports.push_back(std::move(*r));
}

void DomainTrainer::checkpoint() {
  TrainerCheckpoint c;
  c.seq = seq_;
  c.adapter = AdapterImage::build(*layout_, state_.values.data());
  c.adam = state_.adam;
  c.counters = state_.totals;
  c.scope = state_.scope;
  c.unscoped = state_.unscoped;
  c.rehearsal = state_.rehearsal;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Only events already applied belong to the checkpoint; queued ones are not in the log yet.
    c.ids = ids_;
    for (const Pending& p : queue_) c.ids.erase(p.event.id);
  }
  write_checkpoint(dir_, c);
  if (log_) log_->compact(seq_);
  checkpoint_seq_ = seq_;
  std::lock_guard<std::mutex> lock(mu_);
  log_bytes_ = log_ ? log_->bytes() : 0;
}

EventContext DomainTrainer::live_context(std::shared_ptr<const TileLayout>& layout) {
  EventContext ctx = context(true);
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) throw Error(ErrorKind::Busy, "the trainer of domain '" + domain_ + "' is shutting down");
  layout = layout_;
  ctx.layout = layout.get();
  return ctx;
}

SubmitResult DomainTrainer::submit(std::string_view text) {
  std::shared_ptr<const TileLayout> layout;
  const EventContext ctx = live_context(layout);
  LearningEvent ev;
  try {
    ev = parse_learning_event(text, ctx);
  } catch (const Error&) {
    // An event accepted before stays a duplicate even if it no longer validates (its base version was
    // pruned since, say): it was applied once, and a client resending it must not be told it is bad.
    if (auto id = event_id(text); id && duplicate(*id)) return SubmitResult::Duplicate;
    std::lock_guard<std::mutex> lock(mu_);
    rejected_ += 1;
    throw;
  }
  return enqueue(std::move(ev));
}

SubmitResult DomainTrainer::submit_gradient(std::string id, uint64_t base_version,
                                            const std::vector<GradientPart>& parts) {
  if (duplicate(id)) return SubmitResult::Duplicate;  // before the check, as for JSON events
  std::shared_ptr<const TileLayout> layout;
  const EventContext ctx = live_context(layout);
  LearningEvent ev;
  try {
    ev = gradient_event(std::move(id), base_version, parts, ctx);
  } catch (const Error&) {
    std::lock_guard<std::mutex> lock(mu_);
    rejected_ += 1;
    throw;
  }
  return enqueue(std::move(ev));
}

bool DomainTrainer::waiting(const std::string& id, bool until_applied) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) throw failure_error();  // what waits will not be applied in this run
  if (std::any_of(queue_.begin(), queue_.end(), [&](const Pending& p) { return p.event.id == id; })) return true;
  // In flight: until announced applied, or for durable waits until logged (then unacked_ tells).
  if (in_flight_ids_.count(id) && (until_applied || !in_flight_logged_)) return true;
  std::lock_guard<std::mutex> unacked_lock(unacked_mu_);
  if (until_applied)  // applied before its sync (fsync batch): announced once durable
    return std::any_of(held_reports_.begin(), held_reports_.end(), [&](const auto& held) {
      return std::find(held.second.ids.begin(), held.second.ids.end(), id) != held.second.ids.end();
    });
  return std::any_of(unacked_.begin(), unacked_.end(), [&](const auto& batch) {
    return std::find(batch.second.begin(), batch.second.end(), id) != batch.second.end();
  });
}

bool DomainTrainer::duplicate(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) throw failure_error();  // an id of a batch that failed to log is no duplicate
  if (!ids_.count(id)) return false;
  duplicates_ += 1;
  return true;
}

SubmitResult DomainTrainer::enqueue(LearningEvent ev) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) throw failure_error();
  // Checked again under the lock that queues: the worker may have drained and exited since the first check.
  if (stopping_) throw Error(ErrorKind::Busy, "the trainer of domain '" + domain_ + "' is shutting down");
  if (ids_.count(ev.id)) {
    duplicates_ += 1;
    return SubmitResult::Duplicate;
  }
  if (queue_.size() >= options_.queue_capacity) {
    busy_ += 1;
    throw Error(ErrorKind::Busy, "domain '" + domain_ + "' has " + std::to_string(queue_.size()) +
                                     " events waiting (the queue's limit); retry shortly");
  }
  ids_.insert(ev.id);
  queued_examples_ += ev.kind == EventKind::Example;
  queue_.push_back({std::move(ev), Clock::now()});
  accepted_ += 1;
  wake_.notify_all();
  return SubmitResult::Queued;
}

Error DomainTrainer::failure_error() const {
  return Error(failure_->kind(), "training of domain '" + domain_ + "' stopped: " + failure_->what());
}

void DomainTrainer::wait_for_room(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait_for(lock, timeout, [&] { return queue_.size() < options_.queue_capacity || stopping_ || failure_; });
}

bool DomainTrainer::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_ || failure_;
}

void DomainTrainer::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  flushing_ += 1;
  wake_.notify_all();
  done_.wait(lock, [&] { return (queue_.empty() && in_flight_ == 0) || failure_; });
  flushing_ -= 1;
  if (failure_) throw failure_error();
}

void DomainTrainer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  // A second stop finds the checkpoint at the log's end and writes nothing.
  if (!failure_ && seq_ != checkpoint_seq_) checkpoint();
}

void DomainTrainer::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) break;
    const auto deadline = queue_.front().arrived +
                          std::chrono::milliseconds(queued_examples_ ? options_.batch_ms : options_.gradient_batch_ms);
    while (queue_.size() < options_.batch_events && !stopping_ && flushing_ == 0) {
      if (options_.deterministic) {
        wake_.wait(lock);
      } else if (wake_.wait_until(lock, deadline) == std::cv_status::timeout) {
        break;
      }
    }
    const size_t n = std::min(options_.batch_events, queue_.size());
    std::vector<LearningEvent> batch;
    for (size_t i = 0; i < n; ++i) {
      queued_examples_ -= queue_.front().event.kind == EventKind::Example;
      in_flight_ids_.insert(queue_.front().event.id);
      batch.push_back(std::move(queue_.front().event));
      queue_.pop_front();
    }
    in_flight_ = n;
    in_flight_logged_ = false;
    done_.notify_all();  // the queue has room (wait_for_room)
    lock.unlock();
    std::optional<Error> error;
    try {
      process(std::move(batch));
    } catch (const Error& e) {
      error = e;
    } catch (const std::exception& e) {
      error = Error(ErrorKind::Internal, message_of(e));
    }
    lock.lock();
    in_flight_ = 0;
    if (error) {
      // Logging, publishing or making the teachers' answers failed (disk full, say). The log is the source of
      // truth: whatever it holds is applied on the next start. Stop here rather than skip a batch and diverge.
      if (!failure_) failure_ = error;
      for (const std::string& id : in_flight_ids_) ids_.erase(id);
      in_flight_ids_.clear();
      for (const Pending& p : queue_) ids_.erase(p.event.id);
      queue_.clear();
      queued_examples_ = 0;
      done_.notify_all();
      lock.unlock();
      try {
        if (callbacks_.on_failed) callbacks_.on_failed(failure_error());
      } catch (...) {  // a listener's own failure must not end the process from this thread
      }
      return;
    }
    in_flight_ids_.clear();
    done_.notify_all();
  }
}

void DomainTrainer::process(std::vector<LearningEvent> batch) {
  std::vector<std::string> ids;
  const std::string payload = payload_of(batch, ids);
  const uint64_t seq = seq_ + 1;
  {
    // Before the append: with fsync always or never, the log reports it durable from inside append(). In one
    // step with in_flight_logged_, so waiting() finds the ids in flight or logged, never in neither.
    std::lock_guard<std::mutex> lock(mu_);
    std::lock_guard<std::mutex> unacked_lock(unacked_mu_);
    unacked_[seq] = ids;
    in_flight_logged_ = true;
  }
  try {
    log_->append(seq, payload);
  } catch (...) {
    // Not in the log: a resend of these ids must wait (and hear the failure), not pass as durable.
    std::lock_guard<std::mutex> lock(mu_);
    std::lock_guard<std::mutex> unacked_lock(unacked_mu_);
    unacked_.erase(seq);
    in_flight_logged_ = false;
    throw;
  }
  seq_ = seq;
  std::optional<BatchReport> report = apply(batch, seq, 1, true);
  if (report) {
    report->ids = std::move(ids);
    announce_applied(std::move(*report));
  }
  write_unwritten();
  if (seq_ - checkpoint_seq_ >= options_.checkpoint_every) checkpoint();
}

// Served and announced first, written after: the log and checkpoint are the durable record (Sync::Deferred).
void DomainTrainer::write_unwritten() {
  if (!unwritten_) return;
  AdapterRegistry::PendingVersion pending = std::move(*unwritten_);
  unwritten_.reset();
  registry_.write_published(pending, Sync::Deferred);
}

std::vector<float> DomainTrainer::step_gradient(const std::vector<TrainingExample>& examples, size_t own,
                                                const std::vector<const LearningEvent*>& submitted,
                                                const std::vector<float>& values, uint64_t seq, int step,
                                                const DistillationTerm& distill, StepFigures& f) const {
  const size_t n = values.size();
  const double units = static_cast<double>(examples.size() + submitted.size());
  std::vector<float> total(n, 0.0f);
  auto add = [&](const std::vector<float>& g, double w) {
    for (size_t i = 0; i < n; ++i) total[i] += static_cast<float>(w * g[i]);
  };
  // A submission's indices are unique (events.h), so it is added, and its norm taken, entry by entry.
  auto add_sparse = [&](const LearningEvent& ev, double w) {
    for (const auto& [index, value] : ev.gradient) total[static_cast<size_t>(index)] += static_cast<float>(w * value);
  };
  f = StepFigures{};
  if (options_.privacy.noise_multiplier > 0) {
    // DP-SGD: every example and submission is clipped on its own, the sum gets Gaussian noise scaled to the
    // clip bound, then the mean is taken (without the distillation term). The noise is drawn from (seed, batch,
    // step) so replays match.
    const double clip = options_.privacy.clip;
    std::vector<double> losses;
    for (const TrainingExample& ex : examples) {
      LoraGradients g = lora_gradients(*model_, *layout_, values, scale_, {ex}, options_.gradients);
      losses.push_back(g.loss);
      clip_to(g.values, clip);
      add(g.values, 1.0);
    }
    f.loss = mean_loss(examples, losses, 0, own);
    for (const LearningEvent* ev : submitted) {
      double sq = 0;
      for (const auto& entry : ev->gradient) sq += static_cast<double>(entry.second) * entry.second;
      add_sparse(*ev, clip_factor(std::sqrt(sq), clip));
    }
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull ^ (seq << 16) ^ static_cast<uint64_t>(step));
    std::normal_distribution<double> normal(0.0, options_.privacy.noise_multiplier * clip);
    for (float& x : total) x = static_cast<float>(x + normal(rng));
    scale_by(total, 1.0 / units);
  } else {
    if (!examples.empty()) {
      LoraGradients g = lora_gradients(*model_, *layout_, values, scale_, examples, options_.gradients, &distill);
      f.loss = mean_loss(examples, g.example_losses, 0, own);
      f.rehearsal_loss = mean_loss(examples, g.example_losses, own, examples.size());
      add(g.values, static_cast<double>(examples.size()) / units);
    }
    for (const LearningEvent* ev : submitted) add_sparse(*ev, 1.0 / units);
  }
  f.norm = norm_of(total);
  clip_to(total, options_.max_grad_norm);
  return total;
}

// The batch's steps on `state`: gradients, clipping and AdamW, steps_per_batch times, and the counters.
BatchReport DomainTrainer::compute(const std::vector<LearningEvent>& batch, uint64_t seq, State& state) const {
  BatchReport r;
  r.seq = seq;
  std::vector<TrainingExample> examples;
  std::vector<const LearningEvent*> submitted;
  for (const LearningEvent& ev : batch) {
    if (ev.kind == EventKind::Example) {
      examples.push_back(ev.example);
      r.tokens += target_tokens(ev.example);
    } else {
      submitted.push_back(&ev);
    }
  }
  r.examples = examples.size();
  r.gradients = submitted.size();
  // Early stopping only judges batches of examples alone: a submitted gradient must take its steps, and under
  // differential privacy the step count must not depend on the (unnoised) loss of private examples.
  // Only they rehearse too; every batch's examples are remembered while rehearsal is on, unless privacy forbids
  // (RetentionOptions).
  const bool privately = options_.privacy.noise_multiplier > 0;
  const bool judged = !examples.empty() && submitted.empty() && !privately;
  const double stop_loss = judged ? options_.retention.stop_loss : 0;
  const size_t rehearse = judged ? options_.retention.rehearse_per_step : 0;
  const bool remembering = options_.retention.rehearse_per_step > 0 && !privately;
  // A memory bound lowered since the last start applies before this batch rehearses.
  if (remembering) remember(state.rehearsal, {}, options_.retention.rehearsal_examples, options_.seed, seq);
  int64_t rehearsed_tokens = 0;
  for (int step = 0; step < options_.steps_per_batch; ++step) {
    bool reached = false;
    auto work = [&] {
      StepFigures f;
      const DistillationTerm distill = distillation_for(state.adam.step);
      const std::vector<TrainingExample> earlier = rehearsed_at(state.rehearsal, rehearse, state.adam.step);
      std::vector<TrainingExample> with_earlier;  // copied only when there is something to rehearse
      if (!earlier.empty()) {
        with_earlier = examples;
        with_earlier.insert(with_earlier.end(), earlier.begin(), earlier.end());
      }
      std::vector<float> grad = step_gradient(earlier.empty() ? examples : with_earlier, examples.size(), submitted,
                                              state.values, seq, step, distill, f);
      if (step == 0) {
        r.loss = f.loss;
        r.rehearsal_loss = f.rehearsal_loss;
      }
      r.final_loss = f.loss;
      r.rehearsed = earlier.size();
      // Early stopping: the batch's examples are learnt; more steps would only move the rest of the model.
      reached = stop_loss > 0 && f.loss <= stop_loss;
      if (reached) return;
      r.grad_norm = f.norm;
      adamw_step(options_.adamw, state.adam, state.values, grad);
      for (const TrainingExample& ex : earlier) rehearsed_tokens += target_tokens(ex);
    };
    // Submitted gradients alone need no model: summed here, they do not wait for the engine's next step.
    if (examples.empty()) {
      work();
    } else {
      run_compute(work);
    }
    if (reached) break;
    r.steps += 1;
  }
  if (remembering) remember(state.rehearsal, examples, options_.retention.rehearsal_examples, options_.seed, seq);
  for (float x : state.values)
    if (!std::isfinite(x))
      throw Error(ErrorKind::InvalidArgument, "the update made adapter values non-finite (lower the learning rate)");
  count_applied(state.totals, r, batch.size(), rehearsed_tokens);
  return r;
}

std::optional<BatchReport> DomainTrainer::apply(const std::vector<LearningEvent>& batch, uint64_t seq, int attempt,
                                                bool publish) {
  // Before the attempt mark: dying while making the teachers' answers or the general prompts' keys is not the
  // batch's fault, and a failure there stops the trainer with its cause instead of setting batches aside.
  const double teacher_ms = load_teachers(true) + (scoping(batch, state_) ? load_general_scope() : 0);
  const auto start = Clock::now();
  begin_apply_attempt(dir_, {seq, attempt});
  State next = state_;
  BatchReport r;
  std::optional<Drift> drift;
  try {
    r = compute(batch, seq, next);
    widen_scope(batch, next);
    drift = canary_drift(next.values, r);
  } catch (const std::exception& e) {
    // The gradient or the update failed (out of memory, non-finite values): it would fail again on every
    // replay, so the batch is set aside and the domain goes on.
    end_apply_attempt(dir_);
    std::vector<std::string> ids;
    const std::string payload = payload_of(batch, ids);
    quarantine(seq, payload, ids, message_of(e));
    return std::nullopt;
  }
  if (drift && refuse(batch, seq, next.values, *drift)) return std::nullopt;
  state_ = std::move(next);
  end_apply_attempt(dir_);
  if (state_.scope) r.scope_examples = state_.scope->examples.size();
  if (publish) {
    unwritten_ =
        registry_.publish_in_memory(domain_, state_.values, state_.totals.events_applied, nullptr, state_.scope);
    r.version = unwritten_->version.version;
  }
  r.update_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  r.teacher_ms = teacher_ms;
  record_applied(r);
  return r;
}

namespace {

// What a request must be near for the adapter to answer it: the prompt before the example's first target;
// nothing for a "text" event, whose targets start at once and which teaches the model at large.
std::optional<std::vector<int32_t>> scope_prompt(const TrainingExample& ex) {
  size_t first = 0;
  while (first < ex.is_target.size() && !ex.is_target[first]) ++first;
  if (first <= 1) return std::nullopt;
  return std::vector<int32_t>(ex.tokens.begin(), ex.tokens.begin() + static_cast<std::ptrdiff_t>(first));
}

}  // namespace

bool DomainTrainer::scoping(const std::vector<LearningEvent>& batch, const State& state) const {
  if (state.unscoped || options_.retention.scope_layers == 0 || options_.privacy.noise_multiplier > 0) return false;
  return std::all_of(batch.begin(), batch.end(), [](const LearningEvent& ev) {
    return ev.kind == EventKind::Example && scope_prompt(ev.example).has_value();
  });
}

void DomainTrainer::widen_scope(const std::vector<LearningEvent>& batch, State& state) const {
  if (state.unscoped) return;
  if (!scoping(batch, state)) {
    // What this batch teaches reaches beyond any prompts: the adapter answers every request from now on.
    state.scope.reset();
    state.unscoped = true;
    return;
  }
  std::vector<std::vector<int32_t>> prompts;
  std::vector<ScopeMemory> memories;
  for (const LearningEvent& ev : batch) {
    prompts.push_back(*scope_prompt(ev.example));
    memories.push_back(ev.memory);  // empty but for conversations
  }
  // The general prompts' keys were read at the scope's depth (load_general_scope): a scope keeps the depth
  // it was started with, as keys read after other layers would not compare.
  auto next = state.scope ? std::make_shared<AdapterScope>(*state.scope)
                          : std::make_shared<AdapterScope>(AdapterScope{general_.layers, general_.dim, {}, {}});
  run_compute([&] { add_scope_prompts(*next, *model_, prompts, &general_, memories); });
  state.scope = std::move(next);
}

double DomainTrainer::load_general_scope() {
  const int64_t layers = state_.scope ? state_.scope->layers : options_.retention.scope_layers;
  if (general_.layers == layers && !general_.empty()) return 0;
  const auto start = Clock::now();
  std::vector<std::string> texts = builtin_replay_prompts();
  texts.insert(texts.end(), builtin_canary_prompts().begin(), builtin_canary_prompts().end());
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& t : texts) prompts.push_back(prompt_tokens(*tokenizer_, chat_.get(), t));
  AdapterScope general{layers, model_->config.hidden_size, {}, {}};
  run_compute([&] { add_scope_prompts(general, *model_, prompts); });
  general_ = std::move(general);
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::optional<Drift> DomainTrainer::canary_drift(const std::vector<float>& values, BatchReport& r) const {
  if (canaries_.targets.empty()) return std::nullopt;
  Drift d;
  run_compute(
      [&] { d = distillation_drift(*model_, *layout_, values, scale_, canaries_.targets, options_.gradients); });
  // Rounding may take an unchanged adapter's KL just below zero; a NaN stays NaN, for refuse() to refuse it.
  if (d.mean < 0) d.mean = 0;
  r.drift = d.mean;
  std::lock_guard<std::mutex> lock(mu_);
  last_drift_ = d.mean;
  return d;
}

bool DomainTrainer::refuse(const std::vector<LearningEvent>& batch, uint64_t seq, const std::vector<float>& values,
                           const Drift& d) {
  if (d.mean <= options_.guard.max_drift) return false;  // a NaN drift is refused too
  end_apply_attempt(dir_);
  GuardRejection g{d.mean, options_.guard.max_drift, d.max, rejected_candidate_path(dir_, seq)};
  ensure_directory(dir_ + "/quarantine");
  AdapterImage::build(*layout_, values.data())->write(g.candidate);
  std::vector<std::string> ids;
  const std::string payload = payload_of(batch, ids);
  char reason[256];
  std::snprintf(reason, sizeof(reason),
                "the publication guard refused the new version: its answers to canary prompts drift %.4f nats from "
                "the base model's, over the bound of %.4f (lower the learning rate or steps, or raise the bound)",
                d.mean, options_.guard.max_drift);
  quarantine(seq, payload, ids, reason, g);
  return true;
}

void DomainTrainer::record_applied(const BatchReport& r) {
  std::lock_guard<std::mutex> lock(mu_);
  totals_ = state_.totals;
  log_bytes_ = log_->bytes();
  if (r.version > 0) version_ = r.version;
  if (r.examples > 0) {
    losses_.push_back(r.loss);
    if (losses_.size() > 256) losses_.pop_front();
  }
  update_ms_.push_back(r.update_ms);
  if (update_ms_.size() > 1024) update_ms_.pop_front();
}

void DomainTrainer::quarantine(uint64_t seq, const std::string& payload, const std::vector<std::string>& ids,
                               const std::string& reason, const std::optional<GuardRejection>& rejection) {
  QuarantinedBatch q = quarantine_batch(dir_, seq, reason, payload, ids, rejection);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& id : ids) {
      ids_.erase(id);  // never applied: the ids may come again
      in_flight_ids_.erase(id);  // settled before it is announced, as in announce_applied
    }
    quarantined_[seq] = q;
  }
  if (callbacks_.on_quarantined) callbacks_.on_quarantined(q);
}

TrainerStats DomainTrainer::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  TrainerStats s;
  s.domain = domain_;
  s.version = version_;
  s.accepted = accepted_;
  s.duplicates = duplicates_;
  s.rejected = rejected_;
  s.busy = busy_;
  s.totals = totals_;
  s.replayed_batches = replayed_;
  s.quarantined_batches = quarantined_.size();
  for (const auto& [seq, q] : quarantined_) s.quarantined_events += q.ids.size();
  if (!quarantined_.empty()) s.last_quarantine_reason = quarantined_.rbegin()->second.reason;
  for (const auto& [seq, q] : quarantined_) s.rejected_versions += q.rejection.has_value();
  s.last_drift = last_drift_;
  s.max_drift = options_.guard.max_drift;
  s.queue_depth = queue_.size() + in_flight_;
  s.recent_losses.assign(losses_.begin(), losses_.end());
  s.last_loss = losses_.empty() ? 0 : losses_.back();
  const std::vector<double> ms(update_ms_.begin(), update_ms_.end());
  s.update_ms_p50 = percentile(ms, 0.50);
  s.update_ms_p99 = percentile(ms, 0.99);
  s.log_bytes = log_bytes_;
  if (failure_) s.failure = failure_->what();
  if (options_.privacy.noise_multiplier > 0) {
    s.delta = options_.privacy.delta;
    s.epsilon = gaussian_epsilon(options_.privacy.noise_multiplier, static_cast<uint64_t>(options_.steps_per_batch),
                                 s.delta);
  }
  return s;
}

}  // namespace hs
