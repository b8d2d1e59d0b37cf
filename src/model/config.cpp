#include "model/config.h"

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hs {

using nlohmann::json;

const char* architecture_name(Architecture arch) {
  switch (arch) {
    case Architecture::Llama: return "llama";
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

// transformers 5 moved rope settings into "rope_parameters"; older files keep "rope_theta"/"rope_scaling".
void read_rope(const json& j, ModelConfig& c) {
  const json* params = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) params = &j["rope_parameters"];
  if (params && params->contains("rope_theta")) c.rope_theta = (*params)["rope_theta"].get<double>();
  if (j.contains("rope_theta") && j["rope_theta"].is_number()) c.rope_theta = j["rope_theta"].get<double>();
  auto check_type = [](const json& p) {
    if (!p.is_object()) return;
    std::string type = p.value("rope_type", p.value("type", std::string("default")));
    if (type != "default")
      throw Error(ErrorKind::Unsupported, "rope scaling type '" + type + "' is not supported (only default RoPE)");
  };
  if (params) check_type(*params);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) check_type(j["rope_scaling"]);
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
  std::string model_type = j.value("model_type", std::string());
  ModelConfig c;
  if (model_type == "qwen3") {
    c.arch = Architecture::Qwen3;
  } else if (model_type == "llama") {
    c.arch = Architecture::Llama;
  } else {
    throw Error(ErrorKind::Unsupported, "model_type '" + model_type +
                                            "' is not supported; supported architectures: llama, qwen3");
  }
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
  c.attention_bias = j.value("attention_bias", false);
  c.mlp_bias = j.value("mlp_bias", false);
  read_rope(j, c);
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") throw Error(ErrorKind::Unsupported, "activation '" + act + "' is not supported (only silu)");
  if (j.value("use_sliding_window", false))
    throw Error(ErrorKind::Unsupported, "sliding-window attention is not supported");
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
