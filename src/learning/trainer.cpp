#include "learning/trainer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>

#include "adapters/registry.h"
#include "adapters/tile_layout.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/percentile.h"
#include "learning/lora_gradients.h"
#include "model/model.h"
#include "storage/adapter_image.h"
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

void clip_to(std::vector<float>& g, double bound) {
  const double n = norm_of(g);
  if (bound > 0 && n > bound) scale_by(g, bound / n);
}

}  // namespace

void validate_trainer_options(const TrainerOptions& o) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); };
  if (o.batch_events == 0) bad("a micro-batch needs at least one event");
  if (o.batch_ms < 0) bad("the micro-batch window must not be negative");
  if (o.queue_capacity == 0) bad("the event queue needs room for at least one event");
  if (o.steps_per_batch < 1 || o.steps_per_batch > 10000) bad("steps per batch must lie in [1, 10000]");
  if (!(o.max_grad_norm >= 0) || !std::isfinite(o.max_grad_norm)) bad("the gradient clip norm must be zero or positive");
  if (o.checkpoint_every == 0) bad("checkpoints must be written every 1 or more batches");
  if (!(o.privacy.noise_multiplier >= 0) || !std::isfinite(o.privacy.noise_multiplier))
    bad("the privacy noise multiplier must be zero or positive");
  if (o.privacy.noise_multiplier > 0 && !(o.privacy.clip > 0)) bad("differential privacy needs a positive clip norm");
  if (!(o.privacy.delta > 0 && o.privacy.delta < 1)) bad("the privacy delta must lie in (0, 1)");
  validate_adamw_options(o.adamw);
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
    chat_ = std::make_unique<ChatTemplate>(detect_chat_template(tokenizer_->chat_template));
  } catch (const Error&) {
    chat_.reset();  // "messages" events are then refused with a message naming the cause
  }
  try {
    registry_.manifest(domain_);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::NotFound) throw;
    registry_.create(domain_, options_.create);
  }
  dir_ = registry_.root() + "/" + domain_ + "/training";
  ensure_directory(dir_);
  lock_fd_ = ::open((dir_ + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw Error(ErrorKind::Io, "cannot open '" + dir_ + "/.lock': " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw Error(ErrorKind::Busy, "domain '" + domain_ + "' is being trained by another process; retry when it stops");
  }
  try {
    recover();
  } catch (...) {
    ::close(lock_fd_);
    lock_fd_ = -1;
    throw;
  }
  worker_ = std::thread([this] { run(); });
}

DomainTrainer::~DomainTrainer() {
  try {
    stop();
  } catch (...) {
    // A destructor must not throw; the log still holds every acknowledged event for the next start.
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

EventContext DomainTrainer::context(bool live) const {
  EventContext ctx;
  ctx.domain = domain_;
  ctx.tokenizer = tokenizer_.get();
  ctx.chat = chat_.get();
  ctx.context_length = model_->config.context_length;
  if (live) {
    const std::string name = domain_;
    AdapterRegistry* reg = &registry_;
    ctx.version_exists = [reg, name](uint64_t v) { return reg->manifest(name).find(v) != nullptr; };
  }
  return ctx;
}

void DomainTrainer::recover() {
  const AdapterManifest manifest = registry_.manifest(domain_);
  scale_ = manifest.config.scale();
  if (auto c = read_checkpoint(dir_)) {
    layout_ = std::make_shared<TileLayout>(c->adapter->layout());
    values_ = c->adapter->values();
    adam_ = std::move(c->adam);
    totals_ = c->counters;
    ids_ = std::move(c->ids);
    seq_ = checkpoint_seq_ = c->seq;
  } else {
    // First training of this adapter: its current version is the starting point, fixed by a checkpoint so
    // that a replay after a crash starts from the same values.
    auto snap = registry_.acquire(domain_);
    layout_ = std::make_shared<TileLayout>(snap->image->layout());
    values_ = snap->image->values();
    checkpoint();
  }
  log_ = std::make_unique<WriteAheadLog>(dir_ + "/log", options_.fsync);
  EventContext ctx = context(false);
  ctx.layout = layout_.get();
  for (const WalRecord& rec : log_->recovered(seq_)) {
    std::vector<LearningEvent> batch;
    std::istringstream lines(rec.payload);
    for (std::string line; std::getline(lines, line);) {
      try {
        batch.push_back(parse_learning_event(line, ctx));
      } catch (const Error& e) {
        throw Error(ErrorKind::CorruptFile, "training log of domain '" + domain_ + "', record " +
                                                std::to_string(rec.seq) + ": an acknowledged event no longer parses (" +
                                                e.what() + "); was the base model or tokenizer changed?");
      }
      ids_.insert(batch.back().id);
    }
    apply(batch, rec.seq, false);
    seq_ = rec.seq;
    replayed_ += 1;
  }
  if (replayed_ > 0) {
    version_ = registry_.publish(domain_, values_, 0).version;
    checkpoint();
  } else {
    version_ = registry_.manifest(domain_).current;
  }
}

void DomainTrainer::checkpoint() {
  TrainerCheckpoint c;
  c.seq = seq_;
  c.adapter = AdapterImage::build(*layout_, values_.data());
  c.adam = adam_;
  c.counters = totals_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Only events already applied belong to the checkpoint; queued ones are not in the log yet.
    c.ids = ids_;
    for (const Pending& p : queue_) c.ids.erase(p.event.id);
  }
  write_checkpoint(dir_, c);
  if (log_) log_->compact(seq_);
  checkpoint_seq_ = seq_;
}

SubmitResult DomainTrainer::submit(std::string_view text) {
  EventContext ctx = context(true);
  std::shared_ptr<const TileLayout> layout;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) throw Error(ErrorKind::Busy, "the trainer of domain '" + domain_ + "' is shutting down");
    layout = layout_;
  }
  ctx.layout = layout.get();
  LearningEvent ev;
  try {
    ev = parse_learning_event(text, ctx);
  } catch (const Error&) {
    std::lock_guard<std::mutex> lock(mu_);
    rejected_ += 1;
    throw;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!failure_.empty()) throw Error(ErrorKind::Io, "training of domain '" + domain_ + "' stopped: " + failure_);
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
  queue_.push_back({std::move(ev), Clock::now()});
  accepted_ += 1;
  wake_.notify_all();
  return SubmitResult::Queued;
}

