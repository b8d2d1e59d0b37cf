// Test probe: runs engine internals on a JSON request (argv[1]) and writes results for pytest to compare
// against Hugging Face references. Modes: logits (optionally with per-row adapters), generate, tokenize, chat,
// event_targets, dequantize, adapter_create, lora_grad, adamw, sample.
#include <fstream>
#include <random>
#include <iostream>
#include <nlohmann/json.hpp>

#include "adapters/lora_weights.h"
#include "adapters/registry.h"
#include "common/error.h"
#include "learning/adamw.h"
#include "learning/distillation.h"
#include "learning/events.h"
#include "learning/lora_gradients.h"
#include "common/fs_util.h"
#include "model/dequantize.h"
#include "model/forward.h"
#include "common/gguf_file.h"
#include "model/load.h"
#include "model/safetensors_file.h"
#include "serving/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;  // keeps the key order of chat messages and tools
using NamedTensors = std::vector<std::pair<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>>;

std::vector<float> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous().cpu();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Batched, chunked prefill with logits at every position, then teacher-forced batched decode of the
// continuation tokens: row i yields logits for prompt_i + continuation_i, one position at a time.
void run_logits(const json& req) {
  auto model = hs::load_model(req.at("model"),
                              hs::LoadOptions{req.value("dtype", "float32"), "cpu", req.value("quantize", "none")});
  auto prompts = req.at("prompts").get<std::vector<std::vector<int32_t>>>();
  auto conts = req.value("continuations", std::vector<std::vector<int64_t>>(prompts.size()));
  const int64_t chunk = req.value("chunk", 1 << 20);
  const int64_t B = prompts.size();
  int64_t longest = 0, capacity = 0;
  size_t longest_cont = 0;
  for (int64_t b = 0; b < B; ++b) {
    longest = std::max<int64_t>(longest, prompts[b].size());
    capacity = std::max<int64_t>(capacity, prompts[b].size() + conts[b].size());
    longest_cont = std::max(longest_cont, conts[b].size());
  }
  // Per-row adapters from a registry folder: "adapters": [name or null, ...], "adapter_scales": [...].
  std::unique_ptr<hs::AdapterRegistry> registry;
  std::vector<std::shared_ptr<const hs::LoraWeights>> held;
  std::vector<const hs::LoraWeights*> row_adapters(B, nullptr);
  std::vector<double> row_scales(B, 1.0);
  if (req.contains("adapters")) {
    registry = std::make_unique<hs::AdapterRegistry>(hs::RegistryOptions{req.at("adapter_dir")}, model);
    for (int64_t b = 0; b < B; ++b) {
      const json& a = req["adapters"][b];
      if (a.is_null()) continue;
      held.push_back(registry->weights(*registry->acquire(a.get<std::string>())));
      row_adapters[b] = held.back().get();
      if (req.contains("adapter_scales")) row_scales[b] = req["adapter_scales"][b].get<double>();
    }
  }
  const hs::LoraBatch lora = hs::make_lora_batch(row_adapters, row_scales, *model);
  const hs::LoraBatch* lora_ptr = lora.slots > 0 ? &lora : nullptr;
  at::InferenceMode guard;
  hs::KvCache cache = hs::make_kv_cache(*model, B, capacity);
  std::vector<std::vector<at::Tensor>> rows(B);
  for (int64_t off = 0; off < longest; off += chunk) {
    hs::BatchStep step = hs::prefill_chunk(prompts, off, chunk, model->device, true);
    at::Tensor out = hs::forward(*model, cache, step, lora_ptr);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = std::clamp<int64_t>(static_cast<int64_t>(prompts[b].size()) - off, 0, out.size(1));
      if (n > 0) rows[b].push_back(out[b].narrow(0, 0, n));
    }
  }
  for (size_t s = 0; s < longest_cont; ++s) {
    std::vector<int64_t> tok(B, 0), start(B), n_new(B, 0);
    for (int64_t b = 0; b < B; ++b) {
      start[b] = prompts[b].size() + std::min(s, conts[b].size());
      if (s < conts[b].size()) {
        tok[b] = conts[b][s];
        n_new[b] = 1;
      }
    }
    at::Tensor out = hs::forward(*model, cache, hs::make_step(tok, 1, start, n_new, model->device), lora_ptr);
    for (int64_t b = 0; b < B; ++b)
      if (n_new[b]) rows[b].push_back(out[b].unsqueeze(0));
  }
  NamedTensors named;
  for (int64_t b = 0; b < B; ++b) {
    at::Tensor all = at::cat(rows[b], 0);
    named.push_back({"logits." + std::to_string(b), {all.sizes().vec(), to_vector(all)}});
  }
  hs::write_safetensors_f32(req.at("out"), named);
}

