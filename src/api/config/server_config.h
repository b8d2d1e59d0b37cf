#pragma once
// The server's configuration: built-in defaults (config/default.toml spells them out), a TOML file over them,
// then command-line flags over both. Unknown keys, wrong types and values out of range are refused at start
// with the key's name.
#include <cstdint>
#include <string>

#include "api/http/http_server.h"
#include "serving/service.h"

namespace hs::api {

// The gRPC server of `serve` (api/grpc/grpc_server.h).
struct GrpcConfig {
  int port = 50051;                          // 0 picks a free port; -1 serves no gRPC
  int64_t max_message_bytes = 16 << 20;      // a larger message ends its call with RESOURCE_EXHAUSTED
  int max_threads = 256;                     // each open call holds one; beyond: RESOURCE_EXHAUSTED
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  int threads = 4;           // HTTP I/O threads
  http::Limits limits;
  GrpcConfig grpc;
  std::string log_level = "info";
  std::string model_name;    // the base model's id in /v1/models; empty: the model file's name
  ServiceOptions service;
};

ServerConfig default_server_config();

// Reads a TOML file over `config`. Throws InvalidArgument naming the key ("scheduler.max_seqs") and what is
// wrong with it, NotFound / CorruptFile for a missing or malformed file.
void apply_config_file(ServerConfig& config, const std::string& path);

// Checks every value; throws InvalidArgument naming the key.
void validate_server_config(const ServerConfig& config);

// The effective configuration as TOML, in the layout of config/default.toml.
std::string config_to_toml(const ServerConfig& config);

}  // namespace hs::api
