// `serve`: the HTTP and gRPC APIs. Settings come from the built-in defaults, then --config FILE, then these flags.
#include <iostream>

#include "api/server/api_server.h"
#include "cli/commands.h"

namespace hs::cli {

namespace {

struct ServeFlags {
  std::string config;
  bool print_config = false;
  std::optional<std::string> host, model, device, dtype, quantize, adapter_dir, model_name, log_level;
  std::optional<int> port, grpc_port, threads;
  std::optional<int64_t> max_seqs, max_seq_tokens, max_step_tokens, max_adapters, prefix_cache_tokens;
  std::optional<size_t> queue;
};

ServeFlags& flags() {
  static ServeFlags f;
  return f;
}

template <typename T, typename U>
void over(const std::optional<T>& flag, U& field) {
  if (flag) field = static_cast<U>(*flag);
}

}  // namespace

CLI::App* add_serve_command(CLI::App& app) {
  ServeFlags& f = flags();
  auto* s = app.add_subcommand("serve", "Serve the OpenAI-compatible and native HTTP API and gRPC (until SIGTERM)");
  s->add_option("--config", f.config, "TOML file over the defaults (see config/default.toml)");
  s->add_flag("--print-config", f.print_config, "Print the effective configuration as TOML and exit");
  s->add_option("--host", f.host, "Address to listen on (default 127.0.0.1)");
  s->add_option("--port", f.port, "Port (default 8080; 0 picks a free one)");
  s->add_option("--grpc-port", f.grpc_port, "gRPC port (default 50051; 0 picks a free one, -1 serves none)");
  s->add_option("-m,--model", f.model, "Hugging Face folder, .gguf file, or 'default'");
  s->add_option("--model-name", f.model_name, "The base model's id in /v1/models (default: the file's name)");
  s->add_option("--device", f.device, "cpu, cuda or cuda:N");
  s->add_option("--dtype", f.dtype, "auto, float32 or bfloat16");
  s->add_option("--quantize", f.quantize, "auto (int4 for a 4-bit GGUF on the cpu, else none), none, int8 or int4 (cpu) [auto]");
  s->add_option("--adapter-dir", f.adapter_dir, "Folder of adapters");
  s->add_option("--max-seqs", f.max_seqs, "Requests decoded together (KV slots)");
  s->add_option("--max-seq-tokens", f.max_seq_tokens, "Prompt plus completion tokens per request at most");
  s->add_option("--max-step-tokens", f.max_step_tokens, "Tokens per forward step (decodes plus prefill chunks)");
  s->add_option("--max-adapters", f.max_adapters, "Distinct adapters in one step");
  s->add_option("--prefix-cache-tokens", f.prefix_cache_tokens, "KV positions kept for shared prompt prefixes");
  s->add_option("--queue", f.queue, "Requests waiting for a slot at most; beyond it: 429");
  s->add_option("--threads", f.threads, "HTTP I/O threads");
  s->add_option("--log-level", f.log_level, "trace, debug, info, warn, error or off");
  return s;
}

int run_serve() {
  const ServeFlags& f = flags();
  api::ServerConfig c = api::default_server_config();
  if (!f.config.empty()) api::apply_config_file(c, f.config);
  over(f.host, c.host);
  over(f.port, c.port);
  over(f.grpc_port, c.grpc.port);
  over(f.model, c.service.engine.model);
  over(f.model_name, c.model_name);
  over(f.device, c.service.engine.device);
  over(f.dtype, c.service.engine.dtype);
  over(f.quantize, c.service.engine.quantize);
  over(f.adapter_dir, c.service.adapters.root);
  over(f.max_seqs, c.service.scheduler.max_seqs);
  over(f.max_seq_tokens, c.service.scheduler.max_seq_tokens);
  over(f.max_step_tokens, c.service.scheduler.max_step_tokens);
  over(f.max_adapters, c.service.scheduler.max_adapters);
  over(f.prefix_cache_tokens, c.service.scheduler.prefix_cache_tokens);
  over(f.queue, c.service.scheduler.queue_capacity);
  over(f.threads, c.threads);
  over(f.log_level, c.log_level);
  if (f.port && (*f.port < 0 || *f.port > 65535)) throw Error(ErrorKind::InvalidArgument, "--port must lie in [0, 65535]");
  api::validate_server_config(c);
  if (f.print_config) {
    std::cout << api::config_to_toml(c);
    return 0;
  }
  return api::run_api_server(c);
}

}  // namespace hs::cli
