// Engine benchmark: load time, prefill tokens/s, decode tokens/s at several batch sizes, peak RSS.
// Prints one JSON object. Runs on a model file or on random weights of a given configuration.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_common.h"
#include "common/error.h"
#include "model/decode_graphs.h"
#include "serving/row_logits.h"
#include "serving/sampling.h"

namespace {

using nlohmann::json;
using hs::bench::Clock;
using hs::bench::seconds_since;

struct Args {
  hs::bench::ModelArgs model;
  std::vector<int64_t> prompt_lengths{128, 512};
  std::vector<int64_t> batches{1, 8};
  int64_t decode_steps = 32;
  int64_t context = 128;  // tokens in the cache before decode is timed
  int repeats = 3;
  std::string llama_bench;  // path to llama.cpp's llama-bench: run it on the same GGUF as a peer
  bool cuda_graphs = true;  // off: decode eagerly even where graphs are supported
  std::string logits_out;   // writes row 0's decode logits (float32, [steps, vocab]) here, for a parity check
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
  hs::bench::parse_flags(argc, argv, a.model,
                         {{"--prompt-lengths", [&](const std::string& v) { a.prompt_lengths = parse_list(v); }},
                          {"--batches", [&](const std::string& v) { a.batches = parse_list(v); }},
                          {"--decode-steps", [&](const std::string& v) { a.decode_steps = std::stoll(v); }},
                          {"--context", [&](const std::string& v) { a.context = std::stoll(v); }},
                          {"--repeats", [&](const std::string& v) { a.repeats = std::stoi(v); }},
                          {"--llama-bench", [&](const std::string& v) { a.llama_bench = v; }},
                          {"--logits-out", [&](const std::string& v) { a.logits_out = v; }},
                          {"--cuda-graphs", [&](const std::string& v) {
                             if (v != "on" && v != "off")
                               throw hs::Error(hs::ErrorKind::InvalidArgument, "--cuda-graphs takes on or off, not " + v);
                             a.cuda_graphs = v == "on";
                           }}});
  return a;
}

// Best of `repeats` prefill times of one prompt of n tokens, through the serving path (one slot, one row).
double time_prefill(const hs::Model& m, int64_t n, int repeats) {
  at::Tensor tokens = hs::bench::random_tokens(1, n, m.config.vocab_size, m).cpu();
  hs::SlotStep step;
  step.tokens.assign(tokens.data_ptr<int64_t>(), tokens.data_ptr<int64_t>() + n);
  step.row_slot = {0};
  step.row_start = {0};
  step.row_len = {n};
  step.logits_rows = {0};
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up allocators and kernels
    hs::KvCache cache = hs::make_kv_cache(m, 1, n);
    auto t0 = Clock::now();
    hs::forward_slots(m, cache, step).argmax(-1).cpu();
    if (r > 0) best = std::min(best, seconds_since(t0));
  }
  return best;
}

// Row 0's prompt and greedy tokens with its logits at each step written to `path` (float32 [steps, vocab]),
// for bench/gpu/transformers_peer.py to compare with transformers on the same weights.
json dump_decode_logits(const hs::Model& m, int64_t context, int64_t steps, bool graphs, const std::string& path) {
  const hs::bench::DecodeRun run = hs::bench::greedy_decode(m, 1, context, steps, nullptr, graphs, true);
  std::ofstream out(path, std::ios::binary);
  for (const at::Tensor& l : run.logits) out.write(static_cast<const char*>(l.data_ptr()), l.numel() * sizeof(float));
  if (!out) throw hs::Error(hs::ErrorKind::Io, "cannot write " + path);
  std::vector<int64_t> tokens;
  for (const auto& t : run.tokens) tokens.push_back(t[0]);
  return {{"prompt", run.prompt}, {"tokens", tokens}, {"logits_file", path}, {"graphs", graphs},
          {"vocab", m.config.vocab_size}};
}

// A one-row step of `tokens` continuing row r's slot at `start`.
void add_row(hs::SlotStep& s, int64_t r, int64_t start, const std::vector<int64_t>& tokens) {
  s.tokens.insert(s.tokens.end(), tokens.begin(), tokens.end());
  s.row_slot.push_back(r);
  s.row_start.push_back(start);
  s.row_len.push_back(static_cast<int64_t>(tokens.size()));
  s.logits_rows.push_back(r);
}

