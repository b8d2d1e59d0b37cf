// /v1/adapters: listing, creating, inspecting, deleting and rolling back adapters, and learning over the API:
// examples (train), raw learning events (events) and corrections of a conversation (feedback).
#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <chrono>
#include <mutex>

#include "api/server/pending_events.h"
#include "api/server/routes.h"
#include "api/server/views.h"
#include "common/strict_json.h"
#include "serving/service.h"

namespace hs::api {

namespace {

json with_trainer(ApiContext& ctx, json j, const std::string& name) {
  if (auto s = ctx.service.trainer_stats(name)) j["trainer"] = trainer_stats_json(*s);
  return j;
}

void list(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  json out = json::array();
  for (const AdapterListing& a : ctx.service.registry().list())
    out.push_back(a.manifest ? with_trainer(ctx, adapter_json(*a.manifest), a.name)
                             : json{{"name", a.name}, {"error", a.error}});
  reply_json(*r, 200, {{"adapters", out}});
}

void create(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  check_fields(body, {"name", "rank", "alpha", "sparsity", "targets", "seed"});
  const auto name = get_string(body, "name");
  if (!name) throw Error(ErrorKind::InvalidArgument, "'name' is required");
  AdapterConfig c;
  if (auto v = get_integer(body, "rank", 8, 4096)) c.rank = *v;
  if (auto v = get_number(body, "alpha")) c.alpha = *v;
  if (auto v = get_number(body, "sparsity")) c.sparsity = *v;
  if (auto v = get_integer(body, "seed", 0, INT64_MAX)) c.seed = static_cast<uint64_t>(*v);
  if (body.contains("targets")) {
    if (!body["targets"].is_array()) throw Error(ErrorKind::InvalidArgument, "'targets' must be an array of module names");
    c.targets.clear();
    for (const json& t : body["targets"]) {
      if (!t.is_string()) throw Error(ErrorKind::InvalidArgument, "'targets' must hold module names");
      c.targets.push_back(parse_lora_module(t.get<std::string>()));
    }
  }
  run_blocking(ctx, r, [&ctx, r, name = *name, c] {
    reply_json(*r, 201, adapter_json(ctx.service.registry().create(name, c)));
  });
}

void show(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const std::string& name = req.params.at("domain");
  reply_json(*r, 200, with_trainer(ctx, adapter_json(ctx.service.registry().manifest(name)), name));
}

void remove(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  run_blocking(ctx, r, [&ctx, r, name = req.params.at("domain")] {
    ctx.service.stop_trainer(name);  // its queue is applied and checkpointed first: nothing acknowledged is lost
    ctx.service.registry().remove(name);
    reply_json(*r, 200, {{"deleted", name}});
  });
}

void rollback(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  check_fields(body, {"version"});
  const auto version = get_integer(body, "version", 1, INT64_MAX);
  if (!version) throw Error(ErrorKind::InvalidArgument, "'version' is required");
  run_blocking(ctx, r, [&ctx, r, name = req.params.at("domain"), v = static_cast<uint64_t>(*version)] {
    ctx.service.stop_trainer(name);  // the next event starts a trainer from the rolled-back version
    reply_json(*r, 200, adapter_json(ctx.service.registry().rollback(name, v)));
  });
}

// Learning events of one request, submitted together, with what became of each. The answer goes out after
// the trainer's notification that the last accepted event is durable (in the write-ahead log: acknowledged)
// or, with wait "applied", applied (or quarantined). No thread waits for it, so many clients waiting for their
// versions never hold up the blocking pool (which creates adapters and takes the WebSocket's events). While
// it waits, the timeout's handler on the blocking pool owns the submission; the service's listener only
// refers to it.
class Submission : public std::enable_shared_from_this<Submission> {
 public:
  static constexpr std::chrono::seconds kApplyTimeout{600};

  Submission(ApiContext& ctx, std::shared_ptr<http::Responder> r, std::string domain)
      : ctx_(ctx), r_(std::move(r)), domain_(std::move(domain)) {}

