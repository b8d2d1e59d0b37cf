#pragma once
// What every route of the HTTP API shares: the service, the metrics, and the conversions between hs::Error
// and HTTP answers. JSON lives here and in the route files only; the service sees native structs.
#include <nlohmann/json.hpp>
#include <memory>
#include <string>

#include "api/http/http_server.h"
#include "common/error.h"

namespace boost::asio {
class thread_pool;
}

namespace hs {

class Service;
class MetricsRegistry;
class MetricFamily;

namespace api {

using json = nlohmann::json;

struct ApiContext {
  Service& service;
  MetricsRegistry& metrics;
  MetricFamily* rejected = nullptr;       // hyprstream_rejected_requests_total{reason}
  MetricFamily* http_requests = nullptr;  // hyprstream_http_requests_total{route, status}
  std::string model_name;                 // the base model's id in /v1/models and responses
  boost::asio::thread_pool* blocking = nullptr;  // learning and adapter writes: may wait for a trainer's start
  boost::asio::thread_pool* readers = nullptr;   // generation and listings: short file reads, never behind those
};

// A refusal of a request with the reason it is counted under (hyprstream_rejected_requests_total{reason}):
// "malformed_json", "invalid_utf8", "wrong_type", "invalid_value", "unknown_field", "unknown_adapter", ...
class RequestError : public Error {
 public:
  RequestError(ErrorKind kind, const std::string& message, std::string reason)
      : Error(kind, message), reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

// An hs::Error as an HTTP status and OpenAI error type; Busy is 429 (retry), or 503 while the server drains.
int http_status(ErrorKind kind);
int http_status(const ApiContext& ctx, const Error& e);
const char* error_type(int status);
// OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.
json error_json(int status, const std::string& message, const std::string& reason, const std::string& param = "");

// Answers with OpenAI's error shape and counts the rejection under `reason` (a metric label).
void reply_error(ApiContext& ctx, http::Responder& r, int status, const std::string& message,
                 const std::string& reason, const std::string& param = "");
void reply_error(ApiContext& ctx, http::Responder& r, const Error& e, const std::string& reason = "");
void reply_json(http::Responder& r, int status, const json& body);

// The request body as a JSON object, strictly (duplicate keys, invalid UTF-8 and malformed text refused).
json parse_body(const http::Request& req);
// The same, keeping the keys' order (a chat template's tojson shows it).
nlohmann::ordered_json parse_ordered_body(const http::Request& req);

// The metric label for why a request was refused: a RequestError's reason, else one per error kind.
std::string reason_of(const Error& e);

// Runs `fn` (which may block) on `pool`, by default the blocking pool; an hs::Error it throws becomes the
// error reply.
void run_blocking(ApiContext& ctx, std::shared_ptr<http::Responder> r, std::function<void()> fn,
                  boost::asio::thread_pool* pool = nullptr);

}  // namespace api
}  // namespace hs