void run_generate(const json& req) {
  hs::Engine engine = hs::load_engine(hs::EngineOptions{req.at("model"), req.value("dtype", "float32"), "cpu", true,
                                                                      req.value("quantize", "none")});
  std::vector<hs::GenerationRequest> requests;
  for (const auto& p : req.at("prompts")) {
    hs::GenerationRequest r;
    r.prompt = p.get<std::vector<int32_t>>();
    r.sampling.temperature = 0;
    r.sampling.max_tokens = req.value("max_tokens", 32);
    r.sampling.ignore_eos = req.value("ignore_eos", true);
    requests.push_back(r);
  }
  hs::GenerateOptions opts;
  opts.prefill_chunk = req.value("chunk", 512);
  auto results = hs::generate_batch(engine, requests, {}, opts);
  json out = json::array();
  for (const auto& r : results) out.push_back({{"ids", r.ids}, {"finish_reason", r.finish_reason}});
  std::cout << json{{"results", out}}.dump() << "\n";
}

// Encodes "texts" (or takes the id lists of "ids") and decodes them whole and streamed. With "continuation",
// text i is encoded as following earlier text whose last token is "previous"[i] (default: an ordinary token)
// and streamed as following a prompt; "skip_special" skips control tokens when decoding.
void run_tokenize(const json& req) {
  auto tok = hs::load_tokenizer(req.at("model"));
  if (!tok) throw hs::Error(hs::ErrorKind::NotFound, "the model has no tokenizer");
  const bool continuation = req.value("continuation", false), skip_special = req.value("skip_special", false);
  std::vector<std::vector<int32_t>> seqs = req.value("ids", std::vector<std::vector<int32_t>>{});
  const auto texts = req.value("texts", std::vector<std::string>{});
  const auto previous = req.value("previous", std::vector<int32_t>(texts.size(), -1));
  for (size_t i = 0; i < texts.size(); ++i)
    seqs.push_back(continuation ? hs::encode_continuation(*tok, texts[i], previous.at(i))
                                : hs::encode(*tok, texts[i], req.value("add_special_tokens", false)));
  json ids = json::array(), decoded = json::array(), streamed = json::array();
  for (const auto& v : seqs) {
    ids.push_back(v);
    decoded.push_back(hs::decode(*tok, v, skip_special));
    hs::StreamingDetokenizer detok(*tok, skip_special, continuation);
    std::string text;
    for (int32_t id : v) text += detok.push(id);
    streamed.push_back(text + detok.flush());
  }
  std::cout << json{{"ids", ids}, {"decoded", decoded}, {"streamed", streamed}}.dump(
                   -1, ' ', false, json::error_handler_t::replace)
            << "\n";
}

