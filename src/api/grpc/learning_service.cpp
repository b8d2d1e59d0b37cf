// hyprstream.v1.Learning: examples (Train), a two-way stream of events and notifications (StreamEvents) and
// remote workers' sparse gradients (UpdateWeights), into the domains' trainers as the HTTP API's events.
// Gradients go to the trainer as arrays, never through JSON (a 1,000-entry update cost ~0.5 ms as JSON).
#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <thread>

#include "api/grpc/acknowledgements.h"
#include "api/grpc/grpc_status.h"
#include "api/grpc/mailbox.h"
#include "api/grpc/services.h"
#include "api/server/api_context.h"
#include "common/metrics.h"
#include "common/utf8.h"
#include "hyprstream/v1/learning.grpc.pb.h"
#include "serving/service.h"

namespace hs::api {

namespace {

namespace pb = hyprstream::v1;
using json = nlohmann::json;

// An example as the learning event `hyprstream train` reads; the trainer checks that exactly one form is given.
std::string example_json(const pb::Example& ex, const std::string& id) {
  json j = {{"id", ex.id().empty() ? id : ex.id()}};
  if (!ex.prompt().empty() || !ex.completion().empty()) {
    j["prompt"] = ex.prompt();
    j["completion"] = ex.completion();
  }
  if (ex.messages_size() > 0) {
    j["messages"] = json::array();
    for (const auto& m : ex.messages()) j["messages"].push_back({{"role", m.role()}, {"content", m.content()}});
  }
  if (!ex.text().empty()) j["text"] = ex.text();
  return j.dump();
}

// A gradient update's parts as views of its arrays (valid while `u` lives); the trainer checks the rest.
std::vector<GradientPart> gradient_parts(const pb::GradientUpdate& u) {
  std::vector<GradientPart> parts;
  for (const pb::ModuleGradient& m : u.modules()) {
    if (m.rows_size() != m.values_size() || m.cols_size() != m.values_size())
      throw Error(ErrorKind::InvalidArgument, "update '" + u.id() + "', layer " + std::to_string(m.layer()) + " " +
                                                  m.module() + "." + m.matrix() +
                                                  ": 'rows', 'cols' and 'values' must have the same length");
    parts.push_back({m.layer(), m.module(), m.matrix(), m.rows().data(), m.cols().data(), m.values().data(),
                     static_cast<size_t>(m.values_size())});
  }
  return parts;
}

SubmitResult submit_gradient(DomainTrainer& trainer, const pb::GradientUpdate& u) {
  return trainer.submit_gradient(u.id(), u.base_version(), gradient_parts(u));
}

pb::EventStatus submit_status(SubmitResult r) {
  return r == SubmitResult::Duplicate ? pb::EVENT_STATUS_DUPLICATE : pb::EVENT_STATUS_ACCEPTED;
}

// Gradients are computed on an adapter's version: a domain without one is unknown, not created.
void require_adapter(Service& service, const std::string& domain) {
  if (domain.empty()) throw Error(ErrorKind::InvalidArgument, "'domain' is required");
  service.registry().manifest(domain);  // NotFound names it
}

// Submits, waiting while the domain's queue is full (a stream's flow control), until the call ends.
SubmitResult submit_waiting(Service& service, DomainTrainer& trainer, const pb::GradientUpdate& u,
                            grpc::ServerContext& call) {
  for (;;) {
    try {
      return submit_gradient(trainer, u);
    } catch (const Error& e) {
      // A trainer stopped by a rollback or a delete never takes this: the client sends again (ids) and a new
      // call gets the domain's next trainer.
      if (e.kind() != ErrorKind::Busy || service.draining() || call.IsCancelled() || trainer.stopping()) throw;
    }
    trainer.wait_for_room(std::chrono::milliseconds(50));
  }
}

class LearningService final : public pb::Learning::Service {
 public:
  explicit LearningService(ApiContext& ctx) : ctx_(ctx) {}

