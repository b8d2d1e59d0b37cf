#include "model/model.h"

namespace hs {

void for_each_weight(ModelWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn) {
  auto visit = [&](const std::string& name, at::Tensor& t) {
    if (t.defined()) fn(name, t);
  };
  auto visit_linear = [&](const std::string& name, Linear& lin) {
    // The int8 form stands in for the weight under the weight's name.
    visit(name + ".weight", lin.weight.defined() ? lin.weight : lin.q8);
    visit(name + ".bias", lin.bias);
  };
  visit("model.embed_tokens.weight", w.embed);
  visit("model.norm.weight", w.final_norm);
  if (!w.lm_head_tied) visit_linear("lm_head", w.lm_head);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    visit(p + "input_layernorm.weight", l.attn_norm);
    visit_linear(p + "self_attn.q_proj", l.q);
    visit_linear(p + "self_attn.k_proj", l.k);
    visit_linear(p + "self_attn.v_proj", l.v);
    visit_linear(p + "self_attn.o_proj", l.o);
    visit(p + "self_attn.q_norm.weight", l.q_norm);
    visit(p + "self_attn.k_norm.weight", l.k_norm);
    visit(p + "post_attention_layernorm.weight", l.ffn_norm);
    visit_linear(p + "mlp.gate_proj", l.gate);
    visit_linear(p + "mlp.up_proj", l.up);
    visit_linear(p + "mlp.down_proj", l.down);
  }
}

void for_each_linear(ModelWeights& w, const std::function<void(Linear&)>& fn) {
  for (auto& l : w.layers)
    for (Linear* lin : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) fn(*lin);
  fn(w.lm_head);
}

int64_t count_parameters(ModelWeights& w) {
  int64_t n = 0;
  for_each_weight(w, [&](const std::string&, at::Tensor& t) { n += t.numel(); });
  return n;
}

int64_t parameter_count(const Model& model) { return model.parameters; }

std::string weights_name(const Model& model) {
  if (model.weight_format == WeightFormat::Int8) return "int8";
  if (model.weight_format == WeightFormat::Int4) return "int4";
  return model.dtype == at::kBFloat16 ? "bfloat16" : "float32";
}

}  // namespace hs
