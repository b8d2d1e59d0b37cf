#pragma once
// Helpers shared by the benchmarks: timing, the machine description, model loading, decode steps.
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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
double current_rss_mb();  // VmRSS now

// args.model ("default", a folder or a .gguf), or random weights of args.random_config when that is set.
// `described` receives a name for the JSON output.
std::shared_ptr<Model> load_bench_model(const ModelArgs& args, std::string* described);

at::Tensor random_tokens(int64_t rows, int64_t n, int64_t vocab, const Model& m);

// Greedy decode through the serving path: one forward_slots step prefills `rows` prompts of `context` random
// tokens (the same for every call), then `steps` single-token steps, eager or replayed from captured graphs
// (model/decode_graphs.h), after two warm-up steps. `lora` is per row ([rows, 1, K] scales), as
// make_lora_batch builds it. Only token ids reach the host.
struct DecodeRun {
  double seconds_per_step = 0;
  std::vector<int64_t> prompt;  // row 0's prompt
  std::vector<std::vector<int64_t>> tokens;  // per step, every row's token (warm-up steps included)
  std::vector<at::Tensor> logits;            // per step, row 0's float32 logits on the host, when asked
  int64_t graph_captures = 0;
};
DecodeRun greedy_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora,
                        bool graphs, bool keep_logits = false);

// Seconds per greedy decode step at `rows` sequences that each hold `context` tokens, with per-row
// adapters when `lora` is given; through captured graphs where the model supports them.
double time_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora = nullptr);

// Whether eager and graph decode give the same greedy tokens: {"rows", "steps", "same", "first_difference"
// (-1 when none), "eager_ms_per_step", "graph_ms_per_step", "graph_captures"}.
nlohmann::json compare_graph_decode(const Model& m, int64_t rows, int64_t context, int64_t steps,
                                    const LoraBatch* lora = nullptr);

}  // namespace hs::bench
