#pragma once
// Architecture hyper-parameters, read from a Hugging Face config.json or from GGUF metadata.
#include <cstdint>
#include <string>

namespace hs {

enum class Architecture { Llama, Qwen3 };

struct ModelConfig {
  Architecture arch = Architecture::Llama;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // independent of hidden_size / num_heads (Qwen3 sets it explicitly)
  int64_t vocab_size = 0;
  int64_t context_length = 0;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
};

const char* architecture_name(Architecture arch);

// Parses config.json text; refuses architectures and features the forward pass does not implement.
ModelConfig parse_hf_config(const std::string& json_text);

// The shape of Qwen/Qwen3-1.7B (its config.json), the reference model: benchmarks and size checks build
// random-weight models and adapters of this shape where the weights cannot be downloaded.
ModelConfig qwen3_1_7b_config();

// Checks the numbers agree with each other (head counts divide, sizes positive).
void validate_config(const ModelConfig& config);

}  // namespace hs