// Renders each of "conversations" with "template" (or the model's own) as transformers' apply_chat_template
// does: "add_generation_prompt", "enable_thinking" and "kwargs" (tools...) as its arguments, "bos_token" and
// "eos_token" as the special tokens; with "history", as the start of a longer conversation. Each conversation
// gives its rendering, or null and the error that refused it.
void run_chat(const ojson& req) {
  hs::ChatTemplate tmpl;
  std::string refused;
  try {
    if (req.contains("template")) {
      tmpl = hs::compile_chat_template(req["template"].get<std::string>(), req.value("bos_token", std::string()),
                                       req.value("eos_token", std::string()));
    } else {
      auto tok = hs::load_tokenizer(req.at("model").get<std::string>());
      if (!tok) throw hs::Error(hs::ErrorKind::NotFound, "the model has no tokenizer");
      tmpl = hs::chat_template_of(*tok);
    }
  } catch (const hs::Error& e) {
    refused = e.what();
  }
  ojson kwargs = req.value("kwargs", ojson::object());
  if (req.contains("enable_thinking")) kwargs["enable_thinking"] = req["enable_thinking"];
  ojson rendered = ojson::array(), errors = ojson::array();
  for (const auto& conv : req.at("conversations")) {
    std::vector<hs::ChatMessage> msgs;
    for (const auto& m : conv) {
      const bool text = m.contains("content") && m["content"].is_string();
      hs::ChatMessage msg{m.at("role").get<std::string>(), text ? m["content"].get<std::string>() : "", m};
      msg.extras.erase("role");
      if (text) msg.extras.erase("content");
      if (!m.contains("content")) msg.extras["content"] = nullptr;  // absent, not empty, as the template sees it
      msgs.push_back(std::move(msg));
    }
    try {
      if (!refused.empty()) throw hs::Error(hs::ErrorKind::Unsupported, refused);
      rendered.push_back(req.value("history", false) ? hs::render_chat_history(tmpl, msgs)
                                                     : hs::render_chat(tmpl, msgs, req.value("add_generation_prompt", true), kwargs));
      errors.push_back(nullptr);
    } catch (const hs::Error& e) {
      rendered.push_back(nullptr);
      errors.push_back(e.what());
    }
  }
  std::cout << ojson{{"rendered", rendered}, {"errors", errors}}.dump(-1, ' ', false, ojson::error_handler_t::replace) << "\n";
}

// Each of "events" (JSON texts) parsed as the trainer parses learning events: its tokens and which are loss
// targets, or the error that refuses it.
void run_event_targets(const json& req) {
  auto tok = hs::load_tokenizer(req.at("model"));
  if (!tok) throw hs::Error(hs::ErrorKind::NotFound, "the model has no tokenizer");
  std::unique_ptr<hs::ChatTemplate> chat;
  if (!tok->chat_template.empty()) chat = std::make_unique<hs::ChatTemplate>(hs::chat_template_of(*tok));
  hs::EventContext ctx;
  ctx.domain = "probe";
  ctx.tokenizer = tok.get();
  ctx.chat = chat.get();
  ctx.context_length = int64_t{1} << 20;
  json out = json::array();
  for (const auto& text : req.at("events")) {
    try {
      const hs::LearningEvent ev = hs::parse_learning_event(text.get<std::string>(), ctx);
      out.push_back({{"tokens", ev.example.tokens}, {"targets", ev.example.is_target}});
    } catch (const hs::Error& e) {
      out.push_back({{"error", e.what()}});
    }
  }
  std::cout << json{{"examples", out}}.dump() << "\n";
}

void run_dequantize(const json& req) {
  hs::GgufFile g = hs::read_gguf(req.at("gguf"));
  NamedTensors named;
  for (const auto& t : g.tensors) {
    std::vector<float> values(t.numel());
    if (!t.data) throw hs::Error(hs::ErrorKind::Unsupported, "tensor type " + hs::ggml_type_name(t.type) + " is not supported");
    hs::dequantize(t.type, t.data, values.data(), t.numel());
    named.push_back({t.name, {std::vector<int64_t>(t.ne.rbegin(), t.ne.rend()), std::move(values)}});
  }
  hs::write_safetensors_f32(req.at("out"), named);
}

