#include "serving/scheduler.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "adapters/lora_weights.h"
#include "common/metrics.h"
#include "model/decode_graphs.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/torch_error.h"
#include "serving/output_text.h"
#include "serving/prefix_cache.h"
#include "serving/row_logits.h"

namespace hs {

namespace {

// A request passed over this many times for its adapter stops later ones from passing it: it takes the next
// free slot once the running adapters drain, so a stream of requests for busy adapters cannot starve it.
constexpr int kMaxSkips = 16;

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

struct Scheduler::Sequence {
  GenerationRequest req;
  RequestCallbacks cb;
  std::shared_ptr<RequestHandle> handle = std::make_shared<RequestHandle>();
  std::unique_ptr<OutputText> out;
  std::mt19937_64 rng;
  std::vector<int32_t> history;  // prompt, then generated tokens
  GenerationResult result;
  std::string prefix_seed;       // what the KV depends on besides the tokens
  int64_t slot = -1;
  int64_t computed = 0;          // positions of the slot holding this request's keys and values
  uint64_t order = 0;            // admission order: prefill is first come, first served
  int32_t pending = -1;          // sampled, not yet in the KV cache
  int skips = 0;                 // times a later request was admitted first (its adapter did not fit)
  bool scope_checked = false;
  bool prompt_done = false;
  Clock::time_point submitted, admitted, last_token;
};

struct Scheduler::Job {
  const std::function<void()>* work = nullptr;
  std::exception_ptr error;
  bool done = false;
};

struct Scheduler::Metrics {
  std::unique_ptr<MetricsRegistry> own;  // when the caller passed none
  MetricFamily *requests, *rejected, *ttft, *itl, *e2e, *queue, *prompt_tokens, *generated_tokens, *running,
      *waiting, *kv_usage, *kv_slots, *prefix_queried, *prefix_hit, *steps, *step_tokens, *step_seconds,
      *forward_seconds, *graph_steps, *graph_captures, *train_jobs, *train_seconds, *scope;