// Decode of rows of different lengths in one batch (each row reads its own number of keys from its own slot),
// checked against each row's whole sequence prefilled alone (causal attention from position 0, another
// kernel). A row that read another row's keys, or too many or too few, would differ by far more than rounding:
// max_rel_error is the largest |decode - prefill| over the largest |prefill| of a row, at every checked step.
json ragged_decode_check(const hs::Model& m, int64_t rows, int64_t context, int64_t steps, bool graphs) {
  hs::KvCache cache = hs::make_kv_cache(m, rows, context + steps + 1);
  std::unique_ptr<hs::DecodeGraphs> decode_graphs = graphs ? std::make_unique<hs::DecodeGraphs>(m, cache) : nullptr;
  const at::Tensor prompt = hs::bench::random_tokens(rows, context, m.config.vocab_size, m).cpu();
  std::vector<std::vector<int64_t>> seq(rows);
  hs::SlotStep prefill;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t len = std::max<int64_t>(1, context - 9 * r);
    seq[r].assign(prompt[r].data_ptr<int64_t>(), prompt[r].data_ptr<int64_t>() + len);
    add_row(prefill, r, 0, seq[r]);
  }
  at::Tensor logits = hs::forward_slots(m, cache, prefill);
  double worst = 0;
  int64_t agree = 0, checked = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const at::Tensor ids = logits.argmax(-1).cpu();
    hs::SlotStep step;
    for (int64_t r = 0; r < rows; ++r) {
      seq[r].push_back(ids[r].item<int64_t>());
      add_row(step, r, static_cast<int64_t>(seq[r].size()) - 1, {seq[r].back()});
    }
    logits = decode_graphs ? decode_graphs->run(step, nullptr) : hs::forward_slots(m, cache, step);
    if (s % 8 != 7 && s != steps - 1) continue;
    for (int64_t r = 0; r < rows; ++r) {
      hs::KvCache alone = hs::make_kv_cache(m, 1, static_cast<int64_t>(seq[r].size()));
      hs::SlotStep whole;
      add_row(whole, 0, 0, seq[r]);
      const at::Tensor ref = hs::forward_slots(m, alone, whole)[0].cpu();
      const at::Tensor got = logits[r].cpu();
      worst = std::max(worst, ((got - ref).abs().max() / ref.abs().max()).item<double>());
      agree += got.argmax().item<int64_t>() == ref.argmax().item<int64_t>();
      ++checked;
    }
  }
  std::vector<int64_t> lengths;
  for (int64_t r = 0; r < rows; ++r) lengths.push_back(static_cast<int64_t>(seq[r].size()) - steps);
  return {{"rows", rows}, {"prompt_lengths", lengths}, {"steps", steps}, {"graphs", graphs},
          {"checked", checked}, {"argmax_agree", agree}, {"max_rel_error", worst}};
}

// Microseconds per row of sampling under the default parameters (logprob included) on the host: from the whole
// row, as the scheduler did for every row, and from the row reduced to its largest logits (serving/row_logits.h;
// the reduction on this machine's CPU, which on a GPU runs on the device).
json time_host_sampling(int64_t vocab) {
  at::Generator gen = at::detail::createCPUGenerator(7);
  const at::Tensor logits = at::randn({1, vocab}, gen) * 3;
  const hs::SamplingParams p;
  std::mt19937_64 rng(1);
  const std::vector<int32_t> history(64, 1);
  std::vector<double> whole_us, reduced_us;
  for (int r = 0; r < 50; ++r) {
    std::vector<float> row(logits.data_ptr<float>(), logits.data_ptr<float>() + vocab);
    auto t0 = Clock::now();
    const std::vector<float> raw = row;
    volatile float lp = hs::token_logprob(raw, hs::sample_next(row, p, history, rng, history.size()));
    whole_us.push_back(seconds_since(t0) * 1e6);
    t0 = Clock::now();
    hs::RowLogits reduced = hs::fetch_row_logits(logits, {hs::candidates_needed(p)})[0];
    lp = hs::row_logprob(reduced, hs::sample_row(reduced, p, history, rng, history.size()));
    reduced_us.push_back(seconds_since(t0) * 1e6);
    (void)lp;
  }
  std::sort(whole_us.begin(), whole_us.end());
  std::sort(reduced_us.begin(), reduced_us.end());
  return {{"vocab", vocab}, {"whole_row_us_median", whole_us[whole_us.size() / 2]},
          {"reduced_row_us_median", reduced_us[reduced_us.size() / 2]}};
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
  return hs::bench::run([&]() -> nlohmann::json {
    Args a = parse_args(argc, argv);
    at::InferenceMode guard;
    json out;
    out["machine"] = hs::bench::machine_json();
    auto t0 = Clock::now();
    std::string described;
    at::empty({1}).add_(1);  // torch's own start-up memory belongs to the process, not the model
    const double rss_before = hs::bench::current_rss_mb();
    std::shared_ptr<hs::Model> model = hs::bench::load_bench_model(a.model, &described);
    const hs::Model& m = *model;
    out["model"] = described;
    out["load_s"] = seconds_since(t0);
    // What loading the model added to the resident set (weights, maps, tables), against the file's size.
    out["model_rss_mb"] = hs::bench::current_rss_mb() - rss_before;
    out["architecture"] = hs::architecture_name(m.config.arch);
    out["parameters"] = hs::parameter_count(m);
    out["dtype"] = m.dtype == at::kBFloat16 ? "bfloat16" : "float32";
    out["device"] = m.device.str();
    out["weights"] = m.weight_format == hs::WeightFormat::Int8 ? "int8" : m.weight_format == hs::WeightFormat::Int4 ? "int4" : out["dtype"].get<std::string>();
    for (int64_t n : a.prompt_lengths) {
      double s = time_prefill(m, n, a.repeats);
      out["prefill"][std::to_string(n)] = {{"ms", s * 1e3}, {"tokens_per_s", n / s}};
    }
    const bool graphs = a.cuda_graphs && hs::DecodeGraphs::supported(m);
    out["decode_path"] = graphs ? "cuda graphs" : "eager";
    for (int64_t b : a.batches) {
      double s = hs::bench::greedy_decode(m, b, a.context, a.decode_steps, nullptr, graphs).seconds_per_step;
      out["decode"]["batch_" + std::to_string(b)] = {
          {"ms_per_step", s * 1e3}, {"tokens_per_s", b / s}, {"context", a.context}, {"steps", a.decode_steps}};
      if (graphs) out["graph_vs_eager"]["batch_" + std::to_string(b)] = hs::bench::compare_graph_decode(m, b, a.context, a.decode_steps);
    }
    out["ragged_decode"] = ragged_decode_check(m, 8, a.context, 32, graphs);
    if (!a.logits_out.empty()) out["parity"] = dump_decode_logits(m, a.context, a.decode_steps, graphs, a.logits_out);
    out["host_sampling"] = json::array({time_host_sampling(m.config.vocab_size), time_host_sampling(151936)});
    out["peak_rss_mb"] = hs::bench::peak_rss_mb();
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
    return out;
  });
}