// Creates an adapter on a model; with "b_std" > 0 publishes version 2 whose B entries are random too (a fresh
// LoRA has B = 0, which would make any comparison of logits trivial). Prints the pattern.
void run_adapter_create(const json& req) {
  std::shared_ptr<const hs::Model> model = hs::load_model(req.at("model"), hs::LoadOptions{"float32", "cpu", "none"});
  hs::AdapterRegistry registry(hs::RegistryOptions{req.at("adapter_dir")}, model);
  hs::AdapterConfig c;
  c.rank = req.value("rank", 16);
  c.alpha = req.value("alpha", 32.0);
  c.sparsity = req.value("sparsity", 0.99);
  c.seed = req.value("seed", 0);
  if (req.contains("targets")) {
    c.targets.clear();
    for (const auto& t : req["targets"]) c.targets.push_back(hs::parse_lora_module(t.get<std::string>()));
  }
  const std::string name = req.at("name");
  registry.create(name, c);
  auto snap = registry.acquire(name);
  uint64_t version = snap->version.version;
  if (req.value("b_std", 0.0) > 0) {
    std::vector<float> values = snap->image->values();
    std::mt19937_64 rng(c.seed + 1);
    std::normal_distribution<float> normal(0.0f, req["b_std"].get<float>());
    for (const auto& t : snap->image->layout().tensors)
      if (t.is_b)
        for (int64_t i = t.first_tile * hs::kTileValues; i < (t.first_tile + t.num_tiles) * hs::kTileValues; ++i)
          values[i] = normal(rng);
    version = registry.publish(name, values).version;
  }
  json tensors = json::array();
  const hs::TileLayout& layout = snap->image->layout();
  for (const auto& t : layout.tensors) {
    json tiles = json::array();
    for (int64_t k = 0; k < t.num_tiles; ++k) tiles.push_back({layout.tiles[t.first_tile + k].row, layout.tiles[t.first_tile + k].col});
    tensors.push_back({{"layer", t.layer}, {"module", hs::lora_module_name(t.module)}, {"is_b", t.is_b}, {"tiles", tiles}});
  }
  std::cout << json{{"version", version}, {"tensors", tensors}}.dump() << "\n";
}

// Writes per-value data of an adapter (values or gradients) as dense matrices, zero outside the pattern,
// named "layers.L.MODULE.lora_A|B".
void write_dense(const hs::TileLayout& layout, const std::vector<float>& values, const std::string& out) {
  NamedTensors named;
  for (const auto& t : layout.tensors) {
    std::vector<float> dense(t.rows * t.cols, 0.0f);
    hs::scatter_tiles(layout, t, [&](int64_t i) { return values.data() + i * hs::kTileValues; }, dense.data());
    named.push_back({"layers." + std::to_string(t.layer) + "." + hs::lora_module_name(t.module) +
                         (t.is_b ? ".lora_B" : ".lora_A"),
                     {{t.rows, t.cols}, std::move(dense)}});
  }
  hs::write_safetensors_f32(out, named);
}

std::vector<hs::TrainingExample> examples_of(const json& req) {
  std::vector<hs::TrainingExample> batch;
  for (const auto& e : req.at("examples"))
    batch.push_back({e.at("tokens").get<std::vector<int32_t>>(), e.at("targets").get<std::vector<uint8_t>>()});
  return batch;
}

// The distillation term of a request: "anchors" ({tokens, first}) with the base model's top "top_k" as teacher,
// weighted by "distill_weight".
std::vector<hs::TeacherTargets> anchors_of(const hs::Model& model, const json& req) {
  std::vector<hs::TeacherTargets> anchors;
  for (const auto& a : req.value("anchors", json::array()))
    anchors.push_back(hs::teacher_targets_for(model, a.at("tokens").get<std::vector<int32_t>>(),
                                              a.at("first").get<int64_t>(), req.at("top_k").get<int64_t>()));
  return anchors;
}

// Gradients of the causal-LM loss on "examples" ({tokens, targets}), plus the distillation term when "anchors"
// are given, with respect to an adapter's active values, written densely; prints the losses. Optional
// "tokens_per_forward" and "logits_chunk" bound memory.
void run_lora_grad(const json& req) {
  std::shared_ptr<const hs::Model> model = hs::load_model(req.at("model"), hs::LoadOptions{"float32", "cpu", "none"});
  hs::AdapterRegistry registry(hs::RegistryOptions{req.at("adapter_dir")}, model);
  auto snap = registry.acquire(req.at("name"));
  const hs::TileLayout& layout = snap->image->layout();
  hs::GradientOptions options;
  options.tokens_per_forward = req.value("tokens_per_forward", options.tokens_per_forward);
  options.logits_chunk = req.value("logits_chunk", options.logits_chunk);
  const std::vector<hs::TeacherTargets> anchors = anchors_of(*model, req);
  hs::DistillationTerm distill{req.value("distill_weight", 0.0), {}};
  for (const hs::TeacherTargets& t : anchors) distill.anchors.push_back(&t);
  hs::LoraGradients g = hs::lora_gradients(*model, layout, snap->image->values(), snap->config.scale(),
                                           examples_of(req), options, &distill);
  write_dense(layout, g.values, req.at("out"));
  std::cout << json{{"loss", g.loss}, {"kl", g.kl}, {"target_tokens", g.target_tokens}}.dump() << "\n";
}

