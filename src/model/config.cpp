#include "model/config.h"

#include <cmath>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hs {

using nlohmann::json;

double yarn_mscale(double factor, double mscale) {
  return factor <= 1 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

const char* architecture_name(Architecture arch) {
  switch (arch) {
    case Architecture::Llama: return "llama";
    case Architecture::Mistral: return "mistral";
    case Architecture::Qwen2: return "qwen2";
    case Architecture::Qwen3: return "qwen3";
  }
  return "unknown";
}

namespace {

int64_t required_int(const json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number_integer())
    throw Error(ErrorKind::CorruptFile, std::string("config.json lacks the integer field '") + key + "'");
  return j[key].get<int64_t>();
}

double required_number(const json& p, const std::string& type, const char* key) {
  if (!p.contains(key) || !p[key].is_number())
    throw Error(ErrorKind::CorruptFile, "config.json's '" + type + "' rope scaling lacks the number '" + key + "'");
  return p[key].get<double>();
}

// A number of the rope parameters, `fallback` where absent or null (transformers' `get(key) or default`).
double number_or(const json& p, const char* key, double fallback) {
  return p.contains(key) && p[key].is_number() && p[key].get<double>() != 0 ? p[key].get<double>() : fallback;
}

std::string rope_type_of(const json& p) {
  if (!p.is_object()) return "default";
  const json& t = p.contains("rope_type") ? p["rope_type"] : p.contains("type") ? p["type"] : json();
  return t.is_string() ? t.get<std::string>() : "default";
}

// YaRN's scale of cos and sin where the config does not give it.
double yarn_attention_factor(const json& p, double factor) {
  if (p.contains("attention_factor") && p["attention_factor"].is_number()) return p["attention_factor"].get<double>();
  const double m = number_or(p, "mscale", 0), all_dim = number_or(p, "mscale_all_dim", 0);
  return m != 0 && all_dim != 0 ? yarn_mscale(factor, m) / yarn_mscale(factor, all_dim) : yarn_mscale(factor);
}

// The scaling of one rope parameter object, as transformers' standardize_rope_params and _compute_*_parameters
// read it: a top-level original_max_position_embeddings wins over the object's, max_position_embeddings is the
// last resort.
RopeScaling parse_rope_scaling(const json& j, const json& p, const std::string& type, int64_t context) {
  RopeScaling s;
  int64_t original = context;
  if (p.contains("original_max_position_embeddings")) original = required_int(p, "original_max_position_embeddings");
  if (j.contains("original_max_position_embeddings")) original = required_int(j, "original_max_position_embeddings");
  s.original_context = original;
  if (type == "linear") {
    s.type = RopeScalingType::Linear;
    s.factor = required_number(p, type, "factor");
  } else if (type == "llama3") {
    s.type = RopeScalingType::Llama3;
    s.factor = required_number(p, type, "factor");
    s.low_freq_factor = required_number(p, type, "low_freq_factor");
    s.high_freq_factor = required_number(p, type, "high_freq_factor");
  } else {
    s.type = RopeScalingType::Yarn;
    s.factor = p.contains("factor") && p["factor"].is_number() ? p["factor"].get<double>()
                                                                 : static_cast<double>(context) / original;
    s.beta_fast = number_or(p, "beta_fast", 32.0);
    s.beta_slow = number_or(p, "beta_slow", 1.0);
    s.truncate = !p.contains("truncate") || !p["truncate"].is_boolean() || p["truncate"].get<bool>();
    s.attention_factor = yarn_attention_factor(p, s.factor);
  }
  return s;
}

// transformers 5 moved rope settings into "rope_parameters"; older files keep "rope_theta"/"rope_scaling".
void read_rope(const json& j, ModelConfig& c) {
  const json* params = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) params = &j["rope_parameters"];
  if (params && params->contains("rope_theta")) c.rope_theta = (*params)["rope_theta"].get<double>();
  if (j.contains("rope_theta") && j["rope_theta"].is_number()) c.rope_theta = j["rope_theta"].get<double>();
  const json* scaling = params && rope_type_of(*params) != "default" ? params : nullptr;
  if (!scaling && j.contains("rope_scaling") && rope_type_of(j["rope_scaling"]) != "default")
    scaling = &j["rope_scaling"];
  for (const json* p : {&j, params, scaling})
    if (p && number_or(*p, "partial_rotary_factor", 1.0) != 1.0)
      throw Error(ErrorKind::Unsupported, "partial rotary embeddings (partial_rotary_factor) are not supported");
  if (!scaling) return;
  const std::string type = rope_type_of(*scaling);
  if (type != "linear" && type != "llama3" && type != "yarn")
    throw Error(ErrorKind::Unsupported,
                "rope scaling type '" + type + "' is not supported (supported: default, linear, llama3, yarn)");
  c.rope_scaling = parse_rope_scaling(j, *scaling, type, c.context_length);
}

