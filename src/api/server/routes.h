#pragma once
// The route groups of the HTTP API; api_server.cpp registers them all.
#include <memory>
#include <string>

#include "api/server/api_context.h"
#include "api/server/generation_params.h"

namespace hs::api {

using RouteFn = void (*)(ApiContext& ctx, http::Request& request, std::shared_ptr<http::Responder> responder);

// Where a route's handler runs: on the connection's I/O thread (it must not block), or on the readers' pool
// (it may read files: manifests, a cold adapter's weights), so that other connections' streams never wait.
// Learning routes use the blocking pool themselves (run_blocking): a trainer's start may take seconds.
enum class Runs { OnIoThread, OnReaderPool };

// Registers a route whose answers are counted by status in hyprstream_http_requests_total{route, status}, and
// whose hs::Error thrown before the answer becomes the error reply.
void add_route(ApiContext& ctx, http::Router& router, const std::string& method, const std::string& pattern,
               RouteFn fn, Runs runs = Runs::OnIoThread);

void add_openai_routes(ApiContext& ctx, http::Router& router);
// /health, /ready, /metrics, /openapi.json, the dashboard at /, /v1/stats and /v1/generate.
void add_native_routes(ApiContext& ctx, http::Router& router);
// /v1/adapters and its learning routes: train, events, feedback, rollback.
void add_adapter_routes(ApiContext& ctx, http::Router& router);
// WebSocket /v1/stream/events.
void add_event_stream(ApiContext& ctx, http::Router& router);

}  // namespace hs::api
