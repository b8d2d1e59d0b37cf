#pragma once
// Helpers shared by the benchmarks: timing, the machine description, model loading, decode steps.
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/forward.h"
#include "model/load.h"
#include "model/model.h"

namespace hs::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The model flags every benchmark takes.
struct ModelArgs {
  std::string model = "default";
  std::string random_config;  // "qwen3-1.7b" or a config.json path: random weights of that shape
  std::string device = "cpu";
  std::string dtype = "auto";
  std::string quantize = "none";
};

using FlagHandlers = std::map<std::string, std::function<void(const std::string& value)>>;

// Parses "--flag value" pairs: the model flags into `model`, the others through `extra`. An unknown flag
// throws InvalidArgument listing the known ones.
void parse_flags(int argc, char** argv, ModelArgs& model, const FlagHandlers& extra);

// Runs a benchmark body and prints the JSON it returns; errors go to stderr with exit code 2 (bad input)
// or 1 (anything else).
int run(const std::function<nlohmann::json()>& body);

// Host, CPU model, cores, torch threads and whether CUDA is present.
nlohmann::json machine_json();
double peak_rss_mb();

// args.model ("default", a folder or a .gguf), or random weights of args.random_config when that is set.
// `described` receives a name for the JSON output.
std::shared_ptr<Model> load_bench_model(const ModelArgs& args, std::string* described);

at::Tensor random_tokens(int64_t rows, int64_t n, int64_t vocab, const Model& m);

// All rows at the same position, each with n new tokens.
BatchStep step_for(const at::Tensor& tokens, int64_t start, const Model& m);

// Seconds per greedy decode step at `rows` sequences that each hold `context` tokens, with per-row
// adapters when `lora` is given.
double time_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora = nullptr);

}  // namespace hs::bench
