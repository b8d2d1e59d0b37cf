#include "model/load.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>

#include <ATen/Parallel.h>

#include "common/error.h"
#include "common/fs_util.h"
#include "model/config.h"
#include "model/dequantize.h"
#include "model/forward.h"
#include "model/int4_weights.h"
#include "common/gguf_file.h"
#include "model/model.h"
#include "model/safetensors_file.h"

namespace hs {

namespace {

namespace fs = std::filesystem;

// Produces a weight by Hugging Face name and expected shape, already in the model's dtype and device; an
// undefined tensor when the file lacks it. File sources ignore the shape; take() checks it afterwards.
using WeightSource = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

at::Tensor take(const WeightSource& src, const std::string& name, std::vector<int64_t> shape, bool required) {
  at::Tensor t = src(name, shape);
  if (!t.defined()) {
    if (required) throw Error(ErrorKind::CorruptFile, "the model file lacks the tensor '" + name + "'");
    return t;
  }
  if (t.sizes() != at::IntArrayRef(shape))
    throw Error(ErrorKind::CorruptFile, "tensor '" + name + "' has shape " + shape_str(t.sizes()) + ", expected " +
                                            shape_str(shape) + " from the model configuration");
  return t;
}

ModelWeights build_weights(const ModelConfig& c, const WeightSource& src) {
  const int64_t h = c.hidden_size, q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  const int64_t ff = c.intermediate_size;
  ModelWeights w;
  w.embed = take(src, "model.embed_tokens.weight", {c.vocab_size, h}, true);
  w.final_norm = take(src, "model.norm.weight", {h}, true);
  w.lm_head.weight = take(src, "lm_head.weight", {c.vocab_size, h}, !c.tie_word_embeddings);
  if (!w.lm_head.weight.defined()) {
    w.lm_head.weight = w.embed;
    w.lm_head_tied = true;
  }
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool has_bias, bool bias_required) {
    Linear lin;
    lin.weight = take(src, name + ".weight", {out, in}, true);
    if (has_bias) lin.bias = take(src, name + ".bias", {out}, bias_required);
    return lin;
  };
  const bool qk_norm = c.arch == Architecture::Qwen3;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    l.attn_norm = take(src, p + "input_layernorm.weight", {h}, true);
    l.q = linear(p + "self_attn.q_proj", q_out, h, c.qkv_bias, true);
    l.k = linear(p + "self_attn.k_proj", kv_out, h, c.qkv_bias, true);
    l.v = linear(p + "self_attn.v_proj", kv_out, h, c.qkv_bias, true);
    l.o = linear(p + "self_attn.o_proj", h, q_out, c.o_bias, true);
    if (qk_norm) {
      l.q_norm = take(src, p + "self_attn.q_norm.weight", {c.head_dim}, true);
      l.k_norm = take(src, p + "self_attn.k_norm.weight", {c.head_dim}, true);
    }
    l.ffn_norm = take(src, p + "post_attention_layernorm.weight", {h}, true);
    l.gate = linear(p + "mlp.gate_proj", ff, h, c.mlp_bias, true);
    l.up = linear(p + "mlp.up_proj", ff, h, c.mlp_bias, true);
    l.down = linear(p + "mlp.down_proj", h, ff, c.mlp_bias, true);
    w.layers.push_back(std::move(l));
  }
  return w;
}

// Weight-only int8, symmetric per output row: the decode step then reads a byte per weight.
void quantize_int8_linear(Linear& lin) {
  at::Tensor f = lin.weight.to(at::kFloat);
  at::Tensor scale = (f.abs().amax(1) / 127.0).clamp_min(1e-12);
  lin.q8 = at::round(f / scale.unsqueeze(1)).clamp(-127, 127).to(at::kChar).contiguous();
  lin.q8_scale = scale.to(at::kBFloat16);
  lin.weight = at::Tensor();
}

void quantize_int8(ModelWeights& w) { for_each_linear(w, quantize_int8_linear); }

// One projection of the parts' rows, each part becoming a view of its rows (see LayerWeights::qkv).
Linear fuse(const std::vector<Linear*>& parts) {
  Linear fused;
  auto cat = [&](at::Tensor Linear::*field) {
    if (!(parts[0]->*field).defined()) return;
    std::vector<at::Tensor> rows;
    for (const Linear* p : parts) rows.push_back(p->*field);
    fused.*field = at::cat(rows, 0);
    int64_t first = 0;
    for (Linear* p : parts) {
      const int64_t n = (p->*field).size(0);
      p->*field = (fused.*field).narrow(0, first, n);
      first += n;
    }
  };
  for (at::Tensor Linear::*field : {&Linear::weight, &Linear::bias, &Linear::q8, &Linear::q8_scale}) cat(field);
  return fused;
}

