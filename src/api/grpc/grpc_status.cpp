#include "api/grpc/grpc_status.h"

#include <spdlog/spdlog.h>

#include "api/server/api_context.h"
#include "common/metrics.h"
#include "common/utf8.h"
#include "serving/service.h"

namespace hs::api {

namespace {

// The kind as clients read it in "hs-error-kind".
const char* kind_token(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return "invalid_argument";
    case ErrorKind::NotFound: return "not_found";
    case ErrorKind::CorruptFile: return "corrupt_file";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::ContextOverflow: return "context_overflow";
    case ErrorKind::Io: return "io";
    case ErrorKind::Busy: return "busy";
    case ErrorKind::AlreadyExists: return "already_exists";
    case ErrorKind::Internal: return "internal";
  }
  return "internal";
}

}  // namespace

grpc::StatusCode grpc_code(ErrorKind kind, bool draining) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case ErrorKind::NotFound: return grpc::StatusCode::NOT_FOUND;
    case ErrorKind::Unsupported: return grpc::StatusCode::UNIMPLEMENTED;
    case ErrorKind::ContextOverflow: return grpc::StatusCode::OUT_OF_RANGE;
    case ErrorKind::Busy: return draining ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::RESOURCE_EXHAUSTED;
    case ErrorKind::AlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case ErrorKind::CorruptFile: return grpc::StatusCode::DATA_LOSS;
    case ErrorKind::Io:
    case ErrorKind::Internal: return grpc::StatusCode::INTERNAL;
  }
  return grpc::StatusCode::INTERNAL;
}

grpc::Status error_status(ApiContext& ctx, grpc::ServerContext& call, const Error& e) {
  const grpc::StatusCode code = grpc_code(e.kind(), ctx.service.draining());
  call.AddTrailingMetadata("hs-error-kind", kind_token(e.kind()));
  const bool client_fault = code != grpc::StatusCode::INTERNAL && code != grpc::StatusCode::DATA_LOSS;
  // Busy refusals are counted where they happen (the scheduler's "queue_full", a trainer's busy counter).
  if (client_fault && e.kind() != ErrorKind::Busy && ctx.rejected) ctx.rejected->add(1, {{"reason", reason_of(e)}});
  if (!client_fault) spdlog::warn("gRPC call from {} failed: {}", call.peer(), e.what());
  return grpc::Status(code, utf8_escape_invalid(e.what()));
}

grpc::Status guarded(ApiContext& ctx, grpc::ServerContext& call, const std::function<grpc::Status()>& body) {
  try {
    return body();
  } catch (const Error& e) {
    return error_status(ctx, call, e);
  } catch (const std::exception& e) {
    return error_status(ctx, call, Error(ErrorKind::Internal, e.what()));
  }
}

}  // namespace hs::api
