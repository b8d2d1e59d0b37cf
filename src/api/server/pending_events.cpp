#include "api/server/pending_events.h"

#include <algorithm>
#include <chrono>

#include "serving/service.h"

namespace hs::api {

PendingEvents::PendingEvents(Service& service, std::string domain, bool applied,
                             std::function<void(const DomainEvent&)> heard)
    : service_(service), domain_(std::move(domain)), applied_(applied), heard_(std::move(heard)) {
  const uint64_t id = service_.subscribe(domain_, [this](const DomainEvent& e) {
    count(e);
    if (heard_) heard_(e);
  });
  std::lock_guard<std::mutex> lock(mu_);
  listener_ = id;
}

PendingEvents::~PendingEvents() { stop(); }

void PendingEvents::stop() {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::swap(id, listener_);
  }
  if (id) service_.unsubscribe(id);
}

void PendingEvents::expect(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!seen_.count(id)) pending_.insert(id);
}

void PendingEvents::submitted(DomainTrainer& trainer, const std::string& id, SubmitResult result) {
  if (result == SubmitResult::Queued || trainer.waiting(id, applied_)) expect(id);
}

void PendingEvents::count(const DomainEvent& e) {
  if (e.kind == DomainEvent::Kind::Durable && applied_) return;
  if (e.kind != DomainEvent::Kind::Durable && !applied_ && e.kind != DomainEvent::Kind::Failed) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (e.kind == DomainEvent::Kind::Failed) failure_ = e.failure;
  for (const std::string& id : e.ids) {
    seen_.insert(id);
    if (!pending_.erase(id)) continue;
    seq_ = std::max(seq_, e.seq);
    if (e.kind == DomainEvent::Kind::Applied) version_ = std::max(version_, e.report->version);
    if (e.kind == DomainEvent::Kind::Quarantined) quarantined_[id] = e.quarantine->reason;
  }
  done_.notify_all();
}

bool PendingEvents::settled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.empty() || failure_;
}

bool PendingEvents::wait(const std::function<bool()>& cancelled) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!pending_.empty() && !failure_) {
    if (cancelled()) return false;
    done_.wait_for(lock, std::chrono::milliseconds(50));  // wakes to notice a cancelled call
  }
  if (failure_ && !pending_.empty()) throw *failure_;
  return true;
}

void PendingEvents::throw_failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_ && !pending_.empty()) throw *failure_;
}

uint64_t PendingEvents::last_seq() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seq_;
}

uint64_t PendingEvents::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

std::map<std::string, std::string> PendingEvents::quarantined() const {
  std::lock_guard<std::mutex> lock(mu_);
  return quarantined_;
}

}  // namespace hs::api
