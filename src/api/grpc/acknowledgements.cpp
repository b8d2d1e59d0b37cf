#include "api/grpc/acknowledgements.h"

#include <chrono>

#include "serving/service.h"

namespace hs::api {

Acknowledgements::Acknowledgements(Service& service, std::string domain, bool applied,
                                   std::function<void(const DomainEvent&)> also)
    : service_(service), domain_(std::move(domain)), applied_(applied), also_(std::move(also)) {
  listener_ = service_.subscribe(domain_, [this](const DomainEvent& e) { heard(e); });
}

Acknowledgements::~Acknowledgements() { service_.unsubscribe(listener_); }

void Acknowledgements::expect(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!heard_.count(id)) pending_.insert(id);
}

void Acknowledgements::heard(const DomainEvent& e) {
  if (also_) also_(e);
  if (e.kind == DomainEvent::Kind::Durable && applied_) return;
  if (e.kind != DomainEvent::Kind::Durable && !applied_ && e.kind != DomainEvent::Kind::Failed) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (e.kind == DomainEvent::Kind::Failed) failure_ = e.failure;
  for (const std::string& id : e.ids) {
    heard_.insert(id);
    if (!pending_.erase(id)) continue;
    seq_ = std::max(seq_, e.seq);
    if (e.kind == DomainEvent::Kind::Applied) version_ = std::max(version_, e.report->version);
    if (e.kind == DomainEvent::Kind::Quarantined) quarantined_[id] = e.quarantine->reason;
  }
  done_.notify_all();
}

bool Acknowledgements::wait(grpc::ServerContext& call) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!pending_.empty() && !failure_) {
    if (call.IsCancelled()) return false;
    done_.wait_for(lock, std::chrono::milliseconds(50));  // wakes to notice a cancelled call
  }
  if (failure_ && !pending_.empty()) throw *failure_;
  return true;
}

uint64_t Acknowledgements::last_seq() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seq_;
}

uint64_t Acknowledgements::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

std::map<std::string, std::string> Acknowledgements::quarantined() const {
  std::lock_guard<std::mutex> lock(mu_);
  return quarantined_;
}

}  // namespace hs::api
