#pragma once
// Waits, on a gRPC handler's thread, until the events a call submitted to one domain are durable (in the
// write-ahead log: acknowledged) or applied (or quarantined), from the trainer's notifications. Subscribes
// before the first submission, so no notification is missed.
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "common/error.h"

namespace hs {
class Service;
struct DomainEvent;
}  // namespace hs

namespace hs::api {

class Acknowledgements {
 public:
  // `also` (optional) hears every notification of the domain too, on the trainer's thread.
  Acknowledgements(Service& service, std::string domain, bool applied,
                   std::function<void(const DomainEvent&)> also = {});
  ~Acknowledgements();
  Acknowledgements(const Acknowledgements&) = delete;
  Acknowledgements& operator=(const Acknowledgements&) = delete;

  // An event of this call was accepted (or is a duplicate not yet settled): wait() waits for it.
  void expect(const std::string& id);
  // Until every expected event was heard of; false when the call was cancelled first. Throws the trainer's
  // failure when it stopped with events still waiting.
  bool wait(grpc::ServerContext& call);

  uint64_t last_seq() const;  // the latest log record holding an expected event
  uint64_t version() const;   // the latest version that applied one
  std::map<std::string, std::string> quarantined() const;  // id -> reason

 private:
  void heard(const DomainEvent& e);

  Service& service_;
  std::string domain_;
  bool applied_;
  std::function<void(const DomainEvent&)> also_;
  uint64_t listener_ = 0;
  mutable std::mutex mu_;
  std::condition_variable done_;
  std::set<std::string> pending_, heard_;
  std::map<std::string, std::string> quarantined_;
  std::optional<Error> failure_;
  uint64_t seq_ = 0, version_ = 0;
};

}  // namespace hs::api