  explicit Metrics(MetricsRegistry* r) {
    if (!r) r = (own = std::make_unique<MetricsRegistry>()).get();
    requests = &r->counter("hyprstream_requests_total", "Requests ended, by finish reason (stop, length, cancelled, error)");
    rejected = &r->counter("hyprstream_rejected_requests_total", "Requests refused before running, by reason");
    ttft = &r->histogram("hyprstream_time_to_first_token_seconds", "Submission to first token", latency_buckets());
    itl = &r->histogram("hyprstream_inter_token_latency_seconds", "Between consecutive tokens of a request",
                        latency_buckets());
    e2e = &r->histogram("hyprstream_request_duration_seconds", "Submission to the end of a request", latency_buckets());
    queue = &r->histogram("hyprstream_queue_time_seconds", "Submission to admission into a KV slot", latency_buckets());
    prompt_tokens = &r->counter("hyprstream_prompt_tokens_total", "Prompt tokens of admitted requests");
    generated_tokens = &r->counter("hyprstream_generation_tokens_total", "Tokens generated");
    running = &r->gauge("hyprstream_requests_running", "Requests holding a KV slot");
    waiting = &r->gauge("hyprstream_requests_waiting", "Requests queued for a KV slot");
    kv_usage = &r->gauge("hyprstream_kv_cache_usage_ratio", "KV positions in use over those allocated");
    kv_slots = &r->gauge("hyprstream_kv_slots_used", "KV slots in use");
    prefix_queried = &r->counter("hyprstream_prefix_cache_queried_tokens_total", "Prompt tokens looked up");
    prefix_hit = &r->counter("hyprstream_prefix_cache_hit_tokens_total", "Prompt tokens whose KV was reused");
    steps = &r->counter("hyprstream_steps_total", "Forward steps of the engine thread");
    step_tokens = &r->counter("hyprstream_step_tokens_total", "Tokens computed by forward steps");
    step_seconds = &r->counter("hyprstream_step_seconds_total", "Engine thread time in serving steps, all of it");
    forward_seconds = &r->counter("hyprstream_forward_seconds_total",
                                  "Of the step time, the model's forward (the rest is the scheduler's overhead)");
    graph_steps = &r->counter("hyprstream_graph_steps_total", "Decode steps replayed from a CUDA graph");
    graph_captures = &r->counter("hyprstream_graph_captures_total",
                                 "CUDA graphs captured (per bucket of rows, again for each new LoRA stack)");
    train_jobs = &r->counter("hyprstream_training_jobs_total", "Trainer compute jobs run on the engine thread");
    train_seconds = &r->counter("hyprstream_training_seconds_total", "Engine thread time spent training");
    scope = &r->counter("hyprstream_adapter_scope_total",
                        "Requests for an adapter with a relevance scope, by decision (inside: the adapter answered; "
                        "outside: the base model did)");
  }
};

namespace {

// Logits of a step on the device: decode-only steps replay a CUDA graph where there are graphs; a graph that
// cannot be captured turns them off (said once on stderr) and the step runs eagerly.
at::Tensor step_logits(std::unique_ptr<DecodeGraphs>& graphs, const Model& model, KvCache& cache, const SlotStep& step,
                       const LoraBatch* lora, MetricFamily& graph_steps, MetricFamily& graph_captures) {
  if (graphs && DecodeGraphs::serves(step)) {
    try {
      const int64_t before = graphs->captures();
      at::Tensor logits = graphs->run(step, lora);
      graph_steps.add(1);
      graph_captures.add(static_cast<double>(graphs->captures() - before));
      return logits;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "hyprstream: CUDA graphs are off for this run, decode steps run eagerly: %s\n",
                   message_of(e).c_str());
      graphs.reset();
    }
  }
  return forward_slots(model, cache, step, lora);
}

}  // namespace

void validate_scheduler_options(const SchedulerOptions& o) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (o.max_seqs < 1 || o.max_seqs > 4096) bad("max_seqs must lie in [1, 4096]");
  if (o.max_seq_tokens < 2) bad("max_seq_tokens must be at least 2");
  if (o.max_step_tokens < o.max_seqs)  // else the slots beyond the budget would never decode
    bad("max_step_tokens (" + std::to_string(o.max_step_tokens) + ") must be at least max_seqs (" +
        std::to_string(o.max_seqs) + "): every running request decodes a token per step");
  if (o.queue_capacity < 1) bad("the request queue needs room for at least one request");
  if (o.max_adapters < 1) bad("max_adapters must be at least 1");
  if (o.prefix_cache_tokens < 0 || o.prefix_block_tokens < 1) bad("prefix cache sizes must be positive");
  if (!(o.training_share >= 0 && o.training_share <= 1)) bad("training_share must lie in [0, 1]");
}

Scheduler::Scheduler(const Engine& engine, SchedulerOptions options, MetricsRegistry* metrics)
    : engine_(engine), options_(std::move(options)), metrics_(std::make_unique<Metrics>(metrics)) {
  validate_scheduler_options(options_);
  if (!engine_.model) throw Error(ErrorKind::Internal, "a scheduler needs an engine with weights");
  const Model& model = *engine_.model;
  options_.max_seq_tokens = std::min(options_.max_seq_tokens, model.config.context_length);
  cache_ = std::make_unique<KvCache>(make_kv_cache(model, options_.max_seqs, options_.max_seq_tokens));
  prefix_ = std::make_unique<PrefixCache>(model, options_.prefix_block_tokens, options_.prefix_cache_tokens);
  if (options_.cuda_graphs && DecodeGraphs::supported(model)) graphs_ = std::make_unique<DecodeGraphs>(model, *cache_);
  slots_.resize(static_cast<size_t>(options_.max_seqs));
  stats_.kv_slots = options_.max_seqs;
  stats_.kv_tokens = options_.max_seqs * options_.max_seq_tokens;
  stats_.prefix_blocks = prefix_->capacity_blocks();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() { stop(); }

int64_t Scheduler::max_request_tokens() const { return options_.max_seq_tokens; }

std::shared_ptr<RequestHandle> Scheduler::submit(GenerationRequest request, RequestCallbacks callbacks) {
  validate_generation_request(engine_, request, max_request_tokens());
  auto seq = std::make_unique<Sequence>();
  const SamplingParams& p = request.sampling;
  seq->rng.seed(p.seed >= 0 ? static_cast<uint64_t>(p.seed) : std::random_device{}());
  seq->out = std::make_unique<OutputText>(engine_.tokenizer.get(), p.stop);
  seq->history = request.prompt;
  seq->result.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  if (request.adapter && request.adapter_scale != 0) {
    char scale[32];
    std::snprintf(scale, sizeof(scale), "%.17g", request.adapter_scale);
    seq->prefix_seed = request.adapter->key + "|" + scale;
  }
  seq->submitted = Clock::now();
  seq->req = std::move(request);
  seq->cb = std::move(callbacks);
  auto handle = seq->handle;
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_ || stopping_) {
    metrics_->rejected->add(1, {{"reason", "shutting_down"}});
    throw Error(ErrorKind::Busy, "the server is shutting down");
  }
  if (static_cast<size_t>(stats_.waiting) + inbox_.size() >= options_.queue_capacity) {
    metrics_->rejected->add(1, {{"reason", "queue_full"}});
    throw Error(ErrorKind::Busy, std::to_string(options_.queue_capacity) +
                                     " requests are already waiting for a slot (the queue's limit); retry shortly");
  }
  inbox_.push_back(std::move(seq));
  wake_.notify_all();
  return handle;
}

