#include "api/grpc/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>

#include "api/grpc/services.h"
#include "common/error.h"

namespace hs::api {

namespace {

const char* const kServices[] = {"hyprstream.v1.Inference", "hyprstream.v1.Adapters", "hyprstream.v1.Learning"};

void set_health(grpc::Server& server, bool serving) {
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (!health) return;
  health->SetServingStatus(serving);  // "" and every service
  for (const char* name : kServices) health->SetServingStatus(name, serving);
}

}  // namespace

GrpcServer::GrpcServer(ApiContext& ctx, const std::string& host, const GrpcConfig& config) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  services_.push_back(make_inference_service(ctx));
  services_.push_back(make_adapter_service(ctx));
  services_.push_back(make_learning_service(ctx));
  grpc::ServerBuilder builder;
  const std::string address = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
                              std::to_string(config.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  // Each open call holds a thread of the synchronous server; beyond the quota new calls get RESOURCE_EXHAUSTED.
  grpc::ResourceQuota quota("hyprstream-grpc");
  quota.SetMaxThreads(config.max_threads);
  builder.SetResourceQuota(quota);
  for (auto& s : services_) builder.RegisterService(s.get());
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0)
    throw Error(ErrorKind::Io, "cannot serve gRPC on " + address + " (in use, or not an address of this machine)");
  set_health(*server_, true);
}

GrpcServer::~GrpcServer() { shutdown(); }

void GrpcServer::set_not_serving() {
  if (server_) set_health(*server_, false);
}

void GrpcServer::shutdown(int grace_ms) {
  if (!server_) return;
  set_health(*server_, false);
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  server_->Wait();
  server_.reset();
}

}  // namespace hs::api
