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
#include "model/decode_graphs.h"
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

double current_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      double kb = 0;
      status >> kb;
      return kb / 1024.0;
    }
    status.ignore(1 << 20, '\n');
  }
  return 0;
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

namespace {

// The batch's per-row scales [rows, 1, K] as a token-major step needs them, [1, rows * per_row, K].
LoraBatch per_token(const LoraBatch& lora, int64_t per_row) {
  LoraBatch out = lora;
  if (!lora.uniform && lora.row_scale.defined()) {
    const at::Tensor& s = lora.row_scale;
    out.row_scale = s.expand({s.size(0), per_row, s.size(2)}).reshape({1, -1, s.size(2)});
  }
  return out;
}

SlotStep rows_step(const std::vector<std::vector<int64_t>>& tokens, int64_t start) {
  SlotStep s;
  for (size_t r = 0; r < tokens.size(); ++r) {
    s.tokens.insert(s.tokens.end(), tokens[r].begin(), tokens[r].end());
    s.row_slot.push_back(static_cast<int64_t>(r));
    s.row_start.push_back(start);
    s.row_len.push_back(static_cast<int64_t>(tokens[r].size()));
    s.logits_rows.push_back(static_cast<int64_t>(r));
  }
  return s;
}

}  // namespace

DecodeRun greedy_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora,
                        bool graphs, bool keep_logits) {
  KvCache cache = make_kv_cache(m, rows, context + steps + 8);
  std::unique_ptr<DecodeGraphs> decode_graphs = graphs ? std::make_unique<DecodeGraphs>(m, cache) : nullptr;
  const at::Tensor prompt = random_tokens(rows, context, m.config.vocab_size, m).cpu();
  std::vector<std::vector<int64_t>> rows_tokens(rows);
  for (int64_t r = 0; r < rows; ++r) rows_tokens[r].assign(prompt[r].data_ptr<int64_t>(), prompt[r].data_ptr<int64_t>() + context);
  const LoraBatch prefill_lora = lora ? per_token(*lora, context) : LoraBatch{};
  const LoraBatch decode_lora = lora ? per_token(*lora, 1) : LoraBatch{};
  DecodeRun run;
  run.prompt = rows_tokens[0];
  at::Tensor logits = forward_slots(m, cache, rows_step(rows_tokens, 0), lora ? &prefill_lora : nullptr);
  int64_t pos = context;
  auto decode_one = [&] {
    if (keep_logits) run.logits.push_back(logits[0].cpu());
    const at::Tensor ids = logits.argmax(-1).cpu();  // the host sees token ids only
    run.tokens.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + rows);
    for (int64_t r = 0; r < rows; ++r) rows_tokens[r] = {run.tokens.back()[r]};
    const SlotStep step = rows_step(rows_tokens, pos++);
    const LoraBatch* l = lora ? &decode_lora : nullptr;
    logits = decode_graphs ? decode_graphs->run(step, l) : forward_slots(m, cache, step, l);
  };
  for (int w = 0; w < 2; ++w) decode_one();  // the first captures the bucket's graph
  logits.argmax(-1).cpu();
  auto t0 = Clock::now();
  for (int64_t s = 0; s < steps; ++s) decode_one();
  logits.argmax(-1).cpu();
  run.seconds_per_step = seconds_since(t0) / static_cast<double>(steps);
  run.graph_captures = decode_graphs ? decode_graphs->captures() : 0;
  return run;
}

double time_decode(const Model& m, int64_t rows, int64_t context, int64_t steps, const LoraBatch* lora) {
  return greedy_decode(m, rows, context, steps, lora, DecodeGraphs::supported(m)).seconds_per_step;
}

nlohmann::json compare_graph_decode(const Model& m, int64_t rows, int64_t context, int64_t steps,
                                    const LoraBatch* lora) {
  const DecodeRun eager = greedy_decode(m, rows, context, steps, lora, false);
  const DecodeRun graph = greedy_decode(m, rows, context, steps, lora, true);
  int64_t first = -1;
  for (size_t s = 0; s < eager.tokens.size() && first < 0; ++s)
    if (eager.tokens[s] != graph.tokens[s]) first = static_cast<int64_t>(s);
  return {{"rows", rows}, {"steps", eager.tokens.size()}, {"same", first < 0}, {"first_difference", first},
          {"eager_ms_per_step", eager.seconds_per_step * 1e3}, {"graph_ms_per_step", graph.seconds_per_step * 1e3},
          {"graph_captures", graph.graph_captures}};
}

}  // namespace hs::bench