  grpc::Status Train(grpc::ServerContext* call, const pb::TrainRequest* in, pb::TrainResponse* out) override {
    return guarded(ctx_, *call, [&] {
      if (in->domain().empty()) throw Error(ErrorKind::InvalidArgument, "'domain' is required");
      if (in->examples_size() == 0) throw Error(ErrorKind::InvalidArgument, "'examples' must not be empty");
      const bool applied = in->wait() != pb::WAIT_DURABLE;
      Acknowledgements acks(ctx_.service, in->domain(), applied);
      auto trainer = ctx_.service.trainer(in->domain());
      const std::string prefix = "grpc-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
      size_t rejected = 0;
      for (int i = 0; i < in->examples_size(); ++i) {
        pb::EventResult* r = out->add_results();
        const std::string text = example_json(in->examples(i), prefix + "-" + std::to_string(i));
        r->set_id(event_id(text).value_or(""));
        try {
          const SubmitResult submitted = trainer->submit(text);
          r->set_status(submit_status(submitted));
          acks.submitted(*trainer, r->id(), submitted);
        } catch (const Error& e) {
          if (e.kind() == ErrorKind::Busy) throw;  // the whole request is retried
          r->set_status(pb::EVENT_STATUS_REJECTED);
          r->set_error(utf8_escape_invalid(e.what()));
          ++rejected;
        }
      }
      if (rejected == static_cast<size_t>(in->examples_size()))
        throw Error(ErrorKind::InvalidArgument, out->results(0).error());
      if (!acks.wait(*call)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting");
      out->set_domain(in->domain());
      if (applied) out->set_version(acks.version() ? acks.version() : ctx_.service.registry().manifest(in->domain()).current);
      for (const auto& [id, why] : acks.quarantined()) (*out->mutable_quarantined())[id] = why;
      return grpc::Status::OK;
    });
  }

  grpc::Status UpdateWeights(grpc::ServerContext* call, grpc::ServerReader<pb::GradientUpdate>* reader,
                             pb::UpdateWeightsSummary* out) override {
    return guarded(ctx_, *call, [&] {
      std::string domain;
      std::unique_ptr<Acknowledgements> acks;  // from the first update, which names the domain
      std::shared_ptr<DomainTrainer> trainer;
      pb::GradientUpdate u;
      for (uint64_t n = 0; reader->Read(&u); ++n) {
        try {
          if (!acks) {
            require_adapter(ctx_.service, u.domain());
            domain = u.domain();
            acks = std::make_unique<Acknowledgements>(ctx_.service, domain, false);
            trainer = ctx_.service.trainer(domain);
          } else if (u.domain() != domain) {
            throw Error(ErrorKind::InvalidArgument, "a stream updates one domain: '" + u.domain() + "' after '" + domain + "'");
          }
          const SubmitResult r = submit_waiting(ctx_.service, *trainer, u, *call);
          if (r == SubmitResult::Duplicate) {
            out->set_duplicates(out->duplicates() + 1);
          } else {
            out->set_accepted(out->accepted() + 1);
          }
          acks->submitted(*trainer, u.id(), r);  // a duplicate not yet in the log is waited for too
        } catch (const Error& e) {
          throw Error(e.kind(), "update #" + std::to_string(n) + " ('" + u.id() + "') refused: " + e.what() +
                                    "; the updates before it were accepted");
        }
      }
      if (call->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled");
      if (!acks) throw Error(ErrorKind::InvalidArgument, "the stream carried no updates");
      if (!acks->wait(*call)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while waiting for the log");
      out->set_durable_seq(acks->last_seq());
      if (auto s = ctx_.service.trainer_stats(domain)) out->set_version(s->version);
      return grpc::Status::OK;
    });
  }

  grpc::Status StreamEvents(grpc::ServerContext* call,
                            grpc::ServerReaderWriter<pb::StreamEventsResponse, pb::StreamEventsRequest>* stream) override;

 private:
  ApiContext& ctx_;
};

// One StreamEvents call: a writer thread sends what the mailbox gathers; this thread reads requests. The
// mailbox is bounded: a client that reads its acknowledgements and notifications too slowly is ended with
// RESOURCE_EXHAUSTED, and never holds up the trainers.
class EventSession {
 public:
  EventSession(ApiContext& ctx, grpc::ServerContext& call,
               grpc::ServerReaderWriter<pb::StreamEventsResponse, pb::StreamEventsRequest>& stream)
      : ctx_(ctx), call_(call), box_(std::make_shared<Mailbox<pb::StreamEventsResponse>>(call, kSubscriptionBytes)) {
    writer_ = std::thread([this, &stream] {
      try {
        for (;;) {
          std::deque<pb::StreamEventsResponse> out = box_->take(call_);
          if (out.empty()) return;  // closed, or the call ended
          for (const auto& m : out)
            if (!stream.Write(m)) return;
        }
      } catch (const Error&) {  // overflowed: the mailbox ended the call with its status
      }
    });
  }

  ~EventSession() {
    domains_.clear();  // unsubscribes: nothing more is put in
    if (everything_) ctx_.service.unsubscribe(everything_);
    box_->close();
    writer_.join();
  }

  void handle(const pb::StreamEventsRequest& req) {
    if (req.has_subscribe()) {
      const std::string& d = req.subscribe().domain();
      if (d.empty()) return reply_error("", "", "'subscribe' needs a domain ('*': all)");
      d == "*" ? subscribe_all() : static_cast<void>(follow(d));
      pb::StreamEventsResponse r;
      r.set_subscribed(d);
      return box_->put(std::move(r));
    }
    if (req.has_event()) return event(req.event());
    reply_error("", "", "a request is a 'subscribe' or an 'event'");
  }

  // After the client's last request: until every accepted event is applied (or quarantined).
  bool wait() {
    for (auto& [domain, acks] : domains_)
      if (!acks->wait(call_)) return false;
    return true;
  }

 private:
  void event(const pb::Event& ev) {
    std::string id;
    try {
      if (ev.domain().empty()) throw Error(ErrorKind::InvalidArgument, "an event needs a 'domain'");
      if (ev.kind_case() == pb::Event::KIND_NOT_SET)
        throw Error(ErrorKind::InvalidArgument, "an event needs an 'example', a 'gradient' or 'json'");
      if (ev.has_gradient()) {
        require_adapter(ctx_.service, ev.domain());
        if (!ev.gradient().domain().empty() && ev.gradient().domain() != ev.domain())
          throw Error(ErrorKind::InvalidArgument, "the gradient is for domain '" + ev.gradient().domain() +
                                                      "', the event for '" + ev.domain() + "'");
      }
      std::string text;
      if (ev.has_example()) text = example_json(ev.example(), "grpc-" + std::to_string(start_) + "-" + std::to_string(++made_));
      if (ev.kind_case() == pb::Event::kJson) text = ev.json();
      id = ev.has_gradient() ? ev.gradient().id() : event_id(text).value_or("");
      Acknowledgements& acks = follow(ev.domain());
      const auto trainer = ctx_.service.trainer(ev.domain());
      const SubmitResult r = ev.has_gradient() ? submit_gradient(*trainer, ev.gradient()) : trainer->submit(text);
      acks.submitted(*trainer, id, r);
      ack(id, ev.domain(), submit_status(r), "");
    } catch (const Error& e) {
      const bool busy = e.kind() == ErrorKind::Busy;
      if (!busy && ctx_.rejected) ctx_.rejected->add(1, {{"reason", "invalid_event"}});
      ack(id, ev.domain(), busy ? pb::EVENT_STATUS_BUSY : pb::EVENT_STATUS_REJECTED, e.what());
    }
  }

  void ack(const std::string& id, const std::string& domain, pb::EventStatus status, const std::string& error) {
    pb::StreamEventsResponse r;
    r.mutable_ack()->set_id(id);
    r.mutable_ack()->set_domain(domain);
    r.mutable_ack()->set_status(status);
    r.mutable_ack()->set_error(utf8_escape_invalid(error));
    box_->put(std::move(r));
  }

  void reply_error(const std::string& id, const std::string& domain, const std::string& error) {
    ack(id, domain, pb::EVENT_STATUS_REJECTED, error);
  }

  // The domain's notifications go to the client (unless a '*' subscription sends them already).
  Acknowledgements& follow(const std::string& domain) {
    auto it = domains_.find(domain);
    if (it != domains_.end()) return *it->second;
    auto forward = [this](const DomainEvent& e) {
      if (!all_) box_->put(notification(e));
    };
    return *domains_.emplace(domain, std::make_unique<Acknowledgements>(ctx_.service, domain, true, forward)).first->second;
  }

  // Subscribed before per-domain forwarding stops, so nothing falls between (a notification may come twice).
  void subscribe_all() {
    if (everything_) return;
    everything_ = ctx_.service.subscribe("", [box = box_](const DomainEvent& e) { box->put(notification(e)); });
    all_ = true;
  }

  static pb::StreamEventsResponse notification(const DomainEvent& e);

  ApiContext& ctx_;
  grpc::ServerContext& call_;
  std::shared_ptr<Mailbox<pb::StreamEventsResponse>> box_;
  std::atomic<bool> all_{false};
  uint64_t everything_ = 0;
  // Ids for examples sent without one.
  const int64_t start_ = std::chrono::system_clock::now().time_since_epoch().count();
  uint64_t made_ = 0;
  std::map<std::string, std::unique_ptr<Acknowledgements>> domains_;
  std::thread writer_;
};

pb::StreamEventsResponse EventSession::notification(const DomainEvent& e) {
  pb::StreamEventsResponse r;
  auto ids = [&](auto* m) {
    m->set_domain(e.domain);
    m->set_seq(e.seq);
    for (const std::string& id : e.ids) m->add_ids(id);
  };
  switch (e.kind) {
    case DomainEvent::Kind::Durable: ids(r.mutable_durable()); break;
    case DomainEvent::Kind::Applied: {
      pb::Applied* a = r.mutable_applied();
      ids(a);
      const BatchReport& b = *e.report;
      a->set_version(b.version);
      if (b.examples > 0) a->set_loss(b.loss);
      a->set_examples(b.examples);
      a->set_gradients(b.gradients);
      a->set_tokens(b.tokens);
      a->set_update_ms(b.update_ms);
      if (b.drift >= 0) a->set_drift(b.drift);
      break;
    }
    case DomainEvent::Kind::Quarantined:
      ids(r.mutable_quarantined());
      r.mutable_quarantined()->set_reason(e.quarantine->reason);
      r.mutable_quarantined()->set_refused(e.quarantine->rejection.has_value());
      break;
    case DomainEvent::Kind::Failed:
      r.mutable_failed()->set_domain(e.domain);
      r.mutable_failed()->set_error(utf8_escape_invalid(e.failure->what()));
      break;
  }
  return r;
}

grpc::Status LearningService::StreamEvents(
    grpc::ServerContext* call, grpc::ServerReaderWriter<pb::StreamEventsResponse, pb::StreamEventsRequest>* stream) {
  return guarded(ctx_, *call, [&] {
    EventSession session(ctx_, *call, *stream);
    pb::StreamEventsRequest req;
    while (stream->Read(&req)) session.handle(req);
    if (call->IsCancelled() || !session.wait()) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream was cancelled");
    return grpc::Status::OK;
  });
}

}  // namespace

std::unique_ptr<grpc::Service> make_learning_service(ApiContext& ctx) {
  return std::make_unique<LearningService>(ctx);
}

}  // namespace hs::api