  // On the blocking pool: queues each event (listed as accepted, duplicate or rejected, with the error), then
  // answers once every accepted event is durable, or applied (with the version that holds them).
  void start(const std::vector<std::string>& events, bool wait_applied) {
    wait_applied_ = wait_applied;
    // `this`, not a strong reference: the listener must never be the one to destroy the submission (its
    // destructor unsubscribes, which waits for the notification it would be running in). pending_ goes first
    // in the destructor, so no notification outlives the rest.
    pending_ = std::make_unique<PendingEvents>(ctx_.service, domain_, wait_applied,
                                               [this](const DomainEvent&) { heard(); });
    json results;
    try {
      results = submit(events);
    } catch (...) {
      pending_->stop();
      throw;  // Busy: the whole request is retried
    }
    out_ = {{"domain", domain_}, {"results", results}};
    // All refused: an error answer naming the first problem; otherwise each event's fate is in the results.
    if (std::all_of(results.begin(), results.end(), [](const json& x) { return x["status"] == "rejected"; })) {
      pending_->stop();
      return reply_error(ctx_, *r_, 400, results[0]["error"].get<std::string>(), "invalid_event");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The timeout's handler owns the timer and this submission: they go with the pool's pending work.
      auto timer = std::make_shared<boost::asio::steady_timer>(ctx_.blocking->get_executor(), kApplyTimeout);
      timer->async_wait([self = shared_from_this(), timer](const boost::system::error_code& ec) {
        if (!ec) self->finish(true);
      });
      timer_ = timer;
      submitted_ = true;
    }
    if (pending_->settled()) finish(false);
  }

 private:
  json submit(const std::vector<std::string>& events) {
    const std::shared_ptr<DomainTrainer> trainer = ctx_.service.trainer(domain_);
    json results = json::array();
    for (const std::string& text : events) {
      const std::string id = event_id(text).value_or("");
      try {
        const SubmitResult result = trainer->submit(text);
        results.push_back({{"id", id}, {"status", result == SubmitResult::Duplicate ? "duplicate" : "accepted"}});
        pending_->submitted(*trainer, id, result);
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::Busy) throw;
        results.push_back({{"id", id}, {"status", "rejected"}, {"error", e.what()}});
      }
    }
    return results;
  }

  // On a trainer thread, inside the service's notification: must not block, nor unsubscribe.
  void heard() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!submitted_) return;
    }
    if (pending_->settled()) finish(false);
  }

  // Once: stops listening and answers, on the blocking pool (reading the manifest is file I/O, and a listener
  // may not unsubscribe itself).
  void finish(bool timed_out) {
    auto self = weak_from_this().lock();
    if (!self) return;  // being destroyed (its owner, the timeout's handler, went with a stopped pool)
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
      if (auto timer = timer_.lock()) timer->cancel();
    }
    boost::asio::post(*ctx_.blocking, [self, timed_out] {
      self->pending_->stop();
      try {
        self->answer(timed_out);
      } catch (const Error& e) {
        reply_error(self->ctx_, *self->r_, e);
      } catch (const std::exception& e) {
        reply_error(self->ctx_, *self->r_, Error(ErrorKind::Internal, e.what()));
      }
    });
  }

  void answer(bool timed_out) {
    if (timed_out)
      throw Error(ErrorKind::Busy, std::string("the events were accepted but not yet ") +
                                       (wait_applied_ ? "applied" : "logged") + " after " +
                                       std::to_string(kApplyTimeout.count()) + " s");
    pending_->throw_failure();
    if (!wait_applied_) return reply_json(*r_, 200, out_);
    const uint64_t version = pending_->version();
    out_["version"] = version > 0 ? json(version) : json(ctx_.service.registry().manifest(domain_).current);
    out_["applied"] = true;
    out_["quarantined"] = pending_->quarantined();
    reply_json(*r_, 200, out_);
  }

  ApiContext& ctx_;
  std::shared_ptr<http::Responder> r_;
  std::string domain_;
  std::mutex mu_;
  std::weak_ptr<boost::asio::steady_timer> timer_;
  json out_;
  bool wait_applied_ = false, submitted_ = false, finished_ = false;
  std::unique_ptr<PendingEvents> pending_;  // from start(): listens before the first event is submitted; last
};

