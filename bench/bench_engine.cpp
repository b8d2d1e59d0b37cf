// Engine benchmark: load time, prefill tokens/s, decode tokens/s at several batch sizes, peak RSS.
// Prints one JSON object. Runs on a model file or on random weights of a given configuration.
#include <sys/resource.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/error.h"
#include "common/fs_util.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/load.h"
#include "serving/engine.h"

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The Qwen3-1.7B shape (Qwen/Qwen3-1.7B config.json), for benchmarking with random weights.
hs::ModelConfig qwen3_1_7b() {
  hs::ModelConfig c;
  c.arch = hs::Architecture::Qwen3;
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

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

struct Args {
  std::string model = "default";
  std::string random_config;  // "qwen3-1.7b" or a config.json path
  std::string device = "cpu";
  std::string dtype = "auto";
  std::string quantize = "none";
  std::vector<int64_t> prompt_lengths{128, 512};
  std::vector<int64_t> batches{1, 8};
  int64_t decode_steps = 32;
  int64_t context = 128;  // tokens in the cache before decode is timed
  int repeats = 3;
  std::string llama_bench;  // path to llama.cpp's llama-bench: run it on the same GGUF as a peer
};

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    out.push_back(std::stoll(s.substr(pos, comma - pos)));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw hs::Error(hs::ErrorKind::InvalidArgument, k + " needs a value");
      return argv[++i];
    };
    if (k == "--model") a.model = value();
    else if (k == "--random-config") a.random_config = value();
    else if (k == "--device") a.device = value();
    else if (k == "--dtype") a.dtype = value();
    else if (k == "--quantize") a.quantize = value();
    else if (k == "--prompt-lengths") a.prompt_lengths = parse_list(value());
    else if (k == "--batches") a.batches = parse_list(value());
    else if (k == "--decode-steps") a.decode_steps = std::stoll(value());
    else if (k == "--context") a.context = std::stoll(value());
    else if (k == "--repeats") a.repeats = std::stoi(value());
    else if (k == "--llama-bench") a.llama_bench = value();
    else
      throw hs::Error(hs::ErrorKind::InvalidArgument,
                      "unknown flag " + k +
                          " (--model, --random-config, --device, --dtype, --quantize, --prompt-lengths, --batches, "
                          "--decode-steps, --context, --repeats, --llama-bench)");
  }
  return a;
}

at::Tensor random_tokens(int64_t rows, int64_t n, int64_t vocab, const hs::Model& m) {
  at::Generator gen = at::detail::createCPUGenerator(1234);
  return at::randint(0, vocab, {rows, n}, gen, at::TensorOptions().dtype(at::kLong)).to(m.device);
}

hs::BatchStep step_for(const at::Tensor& tokens, int64_t start, const hs::Model& m) {
  const int64_t rows = tokens.size(0), n = tokens.size(1);
  auto i64 = at::TensorOptions().dtype(at::kLong).device(m.device);
  return hs::BatchStep{tokens, at::full({rows}, start, i64), at::full({rows}, n, i64), start + n, false};
}

// Best of `repeats` prefill times of one prompt of n tokens.
double time_prefill(const hs::Model& m, int64_t n, int repeats) {
  at::Tensor tokens = random_tokens(1, n, m.config.vocab_size, m);
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up allocators and kernels
    hs::KvCache cache = hs::make_kv_cache(m, 1, n);
    auto t0 = Clock::now();
    at::Tensor logits = hs::forward(m, cache, step_for(tokens, 0, m));
    logits.argmax(-1).cpu();
    if (r > 0) best = std::min(best, seconds_since(t0));
  }
  return best;
}

// Seconds per decode step at `rows` sequences that each hold `context` tokens.
double time_decode(const hs::Model& m, int64_t rows, int64_t context, int64_t steps) {
  hs::KvCache cache = hs::make_kv_cache(m, rows, context + steps + 8);
  at::Tensor logits = hs::forward(m, cache, step_for(random_tokens(rows, context, m.config.vocab_size, m), 0, m));
  at::Tensor next = logits.argmax(-1).view({rows, 1});
  // Two warm-up steps, then the timed ones; greedy tokens stay on the device.
  int64_t pos = context;
  for (int w = 0; w < 2; ++w, ++pos) next = hs::forward(m, cache, step_for(next, pos, m)).argmax(-1).view({rows, 1});
  next.cpu();
  auto t0 = Clock::now();
  for (int64_t s = 0; s < steps; ++s, ++pos) next = hs::forward(m, cache, step_for(next, pos, m)).argmax(-1).view({rows, 1});
  next.cpu();
  return seconds_since(t0) / static_cast<double>(steps);
}

