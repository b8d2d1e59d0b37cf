#include "api/config/server_config.h"

#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <toml++/toml.h>

#include "common/fs_util.h"

namespace hs::api {

namespace {

[[noreturn]] void bad_key(const std::string& key, const std::string& what) {
  throw Error(ErrorKind::InvalidArgument, "config key '" + key + "' " + what);
}

// One key of the file: how it is read into the config and written back out.
struct Binding {
  std::string key;  // "section.name"
  std::function<void(const toml::node&)> read;
  std::function<void(toml::table&)> write;
};

std::pair<std::string, std::string> split_key(const std::string& key) {
  const size_t dot = key.find('.');
  return {key.substr(0, dot), key.substr(dot + 1)};
}

toml::table& section(toml::table& root, const std::string& name) {
  if (!root.contains(name)) root.insert(name, toml::table{});
  return *root[name].as_table();
}

template <typename T>
Binding integer(const std::string& key, T& field, int64_t min, int64_t max) {
  return {key,
          [key, &field, min, max](const toml::node& n) {
            if (!n.is_integer()) bad_key(key, "must be an integer");
            const int64_t v = n.as_integer()->get();
            if (v < min || v > max)
              bad_key(key, "must lie in [" + std::to_string(min) + ", " + std::to_string(max) + "], not " + std::to_string(v));
            field = static_cast<T>(v);
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, static_cast<int64_t>(field));
          }};
}

Binding number(const std::string& key, double& field, double min, double max) {
  return {key,
          [key, &field, min, max](const toml::node& n) {
            if (!n.is_number()) bad_key(key, "must be a number");
            const double v = n.is_integer() ? static_cast<double>(n.as_integer()->get()) : n.as_floating_point()->get();
            if (!(v >= min && v <= max)) bad_key(key, "must lie in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
            field = v;
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, field);
          }};
}

Binding text(const std::string& key, std::string& field, std::set<std::string> allowed = {}) {
  return {key,
          [key, &field, allowed](const toml::node& n) {
            if (!n.is_string()) bad_key(key, "must be a string");
            const std::string v = n.as_string()->get();
            if (!allowed.empty() && !allowed.count(v)) {
              std::string list;
              for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
              bad_key(key, "must be one of " + list + ", not '" + v + "'");
            }
            field = v;
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, field);
          }};
}

Binding boolean(const std::string& key, bool& field) {
  return {key,
          [key, &field](const toml::node& n) {
            if (!n.is_boolean()) bad_key(key, "must be true or false");
            field = n.as_boolean()->get();
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, field);
          }};
}

Binding milliseconds(const std::string& key, std::chrono::milliseconds& field) {
  return {key,
          [key, &field](const toml::node& n) {
            // At most a day: a timer beyond that is a mistake, and far larger values overflow nanoseconds.
            if (!n.is_integer() || n.as_integer()->get() < 1 || n.as_integer()->get() > 86'400'000)
              bad_key(key, "must be an integer of milliseconds in [1, 86400000]");
            field = std::chrono::milliseconds(n.as_integer()->get());
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, static_cast<int64_t>(field.count()));
          }};
}

Binding fsync(const std::string& key, FsyncPolicy& field) {
  return {key,
          [key, &field](const toml::node& n) {
            const std::string v = n.is_string() ? n.as_string()->get() : "";
            if (v != "always" && v != "batch" && v != "never") bad_key(key, "must be \"always\", \"batch\" or \"never\"");
            field = parse_fsync_policy(v);
          },
          [key, &field](toml::table& root) {
            auto [s, k] = split_key(key);
            section(root, s).insert_or_assign(k, std::string(fsync_policy_name(field)));
          }};
}