// Runs a submission on the blocking pool (starting a trainer is file I/O): answers once the events are
// acknowledged, in the log (wait "durable"), or once they are applied ("applied", with the version).
void learn(ApiContext& ctx, std::shared_ptr<http::Responder> r, std::string domain, std::vector<std::string> events,
           bool wait_applied) {
  auto submission = std::make_shared<Submission>(ctx, r, std::move(domain));
  run_blocking(ctx, r, [submission, events = std::move(events), wait_applied] {
    submission->start(events, wait_applied);
  });
}

bool wait_mode(const json& body) {
  const std::string wait = get_string(body, "wait").value_or("applied");
  if (wait != "applied" && wait != "durable") throw Error(ErrorKind::InvalidArgument, "'wait' must be 'applied' or 'durable'");
  return wait == "applied";
}

// Examples (prompt/completion, messages or text), each given an id unless it has one.
void train(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  check_fields(body, {"examples", "wait"});
  if (!body.contains("examples") || !body["examples"].is_array() || body["examples"].empty())
    throw Error(ErrorKind::InvalidArgument, "'examples' must be a non-empty array of examples");
  std::vector<std::string> events;
  for (size_t i = 0; i < body["examples"].size(); ++i) {
    json ex = body["examples"][i];
    if (!ex.is_object()) throw Error(ErrorKind::InvalidArgument, "every example must be an object");
    if (!ex.contains("id")) ex["id"] = req.id + "-" + std::to_string(i);
    events.push_back(ex.dump());
  }
  learn(ctx, r, req.params.at("domain"), std::move(events), wait_mode(body));
}

// Learning events exactly as `hyprstream train` reads them: a JSON array, or one event per line.
void events(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  std::vector<std::string> lines;
  const size_t first = req.body.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && req.body[first] == '[') {
    const json arr = parse_strict_json(req.body, "the request body");
    for (const json& e : arr) lines.push_back(e.dump());
  } else {
    size_t at = 0;
    while (at < req.body.size()) {
      size_t nl = req.body.find('\n', at);
      if (nl == std::string::npos) nl = req.body.size();
      const std::string line = req.body.substr(at, nl - at);
      if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
      at = nl + 1;
    }
  }
  if (lines.empty()) throw Error(ErrorKind::InvalidArgument, "no events: send a JSON array or one event per line");
  const std::string wait = req.query.count("wait") ? req.query.at("wait") : "durable";
  learn(ctx, r, req.params.at("domain"), std::move(lines), wait == "applied");
}

// A conversation and the answer it should have had: the API form of `chat --learn`'s /correct.
void feedback(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  check_fields(body, {"messages", "correction", "id", "wait"});
  const auto correction = get_string(body, "correction");
  if (!correction || correction->empty()) throw Error(ErrorKind::InvalidArgument, "'correction' must be the better answer");
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    throw Error(ErrorKind::InvalidArgument, "'messages' must be the conversation being corrected");
  json messages = body["messages"];
  if (messages.back().is_object() && messages.back().value("role", json()) == "assistant")
    messages.erase(messages.size() - 1);
  messages.push_back({{"role", "assistant"}, {"content", *correction}});
  const json event = {{"id", get_string(body, "id").value_or("feedback-" + req.id)}, {"messages", messages}};
  learn(ctx, r, req.params.at("domain"), {event.dump()}, wait_mode(body));
}

}  // namespace

void add_adapter_routes(ApiContext& ctx, http::Router& router) {
  add_route(ctx, router, "GET", "/v1/adapters", list, Runs::OnReaderPool);
  add_route(ctx, router, "POST", "/v1/adapters", create);
  add_route(ctx, router, "GET", "/v1/adapters/{domain}", show, Runs::OnReaderPool);
  add_route(ctx, router, "DELETE", "/v1/adapters/{domain}", remove);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/rollback", rollback);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/train", train);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/events", events);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/feedback", feedback);
}

}  // namespace hs::api
