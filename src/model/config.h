#pragma once
// Architecture hyper-parameters, read from a Hugging Face config.json or from GGUF metadata.
#include <cstdint>
#include <string>
#include <vector>

namespace hs {

// Llama and Mistral share a layer; Qwen2 adds q/k/v biases, Qwen3 per-head q/k norms.
enum class Architecture { Llama, Mistral, Qwen2, Qwen3 };

// How RoPE's inverse frequencies stretch positions past the context the model was trained on, as transformers'
// modeling_rope_utils.py computes them ("default", "linear", "llama3", "yarn").
enum class RopeScalingType { None, Linear, Llama3, Yarn };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;
  int64_t original_context = 0;   // llama3, yarn: the context of pre-training
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0;        // yarn: the correction range's bounds, in rotations
  double beta_slow = 1.0;
  bool truncate = true;           // yarn: round the correction range outwards to whole dimensions
  double attention_factor = 1.0;  // yarn: multiplies cos and sin
  // Divisors of the inverse frequencies, one per dimension pair, applied after the above: how llama.cpp stores
  // llama3 scaling in a GGUF (the tensor rope_freqs.weight). Empty: none.
  std::vector<float> freq_factors;
};

// YaRN's scale of cos and sin for a context stretched by `factor` (transformers' get_mscale, llama.cpp's default).
double yarn_mscale(double factor, double mscale = 1.0);

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
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q, k and v projections carry biases (Qwen2; Llama's attention_bias)
  bool o_bias = false;    // the output projection too (Llama's attention_bias)
  bool mlp_bias = false;
  // Mistral: a query at position p attends the keys at positions (p - sliding_window, p]; 0 attends all.
  int64_t sliding_window = 0;
};

const char* architecture_name(Architecture arch);

// Parses config.json text; refuses architectures and features the forward pass does not implement.
ModelConfig parse_hf_config(const std::string& json_text);

// The shape of Qwen/Qwen3-1.7B (its config.json), the reference model: benchmarks and size checks build
// random-weight models and adapters of this shape where the weights cannot be downloaded.
ModelConfig qwen3_1_7b_config();

// Checks the numbers agree with each other (head counts divide, sizes positive, rope scaling complete).
void validate_config(const ModelConfig& config);

}  // namespace hs
