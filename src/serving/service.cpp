#include "serving/service.h"

#include <exception>
#include <thread>

#include "adapters/lora_weights.h"
#include "common/metrics.h"
#include "tokenizer/tokenizer.h"

namespace hs {

const ChatTemplate& Service::chat_template() const {
  if (chat_template_error_) throw *chat_template_error_;
  return *chat_template_;
}

Service::Service(ServiceOptions options, MetricsRegistry* metrics) : options_(std::move(options)) {
  engine_ = load_engine(options_.engine);
  require_tokenizer(engine_);
  try {
    chat_template_ = chat_template_of(*engine_.tokenizer);
  } catch (const Error& e) {
    chat_template_error_ = e;
  }
  registry_ = std::make_unique<AdapterRegistry>(options_.adapters, engine_.model);
  scheduler_ = std::make_unique<Scheduler>(engine_, options_.scheduler, metrics);
  validate_trainer_options(options_.learning);
  options_.learning.compute = [this](const std::function<void()>& work) { scheduler_->run_compute(work); };
  if (metrics) {
    events_applied_ = &metrics->counter("hyprstream_trainer_events_applied_total", "Learning events applied, by domain");
    train_loss_ = &metrics->gauge("hyprstream_trainer_loss", "Mean target-token loss of the last batch, by domain");
    train_version_ = &metrics->gauge("hyprstream_trainer_version", "Adapter version last published, by domain");
    update_ms_ = &metrics->gauge("hyprstream_trainer_update_ms", "Time to apply the last batch, by domain");
    queue_depth_ = &metrics->gauge("hyprstream_trainer_queue_depth", "Events waiting to be applied, by domain");
    drift_ = &metrics->gauge("hyprstream_trainer_canary_drift",
                             "Canary drift (mean KL from the base model, nats) of the last version published or refused");
    refused_ = &metrics->counter("hyprstream_trainer_refused_versions_total",
                                 "New versions the publication guard refused, by domain");
    quarantined_ = &metrics->counter("hyprstream_trainer_quarantined_batches_total",
                                     "Batches set aside unapplied (failed or refused), by domain");
  }
}

Service::~Service() {
  try {
    shutdown();
  } catch (...) {  // a failed checkpoint, already reported by an explicit shutdown(); the log keeps the events
  }
}

std::shared_ptr<const LoraWeights> Service::adapter(const std::string& name, uint64_t version) {
  return registry_->weights(*registry_->acquire(name, version));
}

TrainerCallbacks Service::callbacks(const std::string& domain) {
  TrainerCallbacks cb;
  cb.on_durable = [this, domain](const std::vector<std::string>& ids, uint64_t seq) {
    notify(DomainEvent{DomainEvent::Kind::Durable, domain, seq, ids, std::nullopt, std::nullopt, std::nullopt});
  };
  cb.on_applied = [this, domain](const BatchReport& r) {
    if (events_applied_) {
      const Labels l = {{"domain", domain}};
      events_applied_->add(static_cast<double>(r.ids.size()), l);
      if (r.examples > 0) train_loss_->set(r.loss, l);
      train_version_->set(static_cast<double>(r.version), l);
      update_ms_->set(r.update_ms, l);
      if (r.drift >= 0) drift_->set(r.drift, l);
    }
    notify(DomainEvent{DomainEvent::Kind::Applied, domain, r.seq, r.ids, r, std::nullopt, std::nullopt});
  };
  cb.on_quarantined = [this, domain](const QuarantinedBatch& q) {
    if (quarantined_) {
      const Labels l = {{"domain", domain}};
      quarantined_->add(1, l);
      if (q.rejection) {
        refused_->add(1, l);
        drift_->set(q.rejection->drift, l);
      }
    }
    notify(DomainEvent{DomainEvent::Kind::Quarantined, domain, q.seq, q.ids, std::nullopt, q, std::nullopt});
  };
  cb.on_failed = [this, domain](const Error& e) {
    notify(DomainEvent{DomainEvent::Kind::Failed, domain, 0, {}, std::nullopt, std::nullopt, e});
  };
  return cb;
}

std::shared_ptr<DomainTrainer> Service::trainer(const std::string& domain) {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (shut_down_) throw Error(ErrorKind::Busy, "the server is shutting down");
    auto it = trainers_.find(domain);
    if (it != trainers_.end()) return it->second;
    if (!starting_.count(domain)) break;
    started_.wait(lock);  // another request is starting this domain's trainer
  }
  validate_adapter_name(domain);
  starting_.insert(domain);
  lock.unlock();
  // Started outside the lock: recovery replays logged batches (engine-thread compute, seconds) and reports
  // them through notify(), which takes mu_.
  std::shared_ptr<DomainTrainer> t;
  try {
    t = std::make_shared<DomainTrainer>(*registry_, engine_.model, engine_.tokenizer, domain, options_.learning,
                                        callbacks(domain));
  } catch (...) {
    lock.lock();
    starting_.erase(domain);
    started_.notify_all();
    throw;
  }
  lock.lock();
  starting_.erase(domain);
  started_.notify_all();
  if (shut_down_) {  // shutdown() has already stopped the trainers it found: this one stops here
    lock.unlock();
    t->stop();
    throw Error(ErrorKind::Busy, "the server is shutting down");
  }
  return trainers_[domain] = std::move(t);
}

