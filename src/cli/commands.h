#pragma once
// The CLI's subcommands. Each parses nothing itself: main.cpp fills these structs from flags.
#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "learning/trainer.h"
#include "serving/sampling.h"

namespace hs {
struct TrainerOptions;
}

namespace hs::cli {

struct ModelFlags {
  std::string model = "default";
  std::string dtype = "auto";
  std::string device = "cpu";
  std::string quantize = "auto";
};

struct SamplingFlags {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int32_t> top_k, max_tokens;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
};

struct AdapterFlags {
  std::string name;        // empty: the base model alone
  double scale = 1.0;
  uint64_t version = 0;    // 0: the current version
  std::string dir;         // empty: default_adapter_root()
};

struct AdapterAdminFlags {
  std::string name, folder, codec = "none";
  int64_t rank = 16;
  double alpha = 32, sparsity = 0.99;
  std::optional<double> import_sparsity;
  std::vector<std::string> targets;
  uint64_t seed = 0, version = 0;
  uint32_t keep = 5;
  bool json = false;
};

struct GenerateFlags {
  std::string prompt;  // read from stdin when empty
  bool json = false;
};

struct ChatFlags {
  std::string system;
  bool no_think = false;
  bool learn = false;  // "/correct TEXT" teaches the adapter the better answer
};

// Options of the learning pipeline, shared by `train` and `chat --learn`; the defaults are the teaching recipe.
struct TrainFlags {
  std::string domain, data, canaries;
  size_t batch_events = 32, queue = 1024;
  int64_t batch_ms = 100;
  int steps = teaching_recipe().steps_per_batch;
  double lr = teaching_recipe().adamw.lr, weight_decay = 0, max_grad_norm = 1;
  double dp_noise = 0, dp_clip = 1, dp_delta = 1e-5;
  double stop_loss = teaching_recipe().retention.stop_loss, distill_weight = teaching_recipe().retention.distill_weight;
  size_t anchors_per_step = teaching_recipe().retention.anchors_per_step;
  size_t rehearse_per_step = teaching_recipe().retention.rehearse_per_step;
  size_t rehearsal_examples = teaching_recipe().retention.rehearsal_examples;
  int64_t scope_layers = teaching_recipe().retention.scope_layers;
  double max_drift = teaching_recipe().guard.max_drift;
  std::string fsync = "always";
  uint64_t checkpoint_every = 64, seed = 0, max_staleness = 256;
  int64_t max_example_tokens = 0;
  bool deterministic = false, json = false;
  int64_t rank = 16;
  double alpha = 32, sparsity = 0.99;
};

struct EventsFlags {
  std::string server, domain, file;
  bool json = false;
};

struct TokenizeFlags {
  std::string text;
  bool json = false;
  bool add_special = false;
};

void add_model_flags(CLI::App* app, ModelFlags& f);
void add_adapter_flags(CLI::App* app, AdapterFlags& f);
void add_sampling_flags(CLI::App* app, SamplingFlags& f);
// Engine defaults overridden by whatever flags were given.
SamplingParams resolve_sampling(const SamplingParams& defaults, const SamplingFlags& f, int32_t default_max_tokens);

int run_generate(const ModelFlags& m, const AdapterFlags& a, const SamplingFlags& s, const GenerateFlags& g);
int run_chat(const ModelFlags& m, const AdapterFlags& a, const SamplingFlags& s, const ChatFlags& c,
             const TrainFlags& t);
// `adapters <action>`: create, list, show, rm, rollback, export, import.
int run_adapters(const std::string& action, const ModelFlags& m, const AdapterFlags& a, const AdapterAdminFlags& f);
// Registers the `adapters` subcommand tree; returns the action subcommands by name.
std::vector<std::pair<std::string, CLI::App*>> add_adapter_commands(CLI::App& app, ModelFlags& m, AdapterFlags& a,
                                                                    AdapterAdminFlags& f);
// `train`: streams a JSONL file (or stdin) of learning events through a domain's pipeline.
CLI::App* add_train_command(CLI::App& app, ModelFlags& m, AdapterFlags& a, TrainFlags& t);
int run_train(const ModelFlags& m, const AdapterFlags& a, const TrainFlags& t);
// Adds the pipeline options to `chat` (its --learn mode).
void add_learning_flags(CLI::App* app, TrainFlags& t);
hs::TrainerOptions trainer_options(const TrainFlags& t);

// `serve`: the HTTP API (its flags are kept by serve_command.cpp).
CLI::App* add_serve_command(CLI::App& app);
int run_serve();
// Returns the `events push` subcommand.
CLI::App* add_events_command(CLI::App& app, EventsFlags& f);
int run_events_push(const EventsFlags& f);

int run_tokenize(const ModelFlags& m, const TokenizeFlags& t);
int run_info(const ModelFlags& m, bool json);

}  // namespace hs::cli