std::vector<Binding> bindings(ServerConfig& c) {
  const int64_t big = std::numeric_limits<int32_t>::max();
  SchedulerOptions& s = c.service.scheduler;
  TrainerOptions& l = c.service.learning;
  return {
      text("server.host", c.host), integer("server.port", c.port, 0, 65535), integer("server.threads", c.threads, 1, 256),
      integer("server.max_body_bytes", c.limits.max_body_bytes, 1024, int64_t{1} << 34),
      integer("server.max_header_bytes", c.limits.max_header_bytes, 1024, 1 << 20),
      milliseconds("server.header_timeout_ms", c.limits.header_timeout),
      milliseconds("server.idle_timeout_ms", c.limits.idle_timeout),
      text("server.log_level", c.log_level, {"trace", "debug", "info", "warn", "error", "off"}),
      integer("grpc.port", c.grpc.port, -1, 65535),
      integer("grpc.max_message_bytes", c.grpc.max_message_bytes, 1024, big),
      integer("grpc.max_threads", c.grpc.max_threads, 4, 4096),
      text("model.path", c.service.engine.model), text("model.name", c.model_name),
      text("model.device", c.service.engine.device), text("model.dtype", c.service.engine.dtype, {"auto", "float32", "bfloat16"}),
      text("model.quantize", c.service.engine.quantize, {"auto", "none", "int8", "int4"}),
      integer("scheduler.max_seqs", s.max_seqs, 1, 4096), integer("scheduler.max_seq_tokens", s.max_seq_tokens, 2, big),
      integer("scheduler.max_step_tokens", s.max_step_tokens, 1, big),
      integer("scheduler.queue_capacity", s.queue_capacity, 1, big), integer("scheduler.max_adapters", s.max_adapters, 1, 1024),
      integer("scheduler.prefix_cache_tokens", s.prefix_cache_tokens, 0, big),
      integer("scheduler.prefix_block_tokens", s.prefix_block_tokens, 1, 4096),
      number("scheduler.training_share", s.training_share, 0, 1), boolean("scheduler.recall_taught", s.recall_taught),
      boolean("scheduler.cuda_graphs", s.cuda_graphs),
      text("adapters.dir", c.service.adapters.root),
      integer("adapters.resident_bytes", c.service.adapters.resident_bytes, 0, int64_t{1} << 40),
      integer("adapters.hot_adapters", c.service.adapters.hot_adapters, 1, 4096),
      integer("adapters.keep_versions", c.service.adapters.keep_versions, 1, 1 << 20),
      number("learning.lr", l.adamw.lr, 1e-12, 1e3), number("learning.weight_decay", l.adamw.weight_decay, 0, 1e3),
      integer("learning.steps_per_batch", l.steps_per_batch, 1, 10000),
      integer("learning.batch_events", l.batch_events, 1, 1 << 20), integer("learning.batch_ms", l.batch_ms, 0, 3600000),
      integer("learning.gradient_batch_ms", l.gradient_batch_ms, 0, 3600000),
      integer("learning.max_staleness", l.max_staleness, 0, int64_t{1} << 40),
      integer("learning.group_commit_us", l.group_commit_us, 0, 1000000),
      integer("learning.queue", l.queue_capacity, 1, big), number("learning.max_grad_norm", l.max_grad_norm, 0, 1e12),
      integer("learning.checkpoint_every", l.checkpoint_every, 1, big), boolean("learning.deterministic", l.deterministic),
      integer("learning.max_example_tokens", l.max_example_tokens, 0, big), fsync("learning.fsync", l.fsync),
      integer("learning.rank", l.create.rank, 8, 4096), number("learning.alpha", l.create.alpha, 1e-6, 1e6),
      number("learning.sparsity", l.create.sparsity, 0, 0.9999),
      number("learning.dp_noise", l.privacy.noise_multiplier, 0, 1e6), number("learning.dp_clip", l.privacy.clip, 0, 1e12),
      number("learning.dp_delta", l.privacy.delta, 1e-300, 1),
      number("learning.stop_loss", l.retention.stop_loss, 0, 1e3),
      number("learning.distill_weight", l.retention.distill_weight, 0, 1e6),
      integer("learning.anchors_per_step", l.retention.anchors_per_step, 1, 1024),
      integer("learning.rehearse_per_step", l.retention.rehearse_per_step, 0, 1024),
      integer("learning.rehearsal_examples", l.retention.rehearsal_examples, 1, 4096),
      integer("learning.scope_layers", l.retention.scope_layers, 0, 1024),
      number("learning.max_drift", l.guard.max_drift, 0, 1e6)};
}

}  // namespace

ServerConfig default_server_config() {
  ServerConfig c;
  c.service.adapters.root = "";  // the default adapter folder, chosen at start
  return c;
}

void apply_config_file(ServerConfig& config, const std::string& path) {
  toml::table root;
  try {
    root = toml::parse(read_text_file(path), path);
  } catch (const toml::parse_error& e) {
    std::ostringstream where;
    where << e.source().begin;
    throw Error(ErrorKind::InvalidArgument, "config file '" + path + "' is not valid TOML at " + where.str() + ": " +
                                                std::string(e.description()));
  }
  std::vector<Binding> all = bindings(config);
  for (const auto& [sec, value] : root) {
    const std::string name(sec.str());
    if (!value.is_table()) bad_key(name, "must be a section ([" + name + "])");
    for (const auto& [key, node] : *value.as_table()) {
      const std::string full = name + "." + std::string(key.str());
      auto it = std::find_if(all.begin(), all.end(), [&](const Binding& b) { return b.key == full; });
      if (it == all.end()) bad_key(full, "is not a setting (see config/default.toml for the keys)");
      it->read(node);
    }
  }
}

void validate_server_config(const ServerConfig& c) {
  auto prefixed = [](const std::string& section, const std::function<void()>& check) {
    try {
      check();
    } catch (const Error& e) {
      throw Error(e.kind(), "config [" + section + "]: " + e.what());
    }
  };
  prefixed("scheduler", [&] { validate_scheduler_options(c.service.scheduler); });
  prefixed("learning", [&] {
    validate_trainer_options(c.service.learning);
    validate_adapter_config(c.service.learning.create);
  });
  if (c.host.empty()) throw Error(ErrorKind::InvalidArgument, "config key 'server.host' must not be empty");
  if (c.grpc.port < -1 || c.grpc.port > 65535)  // --grpc-port bypasses the file's check
    throw Error(ErrorKind::InvalidArgument, "config key 'grpc.port' (--grpc-port) must lie in [-1, 65535]");
  if (c.threads < 1 || c.threads > 256)  // --threads bypasses the file's check
    throw Error(ErrorKind::InvalidArgument, "config key 'server.threads' (--threads) must lie in [1, 256]");
}

std::string config_to_toml(const ServerConfig& config) {
  ServerConfig copy = config;
  toml::table root;
  for (const Binding& b : bindings(copy)) b.write(root);
  std::ostringstream out;
  out << root << "\n";
  return out.str();
}

}  // namespace hs::api