void fuse_projections(ModelWeights& w, const ModelConfig& c) {
  for (LayerWeights& l : w.layers) {
    l.qkv = fuse({&l.q, &l.k, &l.v});
    l.gate_up = fuse({&l.gate, &l.up});
    if (l.q_norm.defined())
      l.qk_norm = at::cat({l.q_norm.expand({c.num_heads, c.head_dim}), l.k_norm.expand({c.num_kv_heads, c.head_dim})});
  }
}

// A GGUF projection's own 4-bit codes by Hugging Face name; undefined codes when the file stores it otherwise.
using Int4Source = std::function<Int4Codes(const std::string& name)>;

// 4-bit projections (model/int4_weights.h): each part of a fused projection takes its own codes from the GGUF
// where the file stores it in a 4-bit type, and is quantized from its float weight otherwise (codes are per row,
// so the parts' codes concatenate exactly). The float weights and their views go.
void quantize_int4_projections(ModelWeights& w, const Int4Source& source, int64_t layers) {
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& l = w.layers[i];
    const std::pair<Linear*, std::vector<std::pair<Linear*, std::string>>> fused[] = {
        {&l.qkv, {{&l.q, "self_attn.q_proj"}, {&l.k, "self_attn.k_proj"}, {&l.v, "self_attn.v_proj"}}},
        {&l.o, {{&l.o, "self_attn.o_proj"}}},
        {&l.gate_up, {{&l.gate, "mlp.gate_proj"}, {&l.up, "mlp.up_proj"}}},
        {&l.down, {{&l.down, "mlp.down_proj"}}}};
    for (const auto& [lin, parts] : fused) {
      if (!int4_kernel_fits(lin->weight.size(0), lin->weight.size(1))) continue;  // stays dense
      std::vector<Int4Codes> codes;
      for (const auto& [part, name] : parts) {
        Int4Codes c = source ? source(p + name + ".weight") : Int4Codes{};
        codes.push_back(c.codes.defined() ? c : quantize_int4(part->weight));
      }
      set_int4(*lin, codes.size() == 1 ? codes[0] : cat_int4(codes));
      for (const auto& part : parts) part.first->weight = at::Tensor();
    }
  }
}

// A GGUF tensor's own block rows by Hugging Face name; undefined rows when ggml has no dot product for its type.
using RowsSource = std::function<GgmlRows(const std::string& name)>;

// The vocabulary projection of an int4 model (and, tied, the embedding table, whose rows it then serves): in
// ggml's block rows where the build has ggml, the GGUF's own where the file quantizes the table and Q8_0
// otherwise; in int8 without ggml.
void quantize_vocab(ModelWeights& w, const RowsSource& source) {
  Linear& head = w.lm_head;
  if (ggml_available() && head.weight.size(1) % 32 == 0) {
    if (source) head.rows = source(w.lm_head_tied ? "model.embed_tokens.weight" : "lm_head.weight");
    if (!head.rows.defined()) head.rows = ggml_rows_q8_0(head.weight);
    head.weight = at::Tensor();
  } else {
    quantize_int8_linear(head);
  }
  if (w.lm_head_tied) w.embed = at::Tensor();
}

// The model's weights from a source, in the form it computes with (projections fused; int8 or int4 when asked
// for, int4 taking a GGUF's own 4-bit codes from `int4_source` and its vocabulary rows from `rows_source`).
void set_weights(Model& m, const WeightSource& src, const Int4Source& int4_source = nullptr,
                 const RowsSource& rows_source = nullptr) {
  m.weights = build_weights(m.config, src);
  m.parameters = count_parameters(m.weights);
  m.weights.embed_head =
      m.weights.embed.narrow(0, 0, std::min<int64_t>(kEmbedHeadRows, m.weights.embed.size(0))).clone();
  if (m.weight_format == WeightFormat::Int8) quantize_int8(m.weights);
  fuse_projections(m.weights, m.config);
  if (m.weight_format == WeightFormat::Int4) {
    quantize_int4_projections(m.weights, int4_source, m.config.num_layers);
    quantize_vocab(m.weights, rows_source);
  }
  // The fused copies replace views into the maps: their pages need not stay resident (they are read again
  // from the file if a view still needs them).
  std::set<const MappedFile*> files;
  for (const auto& f : m.files)
    if (files.insert(f.get()).second) f->drop_resident_pages();
  // The float weights that quantization or fusion replaced were freed into malloc's heap; give the pages back
  // (measured: 420 MB of the default model's resident set in int4 without it).
  malloc_trim(0);
  build_rope_tables(m);
}

