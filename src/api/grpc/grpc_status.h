#pragma once
// hs::Error as a gRPC status: the kind becomes the status code (InvalidArgument → INVALID_ARGUMENT, Busy →
// RESOURCE_EXHAUSTED, or UNAVAILABLE while the server drains), and is also sent as the trailing metadata
// "hs-error-kind" ("context_overflow", "busy", ...) so a client can tell kinds that share a code.
#include <grpcpp/grpcpp.h>

#include <functional>

#include "common/error.h"

namespace hs::api {

struct ApiContext;

grpc::StatusCode grpc_code(ErrorKind kind, bool draining);

// The status for `e`, with its kind in the trailing metadata; a refusal (a client's fault) is counted in
// hyprstream_rejected_requests_total under the same reasons as HTTP's.
grpc::Status error_status(ApiContext& ctx, grpc::ServerContext& call, const Error& e);

// Runs a handler's body: an hs::Error it throws becomes its status, any other exception INTERNAL.
grpc::Status guarded(ApiContext& ctx, grpc::ServerContext& call, const std::function<grpc::Status()>& body);

}  // namespace hs::api