void Scheduler::run_compute(const std::function<void()>& work) {
  Job job;
  job.work = &work;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (exited_ || std::this_thread::get_id() == thread_.get_id()) {
      lock.unlock();
      work();
      return;
    }
    jobs_.push_back(&job);
    wake_.notify_all();
    wake_.wait(lock, [&] { return job.done; });
  }
  if (job.error) std::rethrow_exception(job.error);
}

void Scheduler::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  draining_ = true;
  wake_.notify_all();
  wake_.wait(lock, [&] { return (stats_.running == 0 && stats_.waiting == 0 && inbox_.empty()) || exited_; });
}

void Scheduler::stop() {
  if (!thread_.joinable()) return;
  drain();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_all();
  }
  thread_.join();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  // Tokens generated over the last few seconds, to now (0 once the server has been idle that long).
  const auto now = Clock::now();
  if (!rate_samples_.empty()) {
    const auto& [t0, n0] = rate_samples_.front();
    const double span = seconds_between(t0, now);
    if (span > 0.1) s.tokens_per_second = static_cast<double>(generated_total_ - n0) / span;
  }
  return s;
}

bool Scheduler::any_running() const {
  return std::any_of(slots_.begin(), slots_.end(), [](const auto& s) { return s != nullptr; });
}

// Waits for something to do; false when the thread should end. Moves new submissions to the waiting queue
// and fails them while draining.
bool Scheduler::wait_for_work() {
  std::deque<std::unique_ptr<Sequence>> refused;
  const bool running = any_running();
  {
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait(lock, [&] {
      return stopping_ || draining_ || !inbox_.empty() || !jobs_.empty() || running || !waiting_.empty();
    });
    for (auto& s : inbox_) (draining_ ? refused : waiting_).push_back(std::move(s));
    inbox_.clear();
    stats_.waiting = static_cast<int64_t>(waiting_.size());  // drain() must see them before the next step
    if (draining_) {
      for (auto& s : waiting_) refused.push_back(std::move(s));
      waiting_.clear();
    }
  }
  for (auto& s : refused) finish(*s, "error", Error(ErrorKind::Busy, "the server is shutting down"));
  if (!draining_ || running) return true;
  // Draining with nothing to serve: trainers may still need the thread (to flush) until stop().
  publish_stats();
  std::unique_lock<std::mutex> lock(mu_);
  wake_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
  if (!jobs_.empty()) return true;
  exited_ = true;
  return false;
}

