#include "adapters/fingerprint.h"

#include <cstdio>

#include "model/model.h"

namespace hs {

namespace {

struct Fnv1a {
  uint64_t h = 14695981039346656037ULL;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  void i64(int64_t v) { bytes(&v, sizeof(v)); }
  void tensor(const at::Tensor& t) {
    at::Tensor c = t.to(at::kFloat).to(at::kBFloat16).cpu().contiguous();
    bytes(c.data_ptr(), c.numel() * c.element_size());
  }
};

}  // namespace

std::string model_fingerprint(const Model& model) {
  const ModelConfig& c = model.config;
  Fnv1a f;
  std::string arch = architecture_name(c.arch);
  f.bytes(arch.data(), arch.size());
  for (int64_t v : {c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim,
                    c.vocab_size, static_cast<int64_t>(c.tie_word_embeddings)})
    f.i64(v);
  const ModelWeights& w = model.weights;
  f.tensor(w.final_norm);
  if (!w.layers.empty()) {
    f.tensor(w.layers[0].attn_norm);
    f.tensor(w.layers[0].ffn_norm);
  }
  f.tensor(w.embed_head);  // the same rows in every weight format
  char buf[32];
  std::snprintf(buf, sizeof(buf), "hs1-%016llx", static_cast<unsigned long long>(f.h));
  return buf;
}

}  // namespace hs
