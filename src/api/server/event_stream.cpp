// WebSocket /v1/stream/events. A client sends JSON text frames:
//   {"type": "subscribe", "domain": "law"}        ("*" for every domain): its learning as it happens
//   {"type": "event", "domain": "law", "event": {...}}   a learning event, as `hyprstream train` reads them
// and receives {"type": "accepted" | "duplicate" | "rejected", "id", "error"?} for its events, and for the
// domains it subscribed to or sent events to: {"type": "durable", "domain", "seq", "ids"},
// {"type": "applied", "domain", "version", "loss", "ids", ...}, {"type": "quarantined", ...} and, for a version
// the publication guard refused, {"type": "refused", "reason", "guard": {...}, ...}.
// A frame that is not such JSON gets {"type": "error", "error": "..."}; the connection stays open.
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <map>
#include <mutex>
#include <set>
#include <spdlog/spdlog.h>

#include "api/server/routes.h"
#include "api/server/views.h"
#include "common/metrics.h"
#include "common/strict_json.h"
#include "common/utf8.h"
#include "serving/service.h"

namespace hs::api {

namespace {

json event_json(const DomainEvent& e) {
  json j = {{"domain", e.domain}, {"seq", e.seq}, {"ids", e.ids}};
  if (e.kind == DomainEvent::Kind::Durable) j["type"] = "durable";
  if (e.kind == DomainEvent::Kind::Quarantined) {
    j["type"] = e.quarantine->rejection ? "refused" : "quarantined";
    j["reason"] = e.quarantine->reason;
    if (e.quarantine->rejection) j["guard"] = quarantined_json(*e.quarantine)["guard"];
  }
  if (e.kind == DomainEvent::Kind::Failed) {
    j["type"] = "failed";
    j["error"] = utf8_escape_invalid(e.failure->what());
  }
  if (e.kind == DomainEvent::Kind::Applied) {
    const BatchReport& r = *e.report;
    j["type"] = "applied";
    j["version"] = r.version;
    j["loss"] = r.examples > 0 ? json(r.loss) : json(nullptr);
    j["examples"] = r.examples;
    j["gradients"] = r.gradients;
    j["tokens"] = r.tokens;
    j["update_ms"] = r.update_ms;
    j["steps"] = r.steps;
    if (r.drift >= 0) j["drift"] = r.drift;
  }
  return j;
}

// One connection's subscriptions; listeners end when the connection closes.
struct Connection {
  std::mutex mu;
  std::map<std::string, uint64_t> listeners;  // by domain ("" for all)
  bool closed = false;
};

class EventStream {
 public:
  explicit EventStream(ApiContext& ctx) : ctx_(ctx) {}

  void open(const std::shared_ptr<http::WebSocket>& ws) {
    std::lock_guard<std::mutex> lock(mu_);
    connections_[ws.get()] = std::make_shared<Connection>();
  }

  void close(const std::shared_ptr<http::WebSocket>& ws) {
    std::shared_ptr<Connection> c = take(ws.get());
    if (!c) return;
    std::lock_guard<std::mutex> lock(c->mu);
    c->closed = true;
    for (const auto& [domain, id] : c->listeners) ctx_.service.unsubscribe(id);
  }

  void message(const std::shared_ptr<http::WebSocket>& ws, const std::string& text, bool is_text) {
    json j;
    try {
      if (!is_text) throw Error(ErrorKind::InvalidArgument, "binary frames are not accepted; send JSON text");
      j = parse_strict_json(text, "the message");
      if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
        throw Error(ErrorKind::InvalidArgument, "a message is an object with a string 'type'");
    } catch (const Error& e) {
      if (ctx_.rejected) ctx_.rejected->add(1, {{"reason", "ws_not_json"}});
      return ws->send(json{{"type", "error"}, {"error", utf8_escape_invalid(e.what())}}.dump());
    }
    const std::string type = j["type"].get<std::string>();
    const std::string domain = j.value("domain", json("")).is_string() ? j.value("domain", "") : "";
    if (type == "subscribe") return subscribe(ws, domain == "*" ? "" : domain, true);
    if (type == "event") return event(ws, domain, j.contains("event") ? j["event"] : json());
    ws->send(json{{"type", "error"}, {"error", "unknown message type '" + type + "'"}}.dump());
  }

 private:
  std::shared_ptr<Connection> find(http::WebSocket* ws) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = connections_.find(ws);
    return it == connections_.end() ? nullptr : it->second;
  }

  std::shared_ptr<Connection> take(http::WebSocket* ws) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = connections_.find(ws);
    if (it == connections_.end()) return nullptr;
    auto c = it->second;
    connections_.erase(it);
    return c;
  }

  void subscribe(const std::shared_ptr<http::WebSocket>& ws, const std::string& domain, bool confirm) {
    std::shared_ptr<Connection> c = find(ws.get());
    if (!c) return;
    std::lock_guard<std::mutex> lock(c->mu);
    if (c->closed || c->listeners.count(domain) || c->listeners.count("")) return;
    std::weak_ptr<http::WebSocket> weak = ws;
    c->listeners[domain] = ctx_.service.subscribe(domain, [weak](const DomainEvent& e) {
      if (auto w = weak.lock()) w->send(event_json(e).dump(-1, ' ', false, json::error_handler_t::replace));
    });
    if (confirm) ws->send(json{{"type", "subscribed"}, {"domain", domain.empty() ? "*" : domain}}.dump());
  }

  // Submitting may create the domain's trainer (file I/O): it runs on the blocking pool.
  void event(const std::shared_ptr<http::WebSocket>& ws, const std::string& domain, const json& event) {
    if (domain.empty() || !event.is_object()) {
      if (ctx_.rejected) ctx_.rejected->add(1, {{"reason", "invalid_event"}});
      return ws->send(json{{"type", "rejected"}, {"error", "an event message needs 'domain' and an 'event' object"}}.dump());
    }
    subscribe(ws, domain, false);
    boost::asio::post(*ctx_.blocking, [this, ws, domain, text = event.dump()] {
      const std::string id = event_id(text).value_or("");
      json reply = {{"id", id}, {"domain", domain}};
      try {
        reply["type"] = ctx_.service.trainer(domain)->submit(text) == SubmitResult::Duplicate ? "duplicate" : "accepted";
      } catch (const Error& e) {
        if (ctx_.rejected) ctx_.rejected->add(1, {{"reason", "invalid_event"}});
        reply["type"] = e.kind() == ErrorKind::Busy ? "busy" : "rejected";
        reply["error"] = utf8_escape_invalid(e.what());
      } catch (const std::exception& e) {  // an escape would end the process from a pool thread
        spdlog::error("event for domain '{}' failed: {}", domain, e.what());
        reply["type"] = "error";
        reply["error"] = utf8_escape_invalid(e.what());
      }
      ws->send(reply.dump());
    });
  }

  ApiContext& ctx_;
  std::mutex mu_;
  std::map<http::WebSocket*, std::shared_ptr<Connection>> connections_;
};

}  // namespace

void add_event_stream(ApiContext& ctx, http::Router& router) {
  auto stream = std::make_shared<EventStream>(ctx);
  http::WebSocketHandler h;
  h.on_open = [stream](std::shared_ptr<http::WebSocket> ws) { stream->open(ws); };
  h.on_message = [stream](std::shared_ptr<http::WebSocket> ws, const std::string& text, bool is_text) {
    stream->message(ws, text, is_text);
  };
  h.on_close = [stream](std::shared_ptr<http::WebSocket> ws) { stream->close(ws); };
  router.add_websocket("/v1/stream/events", std::move(h));
}

}  // namespace hs::api