void DomainTrainer::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  flushing_ += 1;
  wake_.notify_all();
  done_.wait(lock, [&] { return (queue_.empty() && in_flight_ == 0) || !failure_.empty(); });
  flushing_ -= 1;
  if (!failure_.empty()) throw Error(ErrorKind::Io, "training of domain '" + domain_ + "' stopped: " + failure_);
}

void DomainTrainer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    wake_.notify_all();
  }
  if (worker_.joinable()) worker_.join();
  // A second stop finds the checkpoint at the log's end and writes nothing.
  if (failure_.empty() && seq_ != checkpoint_seq_) checkpoint();
}

void DomainTrainer::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) break;
    const auto deadline = queue_.front().arrived + std::chrono::milliseconds(options_.batch_ms);
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
      batch.push_back(std::move(queue_.front().event));
      queue_.pop_front();
    }
    in_flight_ = n;
    lock.unlock();
    std::string error;
    try {
      process(std::move(batch));
    } catch (const std::exception& e) {
      error = e.what();
    }
    lock.lock();
    in_flight_ = 0;
    if (!error.empty()) {
      // The log is the source of truth: whatever it holds is applied on the next start. Stop here rather
      // than skip a batch and diverge from it.
      failure_ = error;
      for (const Pending& p : queue_) ids_.erase(p.event.id);
      queue_.clear();
      done_.notify_all();
      break;
    }
    done_.notify_all();
  }
}

void DomainTrainer::process(std::vector<LearningEvent> batch) {
  std::string payload;
  std::vector<std::string> ids;
  for (const LearningEvent& ev : batch) {
    payload += ev.json;
    payload += '\n';
    ids.push_back(ev.id);
  }
  const uint64_t seq = seq_ + 1;
  log_->append(seq, payload);
  seq_ = seq;
  if (callbacks_.on_durable) callbacks_.on_durable(ids, seq);
  BatchReport report = apply(batch, seq, true);
  report.ids = std::move(ids);
  if (callbacks_.on_applied) callbacks_.on_applied(report);
  if (seq_ - checkpoint_seq_ >= options_.checkpoint_every) checkpoint();
}

