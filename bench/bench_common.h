#pragma once
// Helpers shared by the benchmarks: timing, the machine description, model loading, decode steps.
#include <ATen/ATen.h>

#include <chrono>
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

// Host, CPU model, cores, torch threads and whether CUDA is present.
nlohmann::json machine_json();
double peak_rss_mb();

// `model` ("default", a folder or a .gguf), or random weights of `random_config` ("qwen3-1.7b" or a
// config.json path) when that is set. `described` receives a name for the JSON output.
std::shared_ptr<Model> load_bench_model(const std::string& model, const std::string& random_config,
                                        const LoadOptions& options, std::string* described);

at::Tensor random_tokens(int64_t rows, int64_t n, int64_t vocab, const Model& m);

// All rows at the same position, each with n new tokens.
BatchStep step_for(const at::Tensor& tokens, int64_t start, const Model& m);

// Seconds per greedy decode step at `rows` sequences that each hold `context` tokens, with per-row
// adapters when `lora` is given.
double time_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora = nullptr);

}  // namespace hs::bench