at::Device parse_device(const std::string& s) {
  try {
    at::Device d(s);
    if (d.is_cuda() && !at::hasCUDA())
      throw Error(ErrorKind::InvalidArgument, "device '" + s + "' requested but no CUDA device is available");
    if (!d.is_cpu() && !d.is_cuda()) throw Error(ErrorKind::Unsupported, "device '" + s + "' is not supported");
    return d;
  } catch (const c10::Error&) {
    throw Error(ErrorKind::InvalidArgument, "'" + s + "' is not a device (expected cpu, cuda or cuda:N)");
  }
}

at::ScalarType parse_dtype(const std::string& s, const at::Device& device) {
  if (s == "auto") return device.is_cuda() ? at::kBFloat16 : at::kFloat;
  if (s == "float32" || s == "fp32" || s == "f32") return at::kFloat;
  if (s == "bfloat16" || s == "bf16") return at::kBFloat16;
  throw Error(ErrorKind::InvalidArgument, "dtype '" + s + "' is not supported (auto, float32, bfloat16)");
}

// A view into mapped bytes when they already have the wanted dtype and device, a converted copy otherwise.
at::Tensor materialize(const uint8_t* data, at::ScalarType file_dtype, at::IntArrayRef shape, const Model& m) {
  at::Tensor view = at::from_blob(const_cast<uint8_t*>(data), shape, at::TensorOptions().dtype(file_dtype));
  if (file_dtype == m.dtype && m.device.is_cpu()) return view;
  return view.to(m.device, m.dtype, /*non_blocking=*/false, /*copy=*/true);
}

at::ScalarType safetensors_dtype(const std::string& name, const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  throw Error(ErrorKind::Unsupported, "tensor '" + name + "' has dtype " + dtype + "; supported: F32, F16, BF16");
}

std::shared_ptr<Model> load_hf_folder(const std::string& dir, std::shared_ptr<Model> m) {
  fs::path config_path = fs::path(dir) / "config.json";
  if (!fs::exists(config_path)) throw Error(ErrorKind::NotFound, "'" + dir + "' has no config.json");
  m->config = parse_hf_config(read_text_file(config_path.string()));
  m->format = "safetensors";
  SafetensorsTensors tensors = read_safetensors_folder(dir);
  for (auto& [name, e] : tensors) m->files.push_back(e.file);
  WeightSource src = [&](const std::string& name, const std::vector<int64_t>&) -> at::Tensor {
    auto it = tensors.find(name);
    if (it == tensors.end()) return {};
    return materialize(it->second.data, safetensors_dtype(name, it->second.dtype), it->second.shape, *m);
  };
  set_weights(*m, src);
  return m;
}

Architecture gguf_architecture(const std::string& arch) {
  if (arch == "llama") return Architecture::Llama;  // llama.cpp converts Mistral checkpoints to "llama" too
  if (arch == "qwen2") return Architecture::Qwen2;
  if (arch == "qwen3") return Architecture::Qwen3;
  throw Error(ErrorKind::Unsupported,
              "GGUF architecture '" + arch + "' is not supported; supported architectures: llama, qwen2, qwen3");
}

