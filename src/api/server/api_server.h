#pragma once
// `hyprstream serve`: the HTTP API and gRPC over one Service, until SIGTERM or SIGINT. Then admission stops, running
// streams finish, trainers checkpoint, and it returns 0.
#include "api/config/server_config.h"

namespace hs::api {

int run_api_server(const ServerConfig& config);

}  // namespace hs::api
