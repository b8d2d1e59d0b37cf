// /v1/adapters: listing, creating, inspecting, deleting and rolling back adapters, and learning over the API:
// examples (train), raw learning events (events) and corrections of a conversation (feedback).
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <set>

#include "api/server/routes.h"
#include "common/strict_json.h"
#include "serving/service.h"

namespace hs::api {

namespace {

json manifest_json(const AdapterManifest& m) {
  const AdapterVersionInfo* v = m.find(m.current);
  std::vector<std::string> targets;
  for (LoraModule t : m.config.targets) targets.push_back(lora_module_name(t));
  json versions = json::array();
  for (const auto& x : m.versions)
    versions.push_back({{"version", x.version}, {"parent", x.parent}, {"created", x.created}, {"events", x.events},
                        {"bytes", x.bytes}});
  return {{"name", m.name},
          {"version", m.current},
          {"rank", m.config.rank},
          {"alpha", m.config.alpha},
          {"sparsity", m.config.sparsity},
          {"targets", targets},
          {"density", m.dense_values ? static_cast<double>(v->active_values) / static_cast<double>(m.dense_values) : 0},
          {"bytes", v->bytes},
          {"events", v->events},
          {"versions", versions}};
}

json with_trainer(ApiContext& ctx, json j, const std::string& name) {
  if (auto s = ctx.service.trainer_stats(name))
    j["trainer"] = {{"version", s->version},          {"queue_depth", s->queue_depth},
                    {"events_applied", s->totals.events_applied}, {"last_loss", s->last_loss},
                    {"update_ms_p50", s->update_ms_p50}, {"quarantined_batches", s->quarantined_batches}};
  return j;
}

void list(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  json out = json::array();
  for (const AdapterListing& a : ctx.service.registry().list())
    out.push_back(a.manifest ? with_trainer(ctx, manifest_json(*a.manifest), a.name)
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
    reply_json(*r, 201, manifest_json(ctx.service.registry().create(name, c)));
  });
}

void show(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const std::string& name = req.params.at("domain");
  reply_json(*r, 200, with_trainer(ctx, manifest_json(ctx.service.registry().manifest(name)), name));
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
    reply_json(*r, 200, manifest_json(ctx.service.registry().rollback(name, v)));
  });
}

// Learning events of one request, submitted together, with what became of each.
class Submission {
 public:
  Submission(ApiContext& ctx, std::string domain) : ctx_(ctx), domain_(std::move(domain)) {
    listener_ = ctx_.service.subscribe(domain_, [this](const DomainEvent& e) { heard(e); });
  }
  ~Submission() { ctx_.service.unsubscribe(listener_); }

  // Queues each event; the answer lists them as accepted, duplicate or rejected (with the error).
  json submit(const std::vector<std::string>& events) {
    DomainTrainer& trainer = ctx_.service.trainer(domain_);
    json results = json::array();
    for (const std::string& text : events) {
      const std::string id = event_id(text).value_or("");
      try {
        const bool dup = trainer.submit(text) == SubmitResult::Duplicate;
        results.push_back({{"id", id}, {"status", dup ? "duplicate" : "accepted"}});
        if (!dup) {
          std::lock_guard<std::mutex> lock(mu_);
          if (!applied_.count(id)) pending_.insert(id);
        }
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::Busy) throw;  // the whole request is retried
        results.push_back({{"id", id}, {"status", "rejected"}, {"error", e.what()}});
      }
    }
    return results;
  }

  // Waits until every accepted event was applied (or quarantined); returns the version that holds them.
  uint64_t wait_applied(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return pending_.empty(); }))
      throw Error(ErrorKind::Busy, "the events were accepted but not yet applied after " +
                                       std::to_string(timeout.count()) + " s; they will be");
    return version_;
  }
  json quarantined() {
    std::lock_guard<std::mutex> lock(mu_);
    return quarantined_;
  }

 private:
  void heard(const DomainEvent& e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (e.kind == DomainEvent::Kind::Durable) return;
    for (const std::string& id : e.ids) {
      applied_.insert(id);
      if (pending_.erase(id) && e.kind == DomainEvent::Kind::Quarantined)
        quarantined_[id] = e.quarantine->reason;
    }
    if (e.kind == DomainEvent::Kind::Applied) version_ = std::max(version_, e.report->version);
    cv_.notify_all();
  }

  ApiContext& ctx_;
  std::string domain_;
  uint64_t listener_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> pending_, applied_;
  json quarantined_ = json::object();
  uint64_t version_ = 0;
};

// Runs a submission on the blocking pool: answers once the events are acknowledged (wait "durable"), or
// once they are applied ("applied", with the version holding them).
void learn(ApiContext& ctx, std::shared_ptr<http::Responder> r, std::string domain, std::vector<std::string> events,
           bool wait_applied) {
  run_blocking(ctx, r, [&ctx, r, domain = std::move(domain), events = std::move(events), wait_applied] {
    Submission s(ctx, domain);
    json out = {{"domain", domain}, {"results", s.submit(events)}};
    const json& results = out["results"];
    const bool none =
        std::all_of(results.begin(), results.end(), [](const json& x) { return x["status"] == "rejected"; });
    if (wait_applied && !none) {
      const uint64_t v = s.wait_applied(std::chrono::seconds(600));
      out["version"] = v > 0 ? json(v) : json(ctx.service.registry().manifest(domain).current);
      out["applied"] = true;
      out["quarantined"] = s.quarantined();
    }
    // All refused: an error answer naming the first problem; otherwise each event's fate is in the results.
    if (none)
      return reply_error(ctx, *r, 400, results[0]["error"].get<std::string>(), "invalid_event");
    reply_json(*r, 200, out);
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
  if (messages.back().is_object() && messages.back().value("role", "") == "assistant") messages.erase(messages.size() - 1);
  messages.push_back({{"role", "assistant"}, {"content", *correction}});
  const json event = {{"id", get_string(body, "id").value_or("feedback-" + req.id)}, {"messages", messages}};
  learn(ctx, r, req.params.at("domain"), {event.dump()}, wait_mode(body));
}

}  // namespace

void add_adapter_routes(ApiContext& ctx, http::Router& router) {
  add_route(ctx, router, "GET", "/v1/adapters", list);
  add_route(ctx, router, "POST", "/v1/adapters", create);
  add_route(ctx, router, "GET", "/v1/adapters/{domain}", show);
  add_route(ctx, router, "DELETE", "/v1/adapters/{domain}", remove);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/rollback", rollback);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/train", train);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/events", events);
  add_route(ctx, router, "POST", "/v1/adapters/{domain}/feedback", feedback);
}

}  // namespace hs::api