void Scheduler::loop() {
  while (wait_for_work()) {
    const auto t0 = Clock::now();
    // A failure (a device copy while admitting, a forward) ends the running requests with its error; nothing
    // may leave the engine thread, which would end the process.
    bool running = false;
    try {
      admit();
      running = any_running();
      if (running) step();
    } catch (const Error& e) {
      fail_running(e);
    } catch (const std::exception& e) {
      fail_running(Error(ErrorKind::Internal, message_of(e)));
    }
    if (running) {
      const double dt = seconds_between(t0, Clock::now());
      serve_seconds_ += dt;
      metrics_->step_seconds->add(dt);
      publish_stats();  // before a training job, which may take a while
    }
    run_jobs(running);
    // Shares decay so that the balance follows the last few seconds, not the whole uptime.
    serve_seconds_ *= 0.98;
    train_seconds_ *= 0.98;
    publish_stats();
  }
}

// Stats and gauges from the engine thread's state; drain() waits on them.
void Scheduler::publish_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  generated_total_ = generated_;
  if (rate_samples_.empty() || seconds_between(rate_samples_.back().first, now) > 0.25)
    rate_samples_.emplace_back(now, generated_);
  while (rate_samples_.size() > 1 && seconds_between(rate_samples_.front().first, now) > 5) rate_samples_.pop_front();
  stats_.running = stats_.kv_tokens_used = 0;
  for (const auto& s : slots_)
    if (s) {
      ++stats_.running;
      stats_.kv_tokens_used += s->computed;
    }
  stats_.kv_slots_used = stats_.running;
  stats_.waiting = static_cast<int64_t>(waiting_.size());
  stats_.prefix_blocks_used = prefix_->used_blocks();
  stats_.steps = steps_;
  metrics_->running->set(static_cast<double>(stats_.running));
  metrics_->waiting->set(static_cast<double>(stats_.waiting));
  metrics_->kv_slots->set(static_cast<double>(stats_.kv_slots_used));
  metrics_->kv_usage->set(static_cast<double>(stats_.kv_tokens_used) / static_cast<double>(stats_.kv_tokens));
  wake_.notify_all();
}

// One trainer job between steps while requests run, and only within the training share; any number when
// nothing is being served.
void Scheduler::run_jobs(bool serving) {
  while (true) {
    Job* job = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (jobs_.empty()) return;
      if (serving && train_seconds_ > options_.training_share * (serve_seconds_ + train_seconds_)) return;
      job = jobs_.front();
      jobs_.pop_front();
    }
    const auto t0 = Clock::now();
    try {
      (*job->work)();
    } catch (...) {
      job->error = std::current_exception();
    }
    const double dt = seconds_between(t0, Clock::now());
    train_seconds_ += dt;
    metrics_->train_jobs->add(1);
    metrics_->train_seconds->add(dt);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job->done = true;
      ++stats_.training_jobs;
      wake_.notify_all();
    }
    if (serving) return;
  }
}

// Cancelled waiting requests end; then free slots take waiting requests in arrival order, skipping one
// whose adapter would exceed the distinct adapters a step may hold (a bounded number of times).
void Scheduler::admit() {
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->handle->cancelled()) {
      finish(**it, "cancelled");
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& s : slots_)
    if (s && s->handle->cancelled()) finish(*s, "cancelled");
  std::vector<const LoraWeights*> adapters;
  for (const auto& s : slots_)
    if (s && s->req.adapter && std::find(adapters.begin(), adapters.end(), s->req.adapter.get()) == adapters.end())
      adapters.push_back(s->req.adapter.get());
  auto fits = [&](const Sequence& s) {
    const LoraWeights* a = s.req.adapter.get();
    return !a || std::find(adapters.begin(), adapters.end(), a) != adapters.end() ||
           static_cast<int64_t>(adapters.size()) < options_.max_adapters;
  };
  for (int64_t slot = 0; slot < static_cast<int64_t>(slots_.size()) && !waiting_.empty(); ++slot) {
    if (slots_[slot]) continue;
    // Behind a request passed too often, only base-model requests may go first: they keep no adapter busy.
    auto it = waiting_.begin();
    bool blocked = false;
    while (it != waiting_.end()) {
      if (!resolve_scope(**it)) {  // it ended with its error
        it = waiting_.erase(it);
        continue;
      }
      if (fits(**it) && (!blocked || !(*it)->req.adapter)) break;
      blocked = blocked || (!fits(**it) && (*it)->skips >= kMaxSkips);
      ++it;
    }
    if (it == waiting_.end()) break;
    for (auto passed = waiting_.begin(); passed != it; ++passed) ++(*passed)->skips;
    if ((*it)->req.adapter && std::find(adapters.begin(), adapters.end(), (*it)->req.adapter.get()) == adapters.end())
      adapters.push_back((*it)->req.adapter.get());
    std::unique_ptr<Sequence> seq = std::move(*it);
    waiting_.erase(it);
    start(std::move(seq), slot);
  }
}

