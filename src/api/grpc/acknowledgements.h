#pragma once
// Waits, on a gRPC handler's thread, until the events a call submitted to one domain are durable (in the
// write-ahead log: acknowledged) or applied (or quarantined): PendingEvents, waited for until the call ends.
#include <grpcpp/grpcpp.h>

#include "api/server/pending_events.h"

namespace hs::api {

class Acknowledgements : public PendingEvents {
 public:
  using PendingEvents::PendingEvents;

  // Until every expected event was heard of; false when the call was cancelled first. Throws the trainer's
  // failure when it stopped with events still waiting.
  bool wait(grpc::ServerContext& call) {
    return PendingEvents::wait([&call] { return call.IsCancelled(); });
  }
};

}  // namespace hs::api
