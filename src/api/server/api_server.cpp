#include "api/server/api_server.h"

#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <thread>

#include "api/grpc/grpc_server.h"
#include "api/server/routes.h"
#include "common/metrics.h"
#include "serving/service.h"

namespace hs::api {

namespace {

namespace net = boost::asio;

// The id of the base model in /v1/models: the configured name, else the model file's (or folder's) name.
std::string model_id(const ServerConfig& c, const Engine& engine) {
  if (!c.model_name.empty()) return c.model_name;
  std::filesystem::path p(engine.path);
  if (p.filename().empty()) p = p.parent_path();
  std::string name = p.filename().string();
  if (p.extension() == ".gguf") name = p.stem().string();
  return name.empty() ? "hyprstream" : name;
}

// SIGTERM / SIGINT: stop accepting, drain the engine (running requests finish, waiting ones are refused),
// stop the trainers (they checkpoint), then stop the I/O threads. The drain runs on `stopper`, which the
// caller joins before anything it uses is destroyed.
void on_signals(net::signal_set& signals, net::io_context& io, http::Server& server, GrpcServer* grpc,
                Service& service, std::thread& stopper, int& exit_code) {
  signals.async_wait([&, grpc](const boost::system::error_code& ec, int signal) {
    if (ec) return;
    spdlog::info("signal {}: draining (running requests finish, trainers checkpoint)", signal);
    server.stop_accepting();
    if (grpc) grpc->set_not_serving();
    stopper = std::thread([&io, &service, &server, grpc, &exit_code] {
      try {
        service.shutdown();
      } catch (const std::exception& e) {  // a checkpoint not written: the log still holds acknowledged events
        spdlog::error("stopping: {}", e.what());
        exit_code = 1;
      }
      // The last tokens of the streams that just finished are still being written: give them time. gRPC's
      // subscriptions (WatchVersions, StreamEvents) would never end by themselves: its grace period ends them.
      if (grpc) grpc->shutdown();
      for (int i = 0; i < 200 && server.pending_responses() > 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      spdlog::info("stopped");
      io.stop();
    });
  });
}

}  // namespace

int run_api_server(const ServerConfig& config) {
  validate_server_config(config);
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  MetricsRegistry metrics;
  ServiceOptions options = config.service;
  if (options.adapters.root.empty()) options.adapters.root = default_adapter_root();
  spdlog::info("loading model {}", options.engine.model);
  Service service(options, &metrics);
  const ModelSummary model = summarize(service.engine());
  spdlog::info("loaded {} ({} parameters) on {}, weights {} (model.quantize = {})", model.architecture,
               model.parameters, model.device, model.weights, options.engine.quantize);

  net::io_context io;
  net::thread_pool blocking(4), readers(4);
  ApiContext ctx{service,
                 metrics,
                 &metrics.counter("hyprstream_rejected_requests_total", "Requests refused before running, by reason"),
                 &metrics.counter("hyprstream_http_requests_total", "HTTP answers, by route and status"),
                 model_id(config, service.engine()),
                 &blocking,
                 &readers};

  http::Router router;
  add_openai_routes(ctx, router);
  add_native_routes(ctx, router);
  add_adapter_routes(ctx, router);
  add_event_stream(ctx, router);
  std::unique_ptr<GrpcServer> grpc;
  if (config.grpc.port >= 0) grpc = std::make_unique<GrpcServer>(ctx, config.host, config.grpc);
  http::Server server(io, config.host, config.port, config.limits, router,
                      [&ctx](const std::string& reason) { ctx.rejected->add(1, {{"reason", reason}}); });
  // Without open connections io.run() would return as soon as the acceptor closes, while the drain still
  // uses the service: the guard keeps it running until the drain's io.stop().
  auto keep_running = net::make_work_guard(io);
  std::thread stopper;
  int exit_code = 0;  // written by the stopper, read after it is joined
  net::signal_set signals(io, SIGINT, SIGTERM);
  on_signals(signals, io, server, grpc.get(), service, stopper, exit_code);
  spdlog::info("serving {} on http://{}:{} (adapters in {})", ctx.model_name, config.host, server.port(),
               options.adapters.root);
  if (grpc) {
    spdlog::info("serving gRPC on {}:{}", config.host, grpc->port());
    std::cout << "hyprstream: listening on grpc://" << config.host << ":" << grpc->port() << std::endl;
  }
  std::cout << "hyprstream: listening on http://" << config.host << ":" << server.port() << std::endl;

  std::vector<std::thread> threads;
  for (int i = 1; i < config.threads; ++i) threads.emplace_back([&io] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  if (stopper.joinable()) stopper.join();
  blocking.stop();  // what is still queued could not answer now (a learning answer's timeout, say)
  blocking.join();
  readers.stop();
  readers.join();
  return exit_code;
}

}  // namespace hs::api