// A request whose adapter has a relevance scope keeps the adapter only when its prompt is inside; outside, the
// base model answers it and the result says so. Checked once, before the request takes a slot. False when the
// check failed: the request has then ended with the error.
bool Scheduler::resolve_scope(Sequence& s) {
  if (s.scope_checked) return true;
  s.scope_checked = true;
  const LoraWeights* a = s.req.adapter.get();
  if (!a || !a->scope || s.req.adapter_scale == 0) return true;
  ScopeMatch match;
  try {
    c10::InferenceMode guard;
    match = scope_match(*a->scope, scope_keys(*engine_.model, s.req.prompt, a->scope->layers));
  } catch (const std::exception& e) {
    finish(s, "error", Error(ErrorKind::Internal, "checking the adapter's scope failed: " + message_of(e)));
    return false;
  }
  s.result.scope_similarity = match.similarity;
  s.result.scope_radius = match.radius;
  const bool inside = match.inside();
  s.result.adapter_scope = inside ? "inside" : "outside";
  metrics_->scope->add(1, {{"decision", s.result.adapter_scope}});
  if (inside) {
    recall(s, *a->scope, match.example);
    return true;
  }
  s.result.adapter = a->name;
  s.result.adapter_version = a->version;
  s.req.adapter.reset();
  s.prefix_seed.clear();  // its KV is the base model's
  return true;
}

// The request's own turns follow the conversation taught with `example` in place of its opening (the system block
// they share), as the chat template renders a conversation that held both; its sampling history stays its own
// prompt, so that repetition penalties do not count the recalled answer. Not for a request that starts with a
// taught prompt (what the adapter learnt to answer, or a chat continued from it; recalled, the model sometimes
// varied the answer it had just read), nor when it would not fit the slot with the tokens the client asked for;
// a defaulted max_tokens gives way instead, down to kRecallRoom.
void Scheduler::recall(Sequence& s, const ScopeIndex& scope, int64_t example) const {
  constexpr int64_t kRecallRoom = 64;
  const ScopeMemory& m = scope.memory[static_cast<size_t>(example)];
  std::vector<int32_t>& prompt = s.req.prompt;
  if (!options_.recall_taught || m.tokens.empty() || prompt.size() <= m.opening ||
      common_prefix(m.tokens, prompt) < m.opening || starts_with_taught(scope, prompt))
    return;
  const size_t served = m.tokens.size() + prompt.size() - m.opening;
  const int64_t room = options_.max_seq_tokens - static_cast<int64_t>(served);
  if (s.req.sampling.max_tokens > room && (!s.req.max_tokens_defaulted || room < kRecallRoom)) return;
  s.req.sampling.max_tokens = static_cast<int32_t>(std::min<int64_t>(s.req.sampling.max_tokens, room));
  std::vector<int32_t> recalled = m.tokens;
  recalled.insert(recalled.end(), prompt.begin() + m.opening, prompt.end());
  s.result.recalled_tokens = static_cast<int64_t>(m.tokens.size() - m.opening);
  s.result.prompt_tokens = static_cast<int64_t>(served);
  prompt = std::move(recalled);
}

// Puts an admitted request in its slot and copies the cached prefix of its prompt (same adapter values and
// scale) instead of computing it.
void Scheduler::start(std::unique_ptr<Sequence> seq, int64_t slot) {
  seq->slot = slot;
  seq->order = admitted_++;
  seq->admitted = Clock::now();
  metrics_->queue->observe(seconds_between(seq->submitted, seq->admitted));
  metrics_->prompt_tokens->add(static_cast<double>(seq->req.prompt.size()));
  Sequence& s = *(slots_[slot] = std::move(seq));  // in its slot first: a failed copy below finishes it
  s.computed = prefix_->load(s.prefix_seed, s.req.prompt, *cache_, slot);
  s.result.cached_tokens = s.computed;
  metrics_->prefix_queried->add(static_cast<double>(s.req.prompt.size()));
  metrics_->prefix_hit->add(static_cast<double>(s.computed));
}

