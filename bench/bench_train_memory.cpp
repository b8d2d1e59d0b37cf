// Training memory benchmark: peak resident memory and time of the adapter gradient of one example of
// --tokens tokens (default: the model's whole context), every token after the first a target. It runs
// lora_gradients, what the domain trainer runs per step, in a fresh process so that the peak is its own.
// Prints one JSON object.
#include <unistd.h>

#include <filesystem>
#include <random>

#include "adapters/registry.h"
#include "bench_common.h"
#include "learning/lora_gradients.h"
#include "storage/atomic_file.h"

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  return hs::bench::run([&]() -> nlohmann::json {
    hs::bench::ModelArgs args;
    int64_t tokens = 0;
    hs::GradientOptions options;
    hs::bench::parse_flags(argc, argv, args,
                           {{"--tokens", [&](const std::string& v) { tokens = std::stoll(v); }},
                            {"--tokens-per-forward", [&](const std::string& v) { options.tokens_per_forward = std::stoll(v); }},
                            {"--logits-chunk", [&](const std::string& v) { options.logits_chunk = std::stoll(v); }}});
    nlohmann::json out;
    out["machine"] = hs::bench::machine_json();
    std::string described;
    std::shared_ptr<hs::Model> model = hs::bench::load_bench_model(args, &described);
    if (tokens <= 0) tokens = model->config.context_length;
    out["model"] = described;
    out["device"] = model->device.str();
    out["dtype"] = model->dtype == at::kBFloat16 ? "bfloat16" : "float32";
    out["rss_after_load_mb"] = hs::bench::peak_rss_mb();

    const std::string dir = (fs::temp_directory_path() / ("hs-bench-memory-" + std::to_string(::getpid()))).string();
    hs::AdapterRegistry registry(hs::RegistryOptions{dir}, model);
    registry.create("memory", hs::AdapterConfig{});
    auto snap = registry.acquire("memory");
    std::mt19937_64 rng(1);
    hs::TrainingExample ex;
    for (int64_t t = 0; t < tokens; ++t) {
      ex.tokens.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(model->config.vocab_size)));
      ex.is_target.push_back(t > 0);
    }
    const auto t0 = hs::bench::Clock::now();
    hs::LoraGradients g =
        hs::lora_gradients(*model, snap->image->layout(), snap->image->values(), snap->config.scale(), {ex}, options);
    out["example_tokens"] = tokens;
    out["context_length"] = model->config.context_length;
    out["tokens_per_forward"] = options.tokens_per_forward;
    out["logits_chunk"] = options.logits_chunk;
    out["seconds"] = hs::bench::seconds_since(t0);
    out["loss"] = g.loss;
    out["peak_rss_mb"] = hs::bench::peak_rss_mb();
    hs::remove_tree(dir);
    return out;
  });
}
