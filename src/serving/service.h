#pragma once
// Everything a server runs, wired once: the model and tokenizer, the adapter registry, the engine thread
// (Scheduler) and a trainer per domain that learns, whose compute runs on the engine thread between serving
// steps. Transports (HTTP, WebSocket) call this and never touch the model. Torch-free header.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "adapters/registry.h"
#include "learning/trainer.h"
#include "serving/engine.h"
#include "serving/scheduler.h"
#include "tokenizer/chat_template.h"

namespace hs {

class MetricsRegistry;
class MetricFamily;

struct ServiceOptions {
  EngineOptions engine;
  RegistryOptions adapters;
  SchedulerOptions scheduler;
  TrainerOptions learning;  // every domain's trainer starts with these
};

// What subscribers hear about a domain's learning.
struct DomainEvent {
  enum class Kind { Durable, Applied, Quarantined, Failed } kind = Kind::Applied;
  std::string domain;
  uint64_t seq = 0;
  std::vector<std::string> ids;
  std::optional<BatchReport> report;         // Applied
  std::optional<QuarantinedBatch> quarantine;  // Quarantined
  std::optional<Error> failure;              // Failed: the trainer stopped; what waits will not be applied
};

class Service {
 public:
  Service(ServiceOptions options, MetricsRegistry* metrics);
  ~Service();  // shutdown()
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  const Engine& engine() const { return engine_; }
  AdapterRegistry& registry() { return *registry_; }
  Scheduler& scheduler() { return *scheduler_; }
  const ServiceOptions& options() const { return options_; }
  // The model's chat template, compiled once; a template that does not compile throws its error to every
  // caller (raw prompts are still served).
  const ChatTemplate& chat_template() const;

  // The adapter version a request runs with: `version`, or the current one (0). Throws NotFound.
  std::shared_ptr<const LoraWeights> adapter(const std::string& name, uint64_t version = 0);

  // The domain's trainer, started on first use (which creates the adapter when the domain has none). Shared:
  // stop_trainer() may stop it while a caller still submits, which then gets Busy instead of a freed object.
  std::shared_ptr<DomainTrainer> trainer(const std::string& domain);
  std::optional<TrainerStats> trainer_stats(const std::string& domain);
  std::map<std::string, TrainerStats> all_trainer_stats();
  // Per-domain gauges (queue depth) as of now, before /metrics is read.
  void refresh_trainer_metrics();
  // Stops the domain's trainer if this server runs one (it checkpoints), so that rm and rollback may proceed.
  void stop_trainer(const std::string& domain);

  // Listeners of learning events, of one domain or of all (""); they run on trainer threads, must not block,
  // and must not subscribe or unsubscribe themselves.
  uint64_t subscribe(const std::string& domain, std::function<void(const DomainEvent&)> listener);
  void unsubscribe(uint64_t id);

  // Stops admission, finishes running requests, stops the trainers (each checkpoints) and the engine thread.
  void shutdown();
  bool draining() const { return draining_; }

 private:
  void notify(const DomainEvent& event);
  TrainerCallbacks callbacks(const std::string& domain);

  ServiceOptions options_;
  Engine engine_;
  std::unique_ptr<AdapterRegistry> registry_;
  std::unique_ptr<Scheduler> scheduler_;
  std::optional<ChatTemplate> chat_template_;
  std::optional<Error> chat_template_error_;
  MetricFamily *events_applied_ = nullptr, *train_loss_ = nullptr, *train_version_ = nullptr,
               *update_ms_ = nullptr, *queue_depth_ = nullptr, *drift_ = nullptr, *refused_ = nullptr,
               *quarantined_ = nullptr;

  std::mutex mu_;  // guards trainers_, starting_ and listeners_
  std::condition_variable started_;  // a trainer in starting_ was started (or failed to start)
  std::set<std::string> starting_;   // domains whose trainer is being started (outside mu_)
  std::mutex notify_mu_;  // held while listeners run, and by unsubscribe()
  std::map<std::string, std::shared_ptr<DomainTrainer>> trainers_;
  std::map<uint64_t, std::pair<std::string, std::function<void(const DomainEvent&)>>> listeners_;
  uint64_t next_listener_ = 1;
  bool shut_down_ = false;
  std::atomic<bool> draining_{false};
};

}  // namespace hs