// llama.cpp keys that change attention in ways read_gguf_rope does not model: a file that sets them is refused
// rather than run with the wrong positions. Their neutral values (what llama.cpp assumes when absent) pass.
void refuse_unread_rope_keys(const GgufFile& g, const std::string& p, const ModelConfig& c) {
  const std::pair<const char*, std::vector<double>> neutral[] = {
      {"rope.scaling.attn_factor", {1.0}},      {"rope.scaling.yarn_attn_factor", {1.0}},
      {"rope.scaling.yarn_ext_factor", {-1.0, 1.0}}, {"rope.scaling.yarn_log_multiplier", {0.0}}};
  for (const auto& [key, values] : neutral) {
    if (!g.has(p + key)) continue;
    const double v = g.get_float(p + key, 0.0);
    if (std::find(values.begin(), values.end(), v) == values.end())
      throw Error(ErrorKind::Unsupported,
                  "GGUF metadata '" + p + key + "' = " + std::to_string(v) + " is not supported");
  }
  if (g.has(p + "attention.sliding_window"))
    throw Error(ErrorKind::Unsupported, "GGUF metadata '" + p + "attention.sliding_window' is not supported: "
                                        "sliding-window models load from a Hugging Face folder");
  if (g.get_int(p + "rope.dimension_count", c.head_dim) != c.head_dim)
    throw Error(ErrorKind::Unsupported, "GGUF metadata '" + p + "rope.dimension_count' below the head size "
                                        "(partial rotary embeddings) is not supported");
}

// llama.cpp's rope metadata: linear and YaRN scaling by factor, and llama3-style frequency divisors stored as
// the tensor rope_freqs.weight (one per dimension pair).
void read_gguf_rope(const GgufFile& g, const std::string& p, ModelConfig& c) {
  c.rope_theta = g.get_float(p + "rope.freq_base", 10000.0);
  const std::string type = g.get_string(p + "rope.scaling.type", "none");
  RopeScaling& s = c.rope_scaling;
  if (type == "linear" || type == "yarn") {
    s.type = type == "linear" ? RopeScalingType::Linear : RopeScalingType::Yarn;
    s.factor = g.get_float(p + "rope.scaling.factor", 1.0);
    s.original_context = g.get_int(p + "rope.scaling.original_context_length", c.context_length);
    s.beta_fast = g.get_float(p + "rope.scaling.yarn_beta_fast", 32.0);
    s.beta_slow = g.get_float(p + "rope.scaling.yarn_beta_slow", 1.0);
    s.attention_factor = yarn_mscale(s.factor);
  } else if (type != "none") {
    throw Error(ErrorKind::Unsupported, "GGUF rope scaling '" + type + "' is not supported (none, linear, yarn)");
  }
  refuse_unread_rope_keys(g, p, c);
  const GgufTensorInfo* freqs = g.find_tensor("rope_freqs.weight");
  if (!freqs) return;
  if (freqs->type != static_cast<uint32_t>(GgmlType::F32) || freqs->numel() != c.head_dim / 2 || !freqs->data)
    throw Error(ErrorKind::Unsupported, "rope_freqs.weight must hold head_dim / 2 F32 frequency factors");
  const float* f = reinterpret_cast<const float*>(freqs->data);
  s.freq_factors.assign(f, f + freqs->numel());
}

ModelConfig config_from_gguf(const GgufFile& g) {
  const std::string arch = g.get_string("general.architecture");
  ModelConfig c;
  c.arch = gguf_architecture(arch);
  const std::string p = arch + ".";
  c.hidden_size = g.get_int(p + "embedding_length");
  c.intermediate_size = g.get_int(p + "feed_forward_length");
  c.num_layers = g.get_int(p + "block_count");
  c.num_heads = g.get_int(p + "attention.head_count");
  c.num_kv_heads = g.get_int(p + "attention.head_count_kv", c.num_heads);
  c.head_dim = g.get_int(p + "attention.key_length", c.num_heads ? c.hidden_size / c.num_heads : 0);
  c.context_length = g.get_int(p + "context_length");
  c.rms_norm_eps = g.get_float(p + "attention.layer_norm_rms_epsilon", 1e-5);
  const GgufTensorInfo* embd = g.find_tensor("token_embd.weight");
  if (!embd || embd->ne.size() != 2) throw Error(ErrorKind::CorruptFile, "GGUF file lacks token_embd.weight");
  c.vocab_size = g.get_int(p + "vocab_size", embd->ne[1]);
  c.tie_word_embeddings = g.find_tensor("output.weight") == nullptr;
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = g.find_tensor("blk.0.attn_output.bias") != nullptr;
  read_gguf_rope(g, p, c);
  validate_config(c);
  return c;
}

std::string gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},        {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},          {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},     {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},              {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},         {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},     {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},           {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  size_t dot = hf.find('.', prefix.size());
  std::string index = hf.substr(prefix.size(), dot - prefix.size());
  std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kLayer)
    if (rest == from) return "blk." + index + "." + to;
  return "";
}

