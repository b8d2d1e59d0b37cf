#include "model/model.h"

namespace hs {

void for_each_weight(ModelWeights& w, const std::function<void(const std::string&, at::Tensor&)>& fn) {
  auto visit = [&](const std::string& name, at::Tensor& t) {
    if (t.defined()) fn(name, t);
  };
  visit("model.embed_tokens.weight", w.embed);
  visit("model.norm.weight", w.final_norm);
  if (!w.lm_head.is_same(w.embed)) visit("lm_head.weight", w.lm_head);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    visit(p + "input_layernorm.weight", l.attn_norm);
    visit(p + "self_attn.q_proj.weight", l.wq);
    visit(p + "self_attn.k_proj.weight", l.wk);
    visit(p + "self_attn.v_proj.weight", l.wv);
    visit(p + "self_attn.o_proj.weight", l.wo);
    visit(p + "self_attn.q_proj.bias", l.bq);
    visit(p + "self_attn.k_proj.bias", l.bk);
    visit(p + "self_attn.v_proj.bias", l.bv);
    visit(p + "self_attn.o_proj.bias", l.bo);
    visit(p + "self_attn.q_norm.weight", l.q_norm);
    visit(p + "self_attn.k_norm.weight", l.k_norm);
    visit(p + "post_attention_layernorm.weight", l.ffn_norm);
    visit(p + "mlp.gate_proj.weight", l.w_gate);
    visit(p + "mlp.up_proj.weight", l.w_up);
    visit(p + "mlp.down_proj.weight", l.w_down);
    visit(p + "mlp.gate_proj.bias", l.b_gate);
    visit(p + "mlp.up_proj.bias", l.b_up);
    visit(p + "mlp.down_proj.bias", l.b_down);
  }
}

int64_t parameter_count(const Model& model) {
  int64_t n = 0;
  for_each_weight(const_cast<ModelWeights&>(model.weights), [&](const std::string&, at::Tensor& t) { n += t.numel(); });
  return n;
}

}  // namespace hs
