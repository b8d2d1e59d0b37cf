// config.json parsing of the architecture variants and rope scalings: which fields each spelling sets, and what
// is refused by name. The numbers they lead to are checked against transformers in tests/python/test_architectures.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "model/config.h"

namespace hs {

namespace {

nlohmann::json base_config(const std::string& model_type) {
  return {{"model_type", model_type},   {"hidden_size", 64},         {"intermediate_size", 128},
          {"num_hidden_layers", 2},      {"num_attention_heads", 4},  {"num_key_value_heads", 2},
          {"vocab_size", 320},           {"max_position_embeddings", 256}};
}

ModelConfig parse(const nlohmann::json& j) { return parse_hf_config(j.dump()); }

// The message of the Unsupported error parsing j throws.
std::string refusal(const nlohmann::json& j) {
  try {
    parse(j);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Unsupported);
    return e.what();
  }
  ADD_FAILURE() << "accepted " << j.dump();
  return "";
}

}  // namespace

TEST(Config, ArchitecturesSetTheirBiasesAndWindow) {
  const ModelConfig qwen2 = parse(base_config("qwen2"));
  EXPECT_EQ(qwen2.arch, Architecture::Qwen2);
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.o_bias);
  nlohmann::json llama = base_config("llama");
  llama["attention_bias"] = true;
  EXPECT_TRUE(parse(llama).qkv_bias && parse(llama).o_bias);
  nlohmann::json mistral = base_config("mistral");
  EXPECT_EQ(parse(mistral).sliding_window, 4096);  // MistralConfig's default when the key is absent
  mistral["sliding_window"] = 12;
  EXPECT_EQ(parse(mistral).sliding_window, 12);
  mistral["sliding_window"] = nullptr;
  EXPECT_EQ(parse(mistral).sliding_window, 0);
  nlohmann::json qwen = base_config("qwen2");
  qwen["use_sliding_window"] = true;
  EXPECT_NE(refusal(qwen).find("use_sliding_window"), std::string::npos);
}

TEST(Config, RopeScalingReadsBothSpellings) {
  nlohmann::json old_style = base_config("llama");
  old_style["rope_theta"] = 500000.0;
  old_style["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                               {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}};
  nlohmann::json new_style = base_config("llama");
  new_style["rope_parameters"] = old_style["rope_scaling"];
  new_style["rope_parameters"]["rope_theta"] = 500000.0;
  for (const auto& j : {old_style, new_style}) {
    const ModelConfig c = parse(j);
    EXPECT_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling.type, RopeScalingType::Llama3);
    EXPECT_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.rope_scaling.original_context, 32);
  }
}

TEST(Config, YarnDefaultsAsTransformersReadsThem) {
  nlohmann::json j = base_config("qwen3");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}, {"beta_fast", nullptr}};
  RopeScaling s = parse(j).rope_scaling;
  EXPECT_EQ(s.original_context, 256);  // max_position_embeddings when the parameters do not say
  EXPECT_EQ(s.beta_fast, 32.0);        // `get("beta_fast") or 32`
  EXPECT_TRUE(s.truncate);
  j["original_max_position_embeddings"] = 64;  // at the top level it wins, as in standardize_rope_params
  j["rope_parameters"]["original_max_position_embeddings"] = 32;
  EXPECT_EQ(parse(j).rope_scaling.original_context, 64);
}

TEST(Config, UnsupportedRopeTypesAreRefusedByName) {
  for (const char* type : {"dynamic", "longrope", "proportional"}) {
    nlohmann::json j = base_config("llama");
    j["rope_scaling"] = {{"type", type}, {"factor", 2.0}};
    EXPECT_NE(refusal(j).find(std::string("rope scaling type '") + type + "'"), std::string::npos);
  }
  nlohmann::json j = base_config("gpt_neox");
  EXPECT_NE(refusal(j).find("model_type 'gpt_neox'"), std::string::npos);
}

}  // namespace hs