// llama.cpp's converter permutes Llama q/k rows so that its interleaved RoPE applies; undo it so the
// Hugging Face rotate-half RoPE in forward.cpp is right for both formats.
// Biases are permuted as their rows are.
at::Tensor unpermute_rope_rows(const at::Tensor& w, int64_t n_heads) {
  std::vector<int64_t> split = {n_heads, w.size(0) / n_heads / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) split.push_back(w.size(d));
  return w.reshape(split).transpose(1, 2).reshape(w.sizes()).contiguous();
}

std::shared_ptr<Model> load_gguf(const GgufFile& g, std::shared_ptr<Model> m) {
  m->config = config_from_gguf(g);
  m->format = "gguf";
  m->files.push_back(g.file);
  WeightSource src = [&](const std::string& hf, const std::vector<int64_t>&) -> at::Tensor {
    const GgufTensorInfo* t = g.find_tensor(gguf_name(hf));
    if (!t) return {};
    std::vector<int64_t> shape(t->ne.rbegin(), t->ne.rend());
    if (!t->data)
      throw Error(ErrorKind::Unsupported, "tensor '" + t->name + "' has type " + ggml_type_name(t->type) +
                                              ", which is not supported (supported: " + supported_ggml_types() + ")");
    at::Tensor out;
    if (t->type == static_cast<uint32_t>(GgmlType::F32)) {
      out = materialize(t->data, at::kFloat, shape, *m);
    } else if (t->type == static_cast<uint32_t>(GgmlType::BF16)) {
      out = materialize(t->data, at::kBFloat16, shape, *m);
    } else {
      at::Tensor f = at::empty(shape, at::kFloat);
      dequantize(t->type, t->data, f.data_ptr<float>(), t->numel());
      out = f.to(m->device, m->dtype);
    }
    if (m->config.arch == Architecture::Llama) {
      if (hf.find("q_proj") != std::string::npos) out = unpermute_rope_rows(out, m->config.num_heads);
      if (hf.find("k_proj") != std::string::npos) out = unpermute_rope_rows(out, m->config.num_kv_heads);
    }
    return out;
  };
  Int4Source int4_source = [&](const std::string& hf) -> Int4Codes {
    const GgufTensorInfo* t = g.find_tensor(gguf_name(hf));
    if (!t || t->ne.size() != 2 || !t->data) return {};
    Int4Codes c = int4_from_gguf(t->type, t->data, static_cast<int64_t>(t->ne[1]), static_cast<int64_t>(t->ne[0]));
    if (c.codes.defined() && m->config.arch == Architecture::Llama) {
      const bool q = hf.find("q_proj") != std::string::npos, k = hf.find("k_proj") != std::string::npos;
      if (q || k) {
        const int64_t heads = q ? m->config.num_heads : m->config.num_kv_heads;
        c = {unpermute_rope_rows(c.codes, heads), unpermute_rope_rows(c.scale, heads), unpermute_rope_rows(c.zero, heads)};
      }
    }
    return c;
  };
  RowsSource rows_source = [&](const std::string& hf) -> GgmlRows {
    const GgufTensorInfo* t = g.find_tensor(gguf_name(hf));
    if (!t || t->ne.size() != 2 || !t->data) return {};
    return ggml_rows_from_gguf(t->type, t->data, static_cast<int64_t>(t->ne[1]), static_cast<int64_t>(t->ne[0]));
  };
  set_weights(*m, src, int4_source, rows_source);
  return m;
}

