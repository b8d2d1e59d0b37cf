// `tokenize` and `info`: commands that inspect a model without generating.
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "common/error.h"
#include "serving/engine.h"
#include "tokenizer/tokenizer.h"

namespace hs::cli {

int run_tokenize(const ModelFlags& m, const TokenizeFlags& t) {
  std::string text = t.text;
  if (text.empty()) text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  Engine e = load_engine(EngineOptions{m.model, m.dtype, m.device, false});
  std::vector<int32_t> ids = encode(require_tokenizer(e), text, t.add_special);
  if (t.json) {
    nlohmann::json tokens = nlohmann::json::array();
    for (int32_t id : ids) tokens.push_back(e.tokenizer->id_to_token[id]);
    std::cout << nlohmann::json{{"ids", ids}, {"tokens", tokens}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
  return 0;
}

int run_info(const ModelFlags& m, bool json) {
  const Engine e = load_engine(EngineOptions{m.model, m.dtype, m.device, true, m.quantize});
  const ModelSummary s = summarize(e);
  nlohmann::json j{{"path", s.path},           {"format", s.format},
                   {"architecture", s.architecture}, {"parameters", s.parameters},
                   {"dtype", s.dtype},         {"device", s.device},       {"weights", s.weights},
                   {"context_length", s.context_length}, {"vocab_size", s.vocab_size},
                   {"layers", s.layers},       {"hidden_size", s.hidden_size},
                   {"heads", s.heads},         {"kv_heads", s.kv_heads},
                   {"head_dim", s.head_dim},   {"tied_embeddings", s.tied_embeddings}};
  // What generate and chat sample with when no flag overrides it (generation_config.json where present).
  const SamplingParams& d = e.defaults;
  j["generation_defaults"] = {{"temperature", d.temperature}, {"top_k", d.top_k},   {"top_p", d.top_p},
                              {"min_p", d.min_p}, {"repetition_penalty", d.repetition_penalty},
                              {"eos_token_ids", e.eos_ids}};
  if (json) {
    std::cout << j.dump() << "\n";
  } else {
    for (auto& [k, v] : j.items()) std::cout << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
  }
  return 0;
}

}  // namespace hs::cli
