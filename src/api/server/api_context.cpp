#include "api/server/api_context.h"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include "common/metrics.h"
#include "common/strict_json.h"
#include "common/utf8.h"
#include "serving/service.h"

namespace hs::api {

int http_status(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return 400;
    case ErrorKind::NotFound: return 404;
    case ErrorKind::Unsupported: return 400;
    case ErrorKind::ContextOverflow: return 400;
    case ErrorKind::Busy: return 429;
    case ErrorKind::AlreadyExists: return 409;
    case ErrorKind::CorruptFile:
    case ErrorKind::Io:
    case ErrorKind::Internal: return 500;
  }
  return 500;
}

const char* error_type(int status) {
  if (status == 404) return "not_found_error";
  if (status == 429) return "rate_limit_error";
  if (status == 503) return "service_unavailable";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

std::string reason_of(const Error& e) {
  if (const auto* r = dynamic_cast<const RequestError*>(&e)) return r->reason();
  switch (e.kind()) {
    case ErrorKind::InvalidArgument: return "invalid_request";
    case ErrorKind::NotFound: return "not_found";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::ContextOverflow: return "context_overflow";
    case ErrorKind::Busy: return "busy";
    case ErrorKind::AlreadyExists: return "already_exists";
    case ErrorKind::CorruptFile: return "corrupt_file";
    case ErrorKind::Io: return "io";
    case ErrorKind::Internal: return "internal";
  }
  return "internal";
}

void reply_json(http::Responder& r, int status, const json& body) {
  r.send(status, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace));
}

int http_status(const ApiContext& ctx, const Error& e) {
  // While the server drains, Busy means "go elsewhere", not "retry here".
  return e.kind() == ErrorKind::Busy && ctx.service.draining() ? 503 : http_status(e.kind());
}

json error_json(int status, const std::string& message, const std::string& reason, const std::string& param) {
  return {{"error",
           {{"message", utf8_escape_invalid(message)},
            {"type", error_type(status)},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", status == 400 && reason == "context_overflow" ? json("context_length_exceeded") : json(nullptr)}}}};
}

void reply_error(ApiContext& ctx, http::Responder& r, int status, const std::string& message,
                 const std::string& reason, const std::string& param) {
  if (ctx.rejected && !reason.empty()) ctx.rejected->add(1, {{"reason", reason}});
  http::Headers headers;
  if (status == 429) headers.push_back({"Retry-After", "1"});
  r.send(status, "application/json", error_json(status, message, reason, param).dump(), headers);
}

void reply_error(ApiContext& ctx, http::Responder& r, const Error& e, const std::string& reason) {
  // Busy refusals were counted where they were raised (the scheduler's queue, say).
  const std::string label = e.kind() == ErrorKind::Busy ? "" : reason.empty() ? reason_of(e) : reason;
  reply_error(ctx, r, http_status(ctx, e), e.what(), label);
}

namespace {

template <typename Json>
Json parse_body_as(const http::Request& req) {
  auto bad = [](const std::string& message, const std::string& reason) {
    throw RequestError(ErrorKind::InvalidArgument, message, reason);
  };
  if (req.body.empty()) bad("the request has no body; send a JSON object", "malformed_json");
  Json j;
  try {
    j = parse_strict_json<Json>(req.body, "the request body");
  } catch (const Error& e) {
    bad(e.what(), utf8_is_valid(req.body) ? "malformed_json" : "invalid_utf8");
  }
  if (!j.is_object()) bad("the request body must be a JSON object", "malformed_json");
  return j;
}

}  // namespace

json parse_body(const http::Request& req) { return parse_body_as<json>(req); }

nlohmann::ordered_json parse_ordered_body(const http::Request& req) {
  return parse_body_as<nlohmann::ordered_json>(req);
}

void run_blocking(ApiContext& ctx, std::shared_ptr<http::Responder> r, std::function<void()> fn,
                  boost::asio::thread_pool* pool) {
  boost::asio::post(pool ? *pool : *ctx.blocking, [&ctx, r, fn = std::move(fn)] {
    try {
      fn();
    } catch (const Error& e) {
      reply_error(ctx, *r, e);
    } catch (const std::exception& e) {
      reply_error(ctx, *r, Error(ErrorKind::Internal, e.what()));
    }
  });
}

}  // namespace hs::api