// Throws for a path that is not a regular file (a FIFO would otherwise block the read forever).
bool has_gguf_magic(const std::string& path) {
  const int fd = open_regular_file(path);
  char magic[4] = {};
  const ssize_t n = ::read(fd, magic, 4);
  ::close(fd);
  return n == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

// Setting the intra-op thread count explicitly also configures MKL's pool; left implicit, MKL and OpenMP
// threads contend and CPU matmuls run about 10x slower on a 2-core machine (measured with bench/).
void init_cpu_threads() {
  static std::once_flag once;
  std::call_once(once, [] { at::set_num_threads(at::get_num_threads()); });
}

std::shared_ptr<Model> new_model(const LoadOptions& options, const std::string& source) {
  init_cpu_threads();
  auto m = std::make_shared<Model>();
  m->device = parse_device(options.device);
  m->dtype = parse_dtype(options.dtype, m->device);
  m->source = source;
  if (options.quantize == "int8" || options.quantize == "int4") {
    // The quantized matmul kernels are torch's CPU kernels.
    if (!m->device.is_cpu())
      throw Error(ErrorKind::Unsupported, "--quantize " + options.quantize + " is implemented for the cpu device only");
    m->weight_format = options.quantize == "int8" ? WeightFormat::Int8 : WeightFormat::Int4;
  } else if (options.quantize != "none" && options.quantize != "auto") {
    throw Error(ErrorKind::InvalidArgument,
                "quantize '" + options.quantize + "' is not supported (auto, none, int8, int4)");
  }
  return m;
}

bool is_layer_projection(const std::string& gguf_name) {
  static const char* kSuffixes[] = {".attn_q.weight",      ".attn_k.weight",   ".attn_v.weight", ".attn_output.weight",
                                    ".ffn_gate.weight",    ".ffn_up.weight",   ".ffn_down.weight"};
  if (gguf_name.rfind("blk.", 0) != 0) return false;
  for (const char* suffix : kSuffixes) {
    const size_t n = std::strlen(suffix);
    if (gguf_name.size() > n && gguf_name.compare(gguf_name.size() - n, n, suffix) == 0) return true;
  }
  return false;
}

// --quantize auto: on the CPU in float32, a GGUF whose layer projections are mostly (by elements) in a 4-bit
// type that int4 takes as it is (Q4_0, Q4_1, Q4_K) computes from those codes, near to how llama.cpp computes
// from the file (which would keep a Q4_K_M file's Q6_K layers in 6 bits; int4 requantizes them): 7x faster
// decoding than dequantized float32 on the default model. Anything else (a float or 5-8-bit file, a GPU,
// bfloat16, a CPU where int4 models could not learn) stays dense.
void resolve_auto_quantize(Model& m, const LoadOptions& options, const GgufFile& g) {
  if (options.quantize != "auto" || !m.device.is_cpu() || m.dtype != at::kFloat || !int4_gradients_supported())
    return;
  int64_t four_bit = 0, all = 0;
  for (const GgufTensorInfo& t : g.tensors) {
    if (!is_layer_projection(t.name)) continue;
    const auto type = static_cast<GgmlType>(t.type);
    all += t.numel();
    if (type == GgmlType::Q4_0 || type == GgmlType::Q4_1 || type == GgmlType::Q4_K) four_bit += t.numel();
  }
  if (all > 0 && 2 * four_bit >= all) m.weight_format = WeightFormat::Int4;
}

}  // namespace

std::shared_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  auto m = new_model(options, path);
  if (fs::is_directory(path)) {
    load_hf_folder(path, m);
  } else if (!fs::exists(path)) {
    throw Error(ErrorKind::NotFound, "model '" + path + "' does not exist");
  } else if (is_gguf_path(path)) {
    const GgufFile g = read_gguf(path);
    resolve_auto_quantize(*m, options, g);
    load_gguf(g, m);
  } else {
    throw Error(ErrorKind::Unsupported, "'" + path + "' is neither a Hugging Face model folder nor a GGUF file");
  }
  return m;
}

std::shared_ptr<Model> load_model(const GgufFile& gguf, const LoadOptions& options) {
  auto m = new_model(options, gguf.file->path());
  resolve_auto_quantize(*m, options, gguf);
  return load_gguf(gguf, m);
}

bool is_gguf_path(const std::string& path) {
  return !fs::is_directory(path) && (fs::path(path).extension() == ".gguf" || has_gguf_magic(path));
}

std::shared_ptr<Model> make_random_model(const ModelConfig& config, const LoadOptions& options, uint64_t seed) {
  validate_config(config);
  auto m = new_model(options, "random");
  m->config = config;
  m->format = "random";
  at::Generator gen = at::detail::createCPUGenerator(seed);
  WeightSource random_src = [&](const std::string& name, const std::vector<int64_t>& shape) -> at::Tensor {
    if (name == "lm_head.weight" && config.tie_word_embeddings) return {};
    const bool norm = name.size() >= 11 && name.compare(name.size() - 11, 11, "norm.weight") == 0;
    at::Tensor t = norm ? at::ones(shape, at::kFloat) : at::normal(0.0, 0.02, shape, gen, at::TensorOptions().dtype(at::kFloat));
    return t.to(m->device, m->dtype);
  };
  set_weights(*m, random_src);
  return m;
}

}  // namespace hs