// One forward: a token for every decoding request first (running streams never wait for a prompt), then
// prefill chunks of the requests admitted earliest, within the token budget; then sampling.
void Scheduler::step() {
  SlotStep step;
  std::vector<Sequence*> rows;      // per step row
  std::vector<Sequence*> sampled;   // per logits row
  int64_t budget = options_.max_step_tokens;
  auto add_row = [&](Sequence& s, const int32_t* tokens, int64_t n, bool wants_logits) {
    if (wants_logits) {
      step.logits_rows.push_back(static_cast<int64_t>(rows.size()));
      sampled.push_back(&s);
    }
    rows.push_back(&s);
    step.row_slot.push_back(s.slot);
    step.row_start.push_back(s.computed);
    step.row_len.push_back(n);
    step.tokens.insert(step.tokens.end(), tokens, tokens + n);
    budget -= n;
  };
  for (auto& s : slots_)
    if (s && s->prompt_done && budget > 0) add_row(*s, &s->pending, 1, true);
  std::vector<Sequence*> prefilling;
  for (auto& s : slots_)
    if (s && !s->prompt_done) prefilling.push_back(s.get());
  std::sort(prefilling.begin(), prefilling.end(), [](Sequence* a, Sequence* b) { return a->order < b->order; });
  for (Sequence* s : prefilling) {
    const int64_t left = static_cast<int64_t>(s->req.prompt.size()) - s->computed;
    const int64_t n = std::min(left, budget);
    if (n <= 0) break;
    add_row(*s, s->req.prompt.data() + s->computed, n, n == left);
  }
  if (rows.empty()) return;

  std::vector<RowLogits> logits;
  {
    c10::InferenceMode guard;
    const LoraBatch* lora = step_adapters(rows, step);
    const auto t0 = Clock::now();
    const at::Tensor device_logits = step_logits(graphs_, *engine_.model, *cache_, step, lora, *metrics_->graph_steps,
                                                 *metrics_->graph_captures);
    std::vector<int64_t> needed;
    for (const Sequence* s : sampled) needed.push_back(candidates_needed(s->req.sampling));
    logits = fetch_row_logits(device_logits, needed);
    metrics_->forward_seconds->add(seconds_between(t0, Clock::now()));
  }
  metrics_->steps->add(1);
  ++steps_;
  metrics_->step_tokens->add(static_cast<double>(step.tokens.size()));
  for (size_t r = 0; r < rows.size(); ++r) {
    Sequence& s = *rows[r];
    s.computed += step.row_len[r];
    if (!s.prompt_done && s.computed == static_cast<int64_t>(s.req.prompt.size())) {
      s.prompt_done = true;
      prefix_->store(s.prefix_seed, s.req.prompt, s.computed, *cache_, s.slot);
    }
  }
  for (size_t i = 0; i < sampled.size(); ++i) emit(*sampled[i], logits[i]);
}

// The LoRA stack for a step's rows with per-token scales, or null when no row has an adapter. The stack is
// rebuilt only when the set of adapters changes.
const LoraBatch* Scheduler::step_adapters(const std::vector<Sequence*>& rows, const SlotStep& step) {
  std::vector<const LoraWeights*> used;
  for (const Sequence* s : rows)
    if (s->req.adapter && s->req.adapter_scale != 0 &&
        std::find(used.begin(), used.end(), s->req.adapter.get()) == used.end())
      used.push_back(s->req.adapter.get());
  if (used.empty()) return nullptr;
  std::sort(used.begin(), used.end(), [](const LoraWeights* a, const LoraWeights* b) { return a->key < b->key; });
  // Compared by key, not address: a freed adapter's address may come back holding other values.
  std::vector<std::string> keys;
  for (const LoraWeights* w : used) keys.push_back(w->key);
  if (!lora_stack_ || keys != stacked_) {
    lora_stack_ = std::make_unique<LoraBatch>(stack_adapters(used, *engine_.model));
    stacked_ = std::move(keys);
  }
  std::vector<int64_t> slot_of;
  std::vector<double> scale_of;
  for (size_t r = 0; r < rows.size(); ++r) {
    const Sequence& s = *rows[r];
    auto it = std::find(used.begin(), used.end(), s.req.adapter.get());
    const int64_t slot = s.req.adapter && s.req.adapter_scale != 0 ? it - used.begin() : -1;
    slot_of.insert(slot_of.end(), static_cast<size_t>(step.row_len[r]), slot);
    scale_of.insert(scale_of.end(), static_cast<size_t>(step.row_len[r]), s.req.adapter_scale);
  }
  set_lora_scales(*lora_stack_, used, slot_of, scale_of, /*per_token=*/true, *engine_.model);
  return lora_stack_.get();
}

