#pragma once
// The gRPC server of `hyprstream serve` ([grpc] in the config): Inference, Adapters and Learning
// (proto/hyprstream/v1), the standard grpc.health.v1 health service and server reflection, so that generic
// clients (grpcurl, grpc_health_probe) work. It shares the HTTP API's context: one service, one scheduler.
#include <memory>
#include <string>

#include "api/config/server_config.h"

namespace grpc {
class Server;
class Service;
}  // namespace grpc

namespace hs::api {

struct ApiContext;

class GrpcServer {
 public:
  // Listens on host:config.port (0 picks a free port). Throws Io when the address cannot be bound.
  GrpcServer(ApiContext& ctx, const std::string& host, const GrpcConfig& config);
  ~GrpcServer();  // shutdown()
  int port() const { return port_; }
  // Health checks answer NOT_SERVING from now on (the server drains).
  void set_not_serving();
  // Ends the calls still open after `grace_ms` (streams that would outlive the drain) and stops.
  void shutdown(int grace_ms = 2000);

 private:
  std::vector<std::unique_ptr<grpc::Service>> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace hs::api