// "steps" AdamW steps (options "lr", "weight_decay", "betas", "eps") on the gradients of "examples", from an
// adapter's current values; writes the values after the last step densely and prints each step's loss.
void run_adamw(const json& req) {
  std::shared_ptr<const hs::Model> model = hs::load_model(req.at("model"), hs::LoadOptions{"float32", "cpu", "none"});
  hs::AdapterRegistry registry(hs::RegistryOptions{req.at("adapter_dir")}, model);
  auto snap = registry.acquire(req.at("name"));
  const hs::TileLayout& layout = snap->image->layout();
  hs::AdamWOptions o;
  o.lr = req.at("lr");
  o.weight_decay = req.at("weight_decay");
  o.beta1 = req.at("betas")[0];
  o.beta2 = req.at("betas")[1];
  o.eps = req.at("eps");
  hs::AdamWState state;
  std::vector<float> values = snap->image->values();
  std::vector<double> losses;
  for (int s = 0; s < req.at("steps").get<int>(); ++s) {
    hs::LoraGradients g = hs::lora_gradients(*model, layout, values, snap->config.scale(), examples_of(req));
    losses.push_back(g.loss);
    hs::adamw_step(o, state, values, g.values);
  }
  write_dense(layout, values, req.at("out"));
  std::cout << json{{"losses", losses}, {"state_values", state.m.size()}}.dump() << "\n";
}

// One sampling case: "draws" tokens from sample_next on fresh copies of "logits" with "params" and "history"
// (for the repetition penalty), one generator seeded with "seed" as a generation uses it. Returns the count of
// every token id and the logits as the first call left them (the repetition penalty is applied in place).
json sample_case(const json& c) {
  const auto logits = c.at("logits").get<std::vector<float>>();
  const auto history = c.value("history", std::vector<int32_t>{});
  const json& q = c.at("params");
  hs::SamplingParams p;
  p.temperature = q.value("temperature", p.temperature);
  p.top_k = q.value("top_k", p.top_k);
  p.top_p = q.value("top_p", p.top_p);
  p.min_p = q.value("min_p", p.min_p);
  p.repetition_penalty = q.value("repetition_penalty", p.repetition_penalty);
  hs::validate_sampling(p);
  std::mt19937_64 rng(c.at("seed").get<uint64_t>());
  std::vector<int64_t> counts(logits.size(), 0);
  std::vector<float> processed;
  for (int64_t d = 0; d < c.at("draws").get<int64_t>(); ++d) {
    std::vector<float> l = logits;
    counts[hs::sample_next(l, p, history, rng)] += 1;
    if (d == 0) processed = l;
  }
  return {{"counts", counts}, {"processed", processed}};
}

// Every case of "cases" in one process (a process start costs more than the draws).
void run_sample(const json& req) {
  json results = json::array();
  for (const auto& c : req.at("cases")) results.push_back(sample_case(c));
  std::cout << json{{"results", results}}.dump() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: hyprstream-probe REQUEST.json\n";
    return 2;
  }
  try {
    json req = json::parse(hs::read_text_file(argv[1]));
    const std::string mode = req.at("mode");
    if (mode == "logits") run_logits(req);
    else if (mode == "generate") run_generate(req);
    else if (mode == "tokenize") run_tokenize(req);
    else if (mode == "chat") run_chat(ojson::parse(hs::read_text_file(argv[1])));  // keeps key order
    else if (mode == "event_targets") run_event_targets(req);
    else if (mode == "dequantize") run_dequantize(req);
    else if (mode == "adapter_create") run_adapter_create(req);
    else if (mode == "lora_grad") run_lora_grad(req);
    else if (mode == "adamw") run_adamw(req);
    else if (mode == "sample") run_sample(req);
    else throw hs::Error(hs::ErrorKind::InvalidArgument, "unknown mode " + mode);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