std::optional<TrainerStats> Service::trainer_stats(const std::string& domain) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = trainers_.find(domain);
  if (it == trainers_.end()) return std::nullopt;
  return it->second->stats();
}

std::map<std::string, TrainerStats> Service::all_trainer_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, TrainerStats> out;
  for (const auto& [domain, t] : trainers_) out[domain] = t->stats();
  return out;
}

void Service::refresh_trainer_metrics() {
  if (!queue_depth_) return;
  for (const auto& [domain, s] : all_trainer_stats())
    queue_depth_->set(static_cast<double>(s.queue_depth), {{"domain", domain}});
}

void Service::stop_trainer(const std::string& domain) {
  std::shared_ptr<DomainTrainer> t;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // A trainer being started would otherwise appear after rm or rollback, on a deleted or old version.
    started_.wait(lock, [&] { return !starting_.count(domain); });
    auto it = trainers_.find(domain);
    if (it == trainers_.end()) return;
    t = std::move(it->second);
    trainers_.erase(it);
  }
  t->stop();  // outside the lock: it finishes its queue (on the engine thread) and checkpoints
}

uint64_t Service::subscribe(const std::string& domain, std::function<void(const DomainEvent&)> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  listeners_[next_listener_] = {domain, std::move(listener)};
  return next_listener_++;
}

void Service::unsubscribe(uint64_t id) {
  // Waits for a notification in progress: once this returns, the listener is never called again, so its
  // owner may go away.
  std::lock_guard<std::mutex> notifying(notify_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.erase(id);
}

void Service::notify(const DomainEvent& event) {
  std::lock_guard<std::mutex> notifying(notify_mu_);
  std::vector<std::function<void(const DomainEvent&)>> targets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, l] : listeners_)
      if (l.first.empty() || l.first == event.domain) targets.push_back(l.second);
  }
  for (const auto& f : targets) f(event);
}

void Service::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  draining_ = true;
  // The trainers apply their queues and checkpoint while running requests finish (the engine thread
  // interleaves both), so a long stream does not push the checkpoint past a supervisor's grace period.
  std::exception_ptr failed;  // a checkpoint that could not be written, reported once all has stopped
  std::thread stopper([this, &failed] {
    std::map<std::string, std::shared_ptr<DomainTrainer>> trainers;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // One being started sees shut_down_ and stops itself (trainer()); waiting for it means that
      // shutdown() returns only once every trainer has stopped.
      started_.wait(lock, [&] { return starting_.empty(); });
      trainers.swap(trainers_);
    }
    for (auto& [domain, t] : trainers) {
      try {
        t->stop();
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
  });
  scheduler_->drain();
  stopper.join();
  scheduler_->stop();
  if (failed) std::rethrow_exception(failed);
}

}  // namespace hs