Architecture parse_architecture(const std::string& model_type) {
  if (model_type == "llama") return Architecture::Llama;
  if (model_type == "mistral") return Architecture::Mistral;
  if (model_type == "qwen2") return Architecture::Qwen2;
  if (model_type == "qwen3") return Architecture::Qwen3;
  throw Error(ErrorKind::Unsupported, "model_type '" + model_type +
                                          "' is not supported; supported architectures: llama, mistral, qwen2, qwen3");
}

// Biases and the attention window, which the architectures spell differently.
void read_attention_variant(const json& j, ModelConfig& c) {
  const bool attention_bias = j.value("attention_bias", false);
  c.qkv_bias = c.arch == Architecture::Qwen2 || (c.arch != Architecture::Mistral && attention_bias);
  c.o_bias = (c.arch == Architecture::Llama || c.arch == Architecture::Qwen3) && attention_bias;
  c.mlp_bias = c.arch == Architecture::Llama && j.value("mlp_bias", false);
  // Mistral's window holds in every layer; Qwen's use_sliding_window only in layers past max_window_layers.
  // MistralConfig's own default is a window of 4096; null turns it off.
  if (c.arch == Architecture::Mistral)
    c.sliding_window = !j.contains("sliding_window")        ? 4096
                       : j["sliding_window"].is_null() ? 0
                                                       : required_int(j, "sliding_window");
  if (j.value("use_sliding_window", false))
    throw Error(ErrorKind::Unsupported, std::string("sliding-window attention (use_sliding_window) is not ") +
                                            "supported for " + architecture_name(c.arch) +
                                            "; only Mistral's sliding_window is");
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, std::string("config.json is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(ErrorKind::CorruptFile, "config.json is not a JSON object");
  ModelConfig c;
  c.arch = parse_architecture(j.value("model_type", std::string()));
  c.hidden_size = required_int(j, "hidden_size");
  c.intermediate_size = required_int(j, "intermediate_size");
  c.num_layers = required_int(j, "num_hidden_layers");
  c.num_heads = required_int(j, "num_attention_heads");
  c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? j["num_key_value_heads"].get<int64_t>()
                       : c.num_heads;
  c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? j["head_dim"].get<int64_t>()
                                                                  : (c.num_heads ? c.hidden_size / c.num_heads : 0);
  c.vocab_size = required_int(j, "vocab_size");
  c.context_length = j.value("max_position_embeddings", int64_t{2048});
  c.rms_norm_eps = j.value("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  read_attention_variant(j, c);
  read_rope(j, c);
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") throw Error(ErrorKind::Unsupported, "activation '" + act + "' is not supported (only silu)");
  validate_config(c);
  return c;
}

void validate_config(const ModelConfig& c) {
  if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0 || c.context_length <= 0)
    throw Error(ErrorKind::CorruptFile, "model configuration has a zero or negative size");
  if (c.num_heads % c.num_kv_heads != 0)
    throw Error(ErrorKind::CorruptFile, "num_attention_heads (" + std::to_string(c.num_heads) +
                                            ") is not a multiple of num_key_value_heads (" +
                                            std::to_string(c.num_kv_heads) + ")");
  if (c.head_dim % 2 != 0) throw Error(ErrorKind::CorruptFile, "head_dim must be even for RoPE");
  if (c.sliding_window < 0) throw Error(ErrorKind::CorruptFile, "sliding_window is negative");
  const RopeScaling& s = c.rope_scaling;
  if (s.type != RopeScalingType::None && (s.factor <= 0 || s.original_context <= 0))
    throw Error(ErrorKind::CorruptFile, "rope scaling needs a positive factor and original context length");
  if (s.type == RopeScalingType::Llama3 && s.high_freq_factor == s.low_freq_factor)
    throw Error(ErrorKind::CorruptFile, "llama3 rope scaling needs high_freq_factor != low_freq_factor");
}

ModelConfig qwen3_1_7b_config() {
  ModelConfig c;
  c.arch = Architecture::Qwen3;
  c.hidden_size = 2048;
  c.intermediate_size = 6144;
  c.num_layers = 28;
  c.num_heads = 16;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 151936;
  c.context_length = 40960;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = true;
  return c;
}

}  // namespace hs
