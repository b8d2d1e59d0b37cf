#pragma once
// Which of one request's learning events are not yet durable (in the write-ahead log: acknowledged) or, when
// waiting for "applied", not yet applied (or quarantined), from the trainer's notifications of the domain.
// Transport-free: HTTP answers from the notification that settles it, gRPC waits on its handler's thread.
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "common/error.h"

namespace hs {
class DomainTrainer;
class Service;
struct DomainEvent;
enum class SubmitResult;
}  // namespace hs

namespace hs::api {

class PendingEvents {
 public:
  // Subscribes at once, before the first submission, so no notification is missed. `heard` (optional) hears
  // every notification of the domain after it was counted, on the trainer's thread, inside the service's
  // notification: it must not block, nor unsubscribe.
  PendingEvents(Service& service, std::string domain, bool applied,
                std::function<void(const DomainEvent&)> heard = {});
  ~PendingEvents();  // stop()
  PendingEvents(const PendingEvents&) = delete;
  PendingEvents& operator=(const PendingEvents&) = delete;

  // An event was accepted (or is a duplicate not yet settled): it is waited for.
  void expect(const std::string& id);
  // What trainer.submit() said of an event: a duplicate sent before and not yet durable (or applied) is
  // waited for as well.
  void submitted(DomainTrainer& trainer, const std::string& id, SubmitResult result);

  // Every expected event was heard of, or the trainer failed (what still waits never comes).
  bool settled() const;
  // Until settled; false when `cancelled` said so first (asked every 50 ms). Throws as throw_failure().
  bool wait(const std::function<bool()>& cancelled);
  // Throws the trainer's failure when it stopped with events still waiting.
  void throw_failure() const;
  // Stops listening; the destructor does too. Never from inside a notification (`heard`).
  void stop();

  uint64_t last_seq() const;  // the latest log record holding an expected event
  uint64_t version() const;   // the latest version that applied one
  std::map<std::string, std::string> quarantined() const;  // id -> reason

 private:
  void count(const DomainEvent& e);

  Service& service_;
  const std::string domain_;
  const bool applied_;
  const std::function<void(const DomainEvent&)> heard_;
  mutable std::mutex mu_;
  uint64_t listener_ = 0;
  std::condition_variable done_;
  std::set<std::string> pending_, seen_;  // expected and not yet settled; heard of (before expect(), maybe)
  std::map<std::string, std::string> quarantined_;
  std::optional<Error> failure_;
  uint64_t seq_ = 0, version_ = 0;
};

}  // namespace hs::api