// Samples the sequence's next token from its logits and streams it, or ends the sequence.
void Scheduler::emit(Sequence& s, const RowLogits& logits) {
  const SamplingParams& p = s.req.sampling;
  const size_t generated = s.result.ids.size();
  if (!logits.finite) return finish(s, "error", non_finite_logits_error(s.req, generated));
  const int32_t id = sample_row(logits, p, s.history, s.rng, s.history.size() - generated);
  const bool eos = !p.ignore_eos && std::find(engine_.eos_ids.begin(), engine_.eos_ids.end(), id) != engine_.eos_ids.end();
  if (eos || std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), id) != p.stop_token_ids.end())
    return finish(s, "stop");
  const auto now = Clock::now();
  if (generated == 0) {
    s.result.first_token_seconds = seconds_between(s.submitted, now);
    metrics_->ttft->observe(s.result.first_token_seconds);
  } else {
    metrics_->itl->observe(seconds_between(s.last_token, now));
  }
  s.last_token = now;
  metrics_->generated_tokens->add(1);
  ++generated_;
  bool hit_stop = false;
  TokenEvent ev{id, s.out->push(id, &hit_stop), p.logprobs ? row_logprob(logits, id) : 0.0f, {}};
  if (p.top_logprobs > 0) ev.top_logprobs = row_top_logprobs(logits, p.top_logprobs);
  s.result.ids.push_back(id);
  s.result.logprobs.push_back(ev.logprob);
  s.history.push_back(id);
  if (s.cb.on_token) {
    try {
      s.cb.on_token(ev);
    } catch (const std::exception& e) {  // ends this request only
      return finish(s, "error", Error(ErrorKind::Internal, std::string("streaming the token failed: ") + e.what()));
    }
  }
  if (hit_stop || s.handle->cancelled()) return finish(s, hit_stop ? "stop" : "cancelled");
  if (static_cast<int32_t>(s.result.ids.size()) >= p.max_tokens || s.computed + 1 >= options_.max_seq_tokens)
    return finish(s, "length");
  s.pending = id;
}

// Ends a sequence: its callbacks hear the result, its slot is freed.
void Scheduler::finish(Sequence& s, const std::string& reason, std::optional<Error> error) {
  GenerationResult& r = s.result;
  r.finish_reason = reason;
  r.error = std::move(error);
  r.tail = reason == "error" ? "" : s.out->finish();
  r.text = s.out->text();
  if (s.req.adapter) {
    r.adapter = s.req.adapter->name;
    r.adapter_version = s.req.adapter->version;
  }
  const auto now = Clock::now();
  r.total_seconds = seconds_between(s.submitted, now);
  r.queue_seconds = s.slot >= 0 ? seconds_between(s.submitted, s.admitted) : r.total_seconds;
  metrics_->requests->add(1, {{"finish_reason", reason}});
  metrics_->e2e->observe(r.total_seconds);
  if (s.cb.on_finish) {
    try {
      s.cb.on_finish(r);
    } catch (...) {  // the listener's own failure: it has the result or is gone; the slot must still be freed
    }
  }
  if (s.slot >= 0) slots_[s.slot].reset();  // destroys s
}

void Scheduler::fail_running(const Error& error) {
  for (auto& s : slots_)
    if (s) finish(*s, "error", error);
}

}  // namespace hs
