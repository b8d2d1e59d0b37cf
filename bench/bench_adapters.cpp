// Adapter benchmark: storage size, load time from disk (cold and warm), switching between resident adapters,
// in-place update of all active values, and decode overhead of adapters versus the base model.
// Prints one JSON object.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <random>

#include "adapters/lora_weights.h"
#include "adapters/registry.h"
#include "bench_common.h"
#include "common/error.h"
#include "model/decode_graphs.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"

namespace {

using hs::bench::Clock;
using hs::bench::seconds_since;
using nlohmann::json;

struct Args {
  hs::bench::ModelArgs model;
  int64_t rank = 16;
  double sparsity = 0.99;
  int64_t decode_steps = 32;
  int64_t context = 128;
  int repeats = 5;
};

Args parse_args(int argc, char** argv) {
  Args a;
  hs::bench::parse_flags(argc, argv, a.model,
                         {{"--rank", [&](const std::string& v) { a.rank = std::stoll(v); }},
                          {"--sparsity", [&](const std::string& v) { a.sparsity = std::stod(v); }},
                          {"--decode-steps", [&](const std::string& v) { a.decode_steps = std::stoll(v); }},
                          {"--context", [&](const std::string& v) { a.context = std::stoll(v); }},
                          {"--repeats", [&](const std::string& v) { a.repeats = std::stoi(v); }}});
  return a;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Drops a file's pages from the page cache, so the next read comes from the disk.
void evict_page_cache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

template <typename Fn>
double median_ms(int repeats, Fn fn) {
  std::vector<double> t;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    fn();
    t.push_back(seconds_since(t0) * 1e3);
  }
  return median(t);
}

// Graph replay against eager decode, greedy, with one adapter and with a batch mixing four adapters and rows
// without one.
json graph_vs_eager(const hs::Model& m, const std::vector<std::shared_ptr<const hs::LoraWeights>>& w, int64_t context) {
  const std::vector<const hs::LoraWeights*> one = {w[0].get()};
  const std::vector<const hs::LoraWeights*> mixed = {w[0].get(), w[1].get(), nullptr, w[2].get(),
                                                     w[3].get(), nullptr,  w[0].get(), w[1].get()};
  const hs::LoraBatch one_batch = hs::make_lora_batch(one, {1.0}, m);
  const hs::LoraBatch mixed_batch = hs::make_lora_batch(mixed, std::vector<double>(mixed.size(), 1.0), m);
  return {{"batch_1_one_adapter", hs::bench::compare_graph_decode(m, 1, context, 64, &one_batch)},
          {"batch_8_mixed_adapters", hs::bench::compare_graph_decode(m, 8, context, 64, &mixed_batch)}};
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  return hs::bench::run([&]() -> nlohmann::json {
    Args a = parse_args(argc, argv);
    json out;
    out["machine"] = hs::bench::machine_json();
    std::string described;
    std::shared_ptr<hs::Model> model = hs::bench::load_bench_model(a.model, &described);
    const hs::Model& m = *model;
    out["model"] = described;
    out["device"] = m.device.str();
    out["dtype"] = m.dtype == at::kBFloat16 ? "bfloat16" : "float32";

    const std::string dir = (fs::temp_directory_path() / ("hs-bench-adapters-" + std::to_string(::getpid()))).string();
    fs::create_directories(dir);
    hs::RegistryOptions opts{dir};
    opts.keep_versions = 2;
    hs::AdapterRegistry registry(opts, model);
    hs::AdapterConfig cfg;
    cfg.rank = a.rank;
    cfg.sparsity = a.sparsity;
    std::vector<std::string> names;
    for (int i = 0; i < 4; ++i) {
      cfg.seed = static_cast<uint64_t>(i);
      names.push_back("bench" + std::to_string(i));
      registry.create(names.back(), cfg);
      // Random B too, so the adapters do real work in the forward (a fresh LoRA has B = 0).
      auto snap = registry.acquire(names.back());
      std::vector<float> v = snap->image->values();
      std::mt19937_64 rng(i);
      std::normal_distribution<float> n(0.0f, 0.01f);
      for (auto& x : v) x = n(rng);
      registry.publish(names.back(), v);
    }

    // Storage.
    auto snap = registry.acquire(names[0]);
    const hs::TileLayout& layout = snap->image->layout();
    const double dense_bytes = static_cast<double>(layout.dense_values()) * 4;
    out["adapter"] = {{"rank", a.rank},
                      {"sparsity", a.sparsity},
                      {"active_values", layout.num_values()},
                      {"dense_values", layout.dense_values()},
                      {"density", static_cast<double>(layout.num_values()) / layout.dense_values()},
                      {"dense_fp32_bytes", dense_bytes},
                      {"resident_image_bytes", snap->image->image_bytes()}};
    for (hs::AdapterCodec codec : {hs::AdapterCodec::None, hs::AdapterCodec::Zip, hs::AdapterCodec::Blosc}) {
      if (!hs::adapter_codec_available(codec)) continue;
      const std::string path = dir + "/codec." + hs::adapter_codec_name(codec);
      const double write_ms = median_ms(a.repeats, [&] { snap->image->write(path, codec); });
      const double bytes = static_cast<double>(fs::file_size(path));
      const double cold = median_ms(a.repeats, [&] {
        evict_page_cache(path);
        hs::AdapterImage::open(path);
      });
      const double warm = median_ms(a.repeats, [&] { hs::AdapterImage::open(path); });
      out["storage"][hs::adapter_codec_name(codec)] = {{"file_bytes", bytes},
                                                       {"ratio_vs_dense_fp32", dense_bytes / bytes},
                                                       {"write_ms", write_ms},
                                                       {"load_cold_ms", cold},
                                                       {"load_warm_ms", warm}};
    }

    // Registry paths: from disk into a fresh registry, a resident hit, dense tensors built, a hot hit.
    {
      const std::string file = dir + "/" + names[1] + "/" + registry.manifest(names[1]).versions.back().file;
      std::vector<double> disk, hit, build, hot;
      for (int r = 0; r < a.repeats; ++r) {
        hs::AdapterRegistry fresh(opts, model);
        evict_page_cache(file);
        auto t0 = Clock::now();
        auto s = fresh.acquire(names[1]);
        disk.push_back(seconds_since(t0) * 1e3);
        t0 = Clock::now();
        fresh.acquire(names[1]);
        hit.push_back(seconds_since(t0) * 1e6);
        t0 = Clock::now();
        auto w = fresh.weights(*s);
        if (m.device.is_cuda()) w->a[0][0].sum().cpu();
        build.push_back(seconds_since(t0) * 1e3);
        t0 = Clock::now();
        fresh.weights(*s);
        hot.push_back(seconds_since(t0) * 1e6);
      }
      out["registry"] = {{"acquire_from_disk_cold_ms", median(disk)}, {"acquire_resident_us", median(hit)},
                         {"dense_build_ms", median(build)},      {"weights_hot_us", median(hot)},
                         {"hot_bytes_per_adapter", registry.weights(*registry.acquire(names[1]))->bytes}};
    }

    // Switching the adapter of a request between two resident, hot adapters: acquire the snapshot and take
    // its tensors; then stacking them for a batch (once per batch, not per step).
    {
      for (const auto& n : names) registry.weights(*registry.acquire(n));
      const int switches = 1000;
      std::vector<std::shared_ptr<const hs::LoraWeights>> picked;
      auto t0 = Clock::now();
      for (int i = 0; i < switches; ++i) picked.push_back(registry.weights(*registry.acquire(names[i % 2])));
      const double switch_us = seconds_since(t0) * 1e6 / switches;
      t0 = Clock::now();
      for (int i = 0; i < switches / 10; ++i) hs::make_lora_batch({picked[i].get()}, {1.0}, m);
      const double one_us = seconds_since(t0) * 1e6 / (switches / 10);
      t0 = Clock::now();
      for (int i = 0; i < switches / 10; ++i)
        hs::make_lora_batch({picked[0].get(), picked[1].get(), picked[0].get(), picked[1].get()}, {1, 1, 1, 1}, m);
      const double mixed_ms = seconds_since(t0) * 1e3 / (switches / 10);
      out["switch"] = {{"acquire_and_weights_us", switch_us},
                       {"batch_of_one_adapter_us", one_us},
                       {"batch_of_two_adapters_ms", mixed_ms}};
    }

    // In-place update of every active value: into a writable copy (with the CRC refresh), and the whole
    // publish (write, fsync, rename, manifest).
    {
      auto copy = snap->image->clone();
      std::vector<float> v = snap->image->values();
      for (auto& x : v) x *= 1.01f;
      out["update"] = {{"set_values_ms", median_ms(a.repeats, [&] { copy->set_values(v.data()); })},
                       {"clone_and_set_values_ms", median_ms(a.repeats, [&] { snap->image->clone()->set_values(v.data()); })},
                       {"publish_ms", median_ms(a.repeats, [&] { registry.publish(names[0], v); })}};
    }

    // Decode overhead (--decode-steps 0 skips it, e.g. for storage figures of a model too slow to decode).
    if (a.decode_steps > 0) {
      at::InferenceMode guard;
      std::vector<std::shared_ptr<const hs::LoraWeights>> w;
      for (const auto& n : names) w.push_back(registry.weights(*registry.acquire(n)));
      // The configurations run interleaved, best of `repeats` each: this VM's neighbours add noise that a
      // median over consecutive runs of one configuration does not cancel.
      const std::vector<std::vector<const hs::LoraWeights*>> configs = {
          {nullptr}, {w[0].get()}, {nullptr, nullptr, nullptr, nullptr},
          {w[0].get(), w[0].get(), w[0].get(), w[0].get()}, {w[0].get(), w[1].get(), w[2].get(), w[3].get()}};
      std::vector<hs::LoraBatch> batches;
      for (const auto& c : configs) batches.push_back(hs::make_lora_batch(c, std::vector<double>(c.size(), 1.0), m));
      std::vector<double> best(configs.size(), 1e30);
      for (int r = 0; r < a.repeats; ++r)
        for (size_t i = 0; i < configs.size(); ++i) {
          const hs::LoraBatch* lb = batches[i].slots ? &batches[i] : nullptr;
          best[i] = std::min(best[i], hs::bench::time_decode(m, configs[i].size(), a.context, a.decode_steps, lb) * 1e3);
        }
      const double b1 = best[0], b1a = best[1], b4 = best[2], b4same = best[3], b4mixed = best[4];
      auto pct = [](double x, double base) { return 100.0 * (x - base) / base; };
      out["decode"] = {{"context", a.context},
                       {"steps", a.decode_steps},
                       {"batch_1_no_adapter_ms", b1},
                       {"batch_1_one_adapter_ms", b1a},
                       {"batch_1_overhead_pct", pct(b1a, b1)},
                       {"batch_4_no_adapter_ms", b4},
                       {"batch_4_same_adapter_ms", b4same},
                       {"batch_4_same_adapter_overhead_pct", pct(b4same, b4)},
                       {"batch_4_four_adapters_ms", b4mixed},
                       {"batch_4_four_adapters_overhead_pct", pct(b4mixed, b4)}};
      if (hs::DecodeGraphs::supported(m)) out["graph_vs_eager"] = graph_vs_eager(m, w, a.context);
    }
    out["peak_rss_mb"] = hs::bench::peak_rss_mb();
    hs::remove_tree(dir);
    return out;
  });
}