std::vector<float> DomainTrainer::step_gradient(const std::vector<TrainingExample>& examples,
                                                const std::vector<const LearningEvent*>& submitted, uint64_t seq,
                                                int step, double& loss, double& norm) {
  const size_t n = values_.size();
  const double units = static_cast<double>(examples.size() + submitted.size());
  std::vector<float> total(n, 0.0f);
  auto add = [&](const std::vector<float>& g, double w) {
    for (size_t i = 0; i < n; ++i) total[i] += static_cast<float>(w * g[i]);
  };
  // A submission's indices are unique (events.h), so it is added, and its norm taken, entry by entry.
  auto add_sparse = [&](const LearningEvent& ev, double w) {
    for (const auto& [index, value] : ev.gradient) total[static_cast<size_t>(index)] += static_cast<float>(w * value);
  };
  loss = 0;
  if (options_.privacy.noise_multiplier > 0) {
    // DP-SGD: every example and submission is clipped on its own, the sum gets Gaussian noise scaled to the
    // clip bound, then the mean is taken. The noise is drawn from (seed, batch, step) so replays match.
    const double clip = options_.privacy.clip;
    for (const TrainingExample& ex : examples) {
      LoraGradients g = lora_gradients(*model_, *layout_, values_, scale_, {ex});
      loss += g.loss / static_cast<double>(examples.size());
      clip_to(g.values, clip);
      add(g.values, 1.0);
    }
    for (const LearningEvent* ev : submitted) {
      double sq = 0;
      for (const auto& entry : ev->gradient) sq += static_cast<double>(entry.second) * entry.second;
      const double norm = std::sqrt(sq);
      add_sparse(*ev, norm > clip ? clip / norm : 1.0);
    }
    std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull ^ (seq << 16) ^ static_cast<uint64_t>(step));
    std::normal_distribution<double> normal(0.0, options_.privacy.noise_multiplier * clip);
    for (float& x : total) x = static_cast<float>(x + normal(rng));
    scale_by(total, 1.0 / units);
  } else {
    if (!examples.empty()) {
      LoraGradients g = lora_gradients(*model_, *layout_, values_, scale_, examples);
      loss = g.loss;
      add(g.values, static_cast<double>(examples.size()) / units);
    }
    for (const LearningEvent* ev : submitted) add_sparse(*ev, 1.0 / units);
  }
  norm = norm_of(total);
  clip_to(total, options_.max_grad_norm);
  return total;
}

BatchReport DomainTrainer::apply(const std::vector<LearningEvent>& batch, uint64_t seq, bool publish) {
  const auto start = Clock::now();
  BatchReport r;
  r.seq = seq;
  std::vector<TrainingExample> examples;
  std::vector<const LearningEvent*> submitted;
  for (const LearningEvent& ev : batch) {
    if (ev.kind == EventKind::Example) {
      examples.push_back(ev.example);
      for (size_t t = 1; t < ev.example.is_target.size(); ++t) r.tokens += ev.example.is_target[t];
    } else {
      submitted.push_back(&ev);
    }
  }
  r.examples = examples.size();
  r.gradients = submitted.size();
  for (int step = 0; step < options_.steps_per_batch; ++step) {
    double loss = 0, norm = 0;
    std::vector<float> grad = step_gradient(examples, submitted, seq, step, loss, norm);
    if (step == 0) r.loss = loss;
    r.grad_norm = norm;
    adamw_step(options_.adamw, adam_, values_, grad);
  }
  totals_.batches += 1;
  totals_.events_applied += batch.size();
  totals_.examples += examples.size();
  totals_.gradients += submitted.size();
  totals_.steps += static_cast<uint64_t>(options_.steps_per_batch);
  totals_.tokens_trained += static_cast<uint64_t>(r.tokens) * static_cast<uint64_t>(options_.steps_per_batch);
  if (publish) r.version = registry_.publish(domain_, values_, batch.size()).version;
  r.update_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mu_);
  if (publish) version_ = r.version;
  if (!examples.empty()) {
    losses_.push_back(r.loss);
    if (losses_.size() > 256) losses_.pop_front();
  }
  update_ms_.push_back(r.update_ms);
  if (update_ms_.size() > 1024) update_ms_.pop_front();
  return r;
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
  s.queue_depth = queue_.size() + in_flight_;
  s.recent_losses.assign(losses_.begin(), losses_.end());
  s.last_loss = losses_.empty() ? 0 : losses_.back();
  const std::vector<double> ms(update_ms_.begin(), update_ms_.end());
  s.update_ms_p50 = percentile(ms, 0.50);
  s.update_ms_p99 = percentile(ms, 0.99);
  s.log_bytes = log_ ? log_->bytes() : 0;
  if (options_.privacy.noise_multiplier > 0) {
    s.delta = options_.privacy.delta;
    s.epsilon = gaussian_epsilon(options_.privacy.noise_multiplier, static_cast<uint64_t>(options_.steps_per_batch),
                                 s.delta);
  }
  return s;
}

}  // namespace hs