// Runs llama.cpp's llama-bench on the same GGUF with the same thread count and returns tokens/s per test
// ("pp128", "pp512", "tg<steps>"), as its JSON output reports them.
json run_llama_bench(const Args& a, const std::string& gguf, int threads) {
  std::string prompts;
  for (int64_t n : a.prompt_lengths) prompts += (prompts.empty() ? "" : ",") + std::to_string(n);
  std::string cmd = "'" + a.llama_bench + "' -m '" + gguf + "' -t " + std::to_string(threads) + " -p " + prompts +
                    " -n " + std::to_string(a.decode_steps) + " -r " + std::to_string(a.repeats) + " -o json 2>/dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) throw hs::Error(hs::ErrorKind::NotFound, "cannot run " + a.llama_bench);
  std::string text;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) text.append(buf, n);
  if (pclose(pipe) != 0) throw hs::Error(hs::ErrorKind::Internal, "llama-bench failed: " + cmd);
  json out;
  for (const auto& r : json::parse(text)) {
    const int64_t p = r.value("n_prompt", 0), g = r.value("n_gen", 0);
    out[p > 0 ? "pp" + std::to_string(p) : "tg" + std::to_string(g)] = r.value("avg_ts", 0.0);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse_args(argc, argv);
    at::InferenceMode guard;
    json out;
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    out["machine"] = {{"host", host},
                      {"cpu", cpu_model()},
                      {"cores", std::thread::hardware_concurrency()},
                      {"torch_threads", at::get_num_threads()},
                      {"cuda_available", at::hasCUDA()}};
    auto t0 = Clock::now();
    std::shared_ptr<hs::Model> model;
    hs::LoadOptions lo{a.dtype, a.device, a.quantize};
    if (!a.random_config.empty()) {
      hs::ModelConfig c = a.random_config == "qwen3-1.7b" ? qwen3_1_7b()
                                                          : hs::parse_hf_config(hs::read_text_file(a.random_config));
      model = hs::make_random_model(c, lo, 0);
      out["model"] = a.random_config + " (random weights)";
    } else {
      std::string path = hs::resolve_model_path(a.model);
      model = hs::load_model(path, lo);
      out["model"] = path;
    }
    const hs::Model& m = *model;
    if (m.device.is_cuda()) at::zeros({1}, at::TensorOptions().device(m.device)).cpu();  // include context creation
    out["load_s"] = seconds_since(t0);
    out["architecture"] = hs::architecture_name(m.config.arch);
    out["parameters"] = hs::parameter_count(m);
    out["dtype"] = m.dtype == at::kBFloat16 ? "bfloat16" : "float32";
    out["device"] = m.device.str();
    out["weights"] = m.int8_weights ? "int8" : out["dtype"];
    for (int64_t n : a.prompt_lengths) {
      double s = time_prefill(m, n, a.repeats);
      out["prefill"][std::to_string(n)] = {{"ms", s * 1e3}, {"tokens_per_s", n / s}};
    }
    for (int64_t b : a.batches) {
      double s = time_decode(m, b, a.context, a.decode_steps);
      out["decode"]["batch_" + std::to_string(b)] = {
          {"ms_per_step", s * 1e3}, {"tokens_per_s", b / s}, {"context", a.context}, {"steps", a.decode_steps}};
    }
    out["peak_rss_mb"] = peak_rss_mb();
    if (!a.llama_bench.empty()) {
      if (m.format != "gguf") throw hs::Error(hs::ErrorKind::InvalidArgument, "--llama-bench needs a GGUF model");
      json peer = run_llama_bench(a, m.source, at::get_num_threads());
      out["llama_cpp"] = peer;
      for (int64_t n : a.prompt_lengths)
        if (peer.contains("pp" + std::to_string(n)))
          out["ratio_vs_llama_cpp"]["prefill_" + std::to_string(n)] =
              out["prefill"][std::to_string(n)]["tokens_per_s"].get<double>() / peer["pp" + std::to_string(n)].get<double>();
      if (peer.contains("tg" + std::to_string(a.decode_steps)) && out["decode"].contains("batch_1"))
        out["ratio_vs_llama_cpp"]["decode_batch_1"] = out["decode"]["batch_1"]["tokens_per_s"].get<double>() /
                                                       peer["tg" + std::to_string(a.decode_steps)].get<double>();
    }
    std::cout << out.dump(2) << std::endl;
    return 0;
  } catch (const hs::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
