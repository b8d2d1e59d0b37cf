#include "api/grpc/event_push.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "hyprstream/v1/learning.grpc.pb.h"
#include "learning/events.h"

namespace hs::api {

namespace {

namespace pb = hyprstream::v1;
using Stream = grpc::ClientReaderWriter<pb::StreamEventsRequest, pb::StreamEventsResponse>;

ErrorKind kind_of(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE: return ErrorKind::InvalidArgument;
    case grpc::StatusCode::NOT_FOUND: return ErrorKind::NotFound;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return ErrorKind::Busy;
    case grpc::StatusCode::UNIMPLEMENTED: return ErrorKind::Unsupported;
    default: return ErrorKind::Io;  // no server, a broken connection, a server that stopped
  }
}

// What the replies said so far; the reader thread writes, the sender waits on it.
struct Tally {
  std::mutex mu;
  std::condition_variable changed;
  PushProgress progress;
  PushReport report;
  std::vector<std::string> busy;  // ids to send again
  bool closed = false;             // the server ended the call
};

// Counts the ids of this push only: the domain's notifications also carry other clients' events.
uint64_t ours(const google::protobuf::RepeatedPtrField<std::string>& ids, const std::map<std::string, const std::string*>& by_id) {
  uint64_t n = 0;
  for (const std::string& id : ids) n += by_id.count(id);
  return n;
}

void read_replies(Stream& stream, Tally& t, const std::map<std::string, const std::string*>& by_id,
                  const std::function<void(const PushProgress&)>& on_progress) {
  pb::StreamEventsResponse r;
  while (stream.Read(&r)) {
    std::lock_guard<std::mutex> lock(t.mu);
    if (r.has_ack()) {
      t.progress.acknowledged += 1;
      const pb::Ack& a = r.ack();
      if (a.status() == pb::EVENT_STATUS_ACCEPTED) t.report.accepted += 1;
      if (a.status() == pb::EVENT_STATUS_DUPLICATE) t.report.duplicates += 1;
      if (a.status() == pb::EVENT_STATUS_BUSY) t.busy.push_back(a.id());
      if (a.status() == pb::EVENT_STATUS_REJECTED) {
        t.report.rejected += 1;
        t.report.errors.push_back(a.id() + ": " + a.error());
      }
    }
    if (r.has_durable()) t.progress.durable += ours(r.durable().ids(), by_id);
    if (r.has_applied() && ours(r.applied().ids(), by_id) > 0) {
      t.progress.applied += ours(r.applied().ids(), by_id);
      t.report.version = std::max(t.report.version, r.applied().version());
    }
    if (r.has_quarantined() && ours(r.quarantined().ids(), by_id) > 0) t.report.errors.push_back("batch " + std::to_string(r.quarantined().seq()) +
                                                       " set aside: " + r.quarantined().reason());
    if (on_progress) on_progress(t.progress);
    t.changed.notify_all();
  }
  std::lock_guard<std::mutex> lock(t.mu);
  t.closed = true;
  t.changed.notify_all();
}

void send(Stream& stream, const std::string& domain, const std::string& text) {
  pb::StreamEventsRequest req;
  req.mutable_event()->set_domain(domain);
  req.mutable_event()->set_json(text);
  if (!stream.Write(req)) throw Error(ErrorKind::Io, "the server closed the event stream");
}

std::string target_of(const std::string& server) {
  const std::string scheme = "grpc://";
  return server.rfind(scheme, 0) == 0 ? server.substr(scheme.size()) : server;
}

}  // namespace

PushReport push_events(const std::string& server, const std::string& domain, const std::vector<std::string>& events,
                       const std::function<void(const PushProgress&)>& on_progress) {
  std::map<std::string, const std::string*> by_id;
  for (const std::string& e : events) {
    const auto id = event_id(e);
    if (!id) throw Error(ErrorKind::InvalidArgument, "every event needs a string \"id\" (sent again when busy): " + e.substr(0, 80));
    by_id[*id] = &e;
  }
  auto channel = grpc::CreateChannel(target_of(server), grpc::InsecureChannelCredentials());
  auto stub = pb::Learning::NewStub(channel);
  grpc::ClientContext ctx;
  std::unique_ptr<Stream> stream = stub->StreamEvents(&ctx);
  Tally t;
  t.progress.total = events.size();
  std::thread reader([&] { read_replies(*stream, t, by_id, on_progress); });
  std::vector<const std::string*> round;
  for (const std::string& e : events) round.push_back(&e);
  try {
    // Each round sends its events and waits for their acknowledgements; the busy ones make the next round.
    for (int attempt = 0; !round.empty(); ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1000, 20 << std::min(attempt, 6))));
      uint64_t expected = 0;
      {
        std::lock_guard<std::mutex> lock(t.mu);
        expected = t.progress.acknowledged + round.size();
        t.progress.sent += round.size();
        t.report.busy_retries += attempt > 0 ? round.size() : 0;
      }
      for (const std::string* e : round) send(*stream, domain, *e);
      std::unique_lock<std::mutex> lock(t.mu);
      t.changed.wait(lock, [&] { return t.closed || t.progress.acknowledged >= expected; });
      if (t.progress.acknowledged < expected) throw Error(ErrorKind::Io, "the server ended the event stream early");
      round.clear();
      for (const std::string& id : t.busy) round.push_back(by_id.at(id));
      t.busy.clear();
    }
  } catch (...) {
    ctx.TryCancel();
    reader.join();
    const grpc::Status status = stream->Finish();
    if (!status.ok())
      throw Error(kind_of(status.error_code()), "the event stream to " + server + " failed: " + status.error_message());
    throw;
  }
  stream->WritesDone();  // the server answers until every accepted event is applied, then ends the call
  reader.join();
  const grpc::Status status = stream->Finish();
  if (!status.ok())
    throw Error(kind_of(status.error_code()), "the event stream to " + server + " failed: " + status.error_message());
  t.report.applied = t.progress.applied;
  return t.report;
}

}  // namespace hs::api
