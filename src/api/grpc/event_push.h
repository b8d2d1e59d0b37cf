#pragma once
// `hyprstream events push`: learning events from a JSONL file sent to a running server over
// Learning.StreamEvents, events refused as busy sent again, until every accepted one is applied. gRPC stays
// behind this header (the CLI compiles with torch's headers, which bundle a protobuf of their own).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hs::api {

struct PushProgress {
  uint64_t total = 0, sent = 0, acknowledged = 0, durable = 0, applied = 0;
};

struct PushReport {
  uint64_t accepted = 0, duplicates = 0, rejected = 0, busy_retries = 0, applied = 0;
  uint64_t version = 0;  // the last version that applied one of the events
  std::vector<std::string> errors;  // "<id>: <why>" of each rejected event
};

// `server`: host:port, or grpc://host:port. `events`: one JSON event per entry, each with an "id". Throws
// Busy/Io/InvalidArgument... (hs::Error) when the call fails as a whole (no server, the stream broken).
PushReport push_events(const std::string& server, const std::string& domain, const std::vector<std::string>& events,
                       const std::function<void(const PushProgress&)>& on_progress);

}  // namespace hs::api
