#include "bench_common.h"

#include <sys/resource.h>
#include <unistd.h>

#include <ATen/Parallel.h>

#include <fstream>
#include <iostream>
#include <thread>

#include "common/error.h"
#include "common/fs_util.h"
#include "model/config.h"
#include "serving/engine.h"

namespace hs::bench {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

}  // namespace

int run(const std::function<nlohmann::json()>& body) {
  try {
    std::cout << body().dump(2) << std::endl;
    return 0;
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return e.kind() == ErrorKind::InvalidArgument || e.kind() == ErrorKind::NotFound ? 2 : 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}

nlohmann::json machine_json() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return {{"host", host},
          {"cpu", cpu_model()},
          {"cores", std::thread::hardware_concurrency()},
          {"torch_threads", at::get_num_threads()},
          {"cuda_available", at::hasCUDA()}};
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

void parse_flags(int argc, char** argv, ModelArgs& model, const FlagHandlers& extra) {
  FlagHandlers all = extra;
  all["--model"] = [&](const std::string& v) { model.model = v; };
  all["--random-config"] = [&](const std::string& v) { model.random_config = v; };
  all["--device"] = [&](const std::string& v) { model.device = v; };
  all["--dtype"] = [&](const std::string& v) { model.dtype = v; };
  all["--quantize"] = [&](const std::string& v) { model.quantize = v; };
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto it = all.find(k);
    if (it == all.end()) {
      std::string known;
      for (const auto& [name, fn] : all) known += (known.empty() ? "" : ", ") + name;
      throw Error(ErrorKind::InvalidArgument, "unknown flag " + k + " (" + known + ")");
    }
    if (i + 1 >= argc) throw Error(ErrorKind::InvalidArgument, k + " needs a value");
    it->second(argv[++i]);
  }
}

std::shared_ptr<Model> load_bench_model(const ModelArgs& args, std::string* described) {
  std::shared_ptr<Model> m;
  const LoadOptions options{args.dtype, args.device, args.quantize};
  if (!args.random_config.empty()) {
    ModelConfig c = args.random_config == "qwen3-1.7b" ? qwen3_1_7b_config()
                                                       : parse_hf_config(read_text_file(args.random_config));
    m = make_random_model(c, options, 0);
    *described = args.random_config + " (random weights)";
  } else {
    const std::string path = resolve_model_path(args.model);
    m = load_model(path, options);
    *described = path;
  }
  if (m->device.is_cuda()) at::zeros({1}, at::TensorOptions().device(m->device)).cpu();  // include context creation
  return m;
}

at::Tensor random_tokens(int64_t rows, int64_t n, int64_t vocab, const Model& m) {
  at::Generator gen = at::detail::createCPUGenerator(1234);
  return at::randint(0, vocab, {rows, n}, gen, at::TensorOptions().dtype(at::kLong)).to(m.device);
}

BatchStep step_for(const at::Tensor& tokens, int64_t start, const Model& m) {
  const int64_t rows = tokens.size(0), n = tokens.size(1);
  auto i64 = at::TensorOptions().dtype(at::kLong).device(m.device);
  return BatchStep{tokens, at::full({rows}, start, i64), at::full({rows}, n, i64), start + n, false};
}

double time_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora) {
  KvCache cache = make_kv_cache(m, rows, context + steps + 8);
  at::Tensor logits = forward(m, cache, step_for(random_tokens(rows, context, m.config.vocab_size, m), 0, m), lora);
  at::Tensor next = logits.argmax(-1).view({rows, 1});
  // Two warm-up steps, then the timed ones; greedy tokens stay on the device.
  int64_t pos = context;
  for (int w = 0; w < 2; ++w, ++pos) next = forward(m, cache, step_for(next, pos, m), lora).argmax(-1).view({rows, 1});
  next.cpu();
  auto t0 = Clock::now();
  for (int64_t s = 0; s < steps; ++s, ++pos)
    next = forward(m, cache, step_for(next, pos, m), lora).argmax(-1).view({rows, 1});
  next.cpu();
  return seconds_since(t0) / static_cast<double>(steps);
}

}  // namespace hs::bench
