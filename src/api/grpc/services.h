#pragma once
// The gRPC services (proto/hyprstream/v1), each over the same Service as the HTTP API. Handlers run on gRPC's
// synchronous thread pool: a stream holds one thread while it lasts (bounded by [grpc] max_threads).
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>

#include <memory>

namespace hs::api {

struct ApiContext;

std::unique_ptr<grpc::Service> make_inference_service(ApiContext& ctx);
std::unique_ptr<grpc::Service> make_adapter_service(ApiContext& ctx);
std::unique_ptr<grpc::Service> make_learning_service(ApiContext& ctx);

}  // namespace hs::api
