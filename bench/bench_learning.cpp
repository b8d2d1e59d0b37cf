// Online learning benchmark: per-update latency and sustained rate of sparse gradient submissions through
// the domain pipeline (log, AdamW, publish), training throughput on text examples, and learn-to-serve
// latency (event acknowledged -> first generated token that uses it). Prints one JSON object.
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "adapters/lora_weights.h"
#include "adapters/registry.h"
#include "bench_common.h"
#include "common/error.h"
#include "common/percentile.h"
#include "learning/trainer.h"
#include "serving/engine.h"
#include "serving/generate.h"
#include "storage/adapter_image.h"
#include "storage/atomic_file.h"
#include "tokenizer/tokenizer.h"

namespace {

using hs::bench::Clock;
using hs::bench::seconds_since;
using nlohmann::json;

struct Args {
  hs::bench::ModelArgs model;
  int64_t submissions = 2000;  // for the sustained rate
  int64_t singles = 200;       // one submission per update, for the latency distribution
  int64_t entries = 1000;      // gradient entries per submission
  int64_t train_batches = 3;   // 32 examples of 64 tokens each; 0 skips training
  int64_t serve = 20;          // learn-to-serve measurements; 0 skips them
  std::string fsync = "always";
};

// Waits for a trainer's callbacks.
struct Progress {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t durable = 0, applied = 0, version = 0;
  Clock::time_point durable_at, applied_at;
  hs::TrainerCallbacks callbacks() {
    hs::TrainerCallbacks cb;
    cb.on_durable = [this](const std::vector<std::string>& ids, uint64_t) {
      std::lock_guard<std::mutex> l(mu);
      durable += ids.size();
      durable_at = Clock::now();
      cv.notify_all();
    };
    cb.on_applied = [this](const hs::BatchReport& r) {
      std::lock_guard<std::mutex> l(mu);
      applied += r.ids.size();
      version = r.version;
      applied_at = Clock::now();
      cv.notify_all();
    };
    return cb;
  }
  // Until n events are applied and durable (with fsync batch the acknowledgement may come second).
  void wait_applied(uint64_t n) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return applied >= n && durable >= n; });
  }
};

// A gradient submission of `entries` random coordinates inside the pattern.
std::string submission(const hs::TileLayout& layout, const std::string& id, int64_t entries, std::mt19937_64& rng) {
  json parts = json::array();
  std::uniform_int_distribution<size_t> pick(0, layout.tensors.size() - 1);
  std::normal_distribution<float> value(0.0f, 1e-3f);
  for (int64_t done = 0; done < entries;) {
    const hs::LoraTensorInfo& t = layout.tensors[pick(rng)];
    json list = json::array();
    for (int k = 0; k < 64 && done < entries; ++k, ++done) {
      const hs::TilePos tile = layout.tiles[static_cast<size_t>(t.first_tile) + rng() % static_cast<size_t>(t.num_tiles)];
      list.push_back({tile.row * 8 + static_cast<int>(rng() % 8), tile.col * 8 + static_cast<int>(rng() % 8), value(rng)});
    }
    parts.push_back({{"layer", t.layer}, {"module", hs::lora_module_name(t.module)}, {"matrix", t.is_b ? "B" : "A"},
                     {"entries", list}});
  }
  return json{{"id", id}, {"type", "gradient"}, {"base_version", 1}, {"gradients", parts}}.dump();
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  return hs::bench::run([&]() -> json {
    Args a;
    hs::bench::parse_flags(argc, argv, a.model,
                           {{"--submissions", [&](const std::string& v) { a.submissions = std::stoll(v); }},
                            {"--singles", [&](const std::string& v) { a.singles = std::stoll(v); }},
                            {"--entries", [&](const std::string& v) { a.entries = std::stoll(v); }},
                            {"--train-batches", [&](const std::string& v) { a.train_batches = std::stoll(v); }},
                            {"--serve", [&](const std::string& v) { a.serve = std::stoll(v); }},
                            {"--fsync", [&](const std::string& v) { a.fsync = v; }}});
    json out;
    out["machine"] = hs::bench::machine_json();
    std::string described;
    std::shared_ptr<hs::Model> model = hs::bench::load_bench_model(a.model, &described);
    out["model"] = described;
    out["device"] = model->device.str();
    out["dtype"] = model->dtype == at::kBFloat16 ? "bfloat16" : "float32";
    // Text events need the real tokenizer; random-weight models get an empty one (gradient events only).
    std::shared_ptr<const hs::Tokenizer> tok;
    if (a.model.random_config.empty()) tok = hs::load_tokenizer(hs::resolve_model_path(a.model.model));
    if (!tok) tok = std::make_shared<hs::Tokenizer>();

    const std::string dir = (fs::temp_directory_path() / ("hs-bench-learning-" + std::to_string(::getpid()))).string();
    fs::create_directories(dir);
    hs::RegistryOptions ropts{dir};
    hs::AdapterRegistry registry(ropts, model);
    hs::TrainerOptions base;
    base.max_staleness = uint64_t{1} << 40;  // submissions name version 1 as their base throughout
    base.fsync = hs::parse_fsync_policy(a.fsync);
    base.checkpoint_every = 1000000;
    registry.create("grad", base.create);
    const hs::TileLayout layout = registry.acquire("grad")->image->layout();
    out["adapter"] = {{"active_values", layout.num_values()}, {"dense_values", layout.dense_values()},
                      {"entries_per_submission", a.entries}, {"fsync", a.fsync}};
    std::mt19937_64 rng(1);

    {  // One submission per update: the latency of a single update, publish included.
      hs::TrainerOptions o = base;
      o.batch_events = 1;
      o.batch_ms = 0;
      Progress p;
      hs::DomainTrainer t(registry, model, tok, "grad", o, p.callbacks());
      std::vector<double> ack_ms, applied_ms;
      for (int64_t i = 0; i < a.singles; ++i) {
        const std::string ev = submission(layout, "s" + std::to_string(i), a.entries, rng);
        const auto t0 = Clock::now();
        t.submit(ev);
        p.wait_applied(static_cast<uint64_t>(i + 1));
        std::lock_guard<std::mutex> l(p.mu);
        ack_ms.push_back(std::chrono::duration<double, std::milli>(p.durable_at - t0).count());
        applied_ms.push_back(std::chrono::duration<double, std::milli>(p.applied_at - t0).count());
      }
      const hs::TrainerStats s = t.stats();
      out["single_updates"] = {{"count", a.singles},
                               {"update_ms_p50", s.update_ms_p50},
                               {"update_ms_p99", s.update_ms_p99},
                               {"submit_to_ack_ms_p50", hs::percentile(ack_ms, 0.5)},
                               {"submit_to_ack_ms_p99", hs::percentile(ack_ms, 0.99)},
                               {"submit_to_applied_ms_p50", hs::percentile(applied_ms, 0.5)},
                               {"submit_to_applied_ms_p99", hs::percentile(applied_ms, 0.99)}};
    }
    {  // As fast as a client can submit, with the default micro-batching (32 events / 100 ms).
      std::vector<std::string> events;
      for (int64_t i = 0; i < a.submissions; ++i) events.push_back(submission(layout, "b" + std::to_string(i), a.entries, rng));
      Progress p;
      hs::DomainTrainer t(registry, model, tok, "grad", base, p.callbacks());
      const auto t0 = Clock::now();
      for (const std::string& ev : events) {
        while (true) {
          try {
            t.submit(ev);
            break;
          } catch (const hs::Error& e) {
            if (e.kind() != hs::ErrorKind::Busy) throw;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
          }
        }
      }
      t.flush();
      const double secs = seconds_since(t0);
      const hs::TrainerStats s = t.stats();
      out["sustained_submissions"] = {{"count", a.submissions},
                                      {"seconds", secs},
                                      {"per_second", static_cast<double>(a.submissions) / secs},
                                      {"batches", s.totals.batches},
                                      {"update_ms_p50", s.update_ms_p50},
                                      {"update_ms_p99", s.update_ms_p99},
                                      {"busy_retries", s.busy}};
    }
    if (a.train_batches > 0 && tok->vocab_size() > 0) {  // 32 text examples of 64 tokens per micro-batch
      std::vector<std::string> words = {"river", "stone", "garden", "silver", "quiet", "morning", "engine", "letter",
                                        "window", "forest", "bright", "market", "harbor", "winter", "paper", "music"};
      std::vector<std::string> events;
      for (int64_t i = 0; i < a.train_batches * 32; ++i) {
        std::string text;
        while (static_cast<int64_t>(hs::encode(*tok, text, true).size()) < 64) {
          if (!text.empty()) text += ' ';
          text += words[rng() % words.size()];
        }
        events.push_back(json{{"id", "t" + std::to_string(i)}, {"text", text}}.dump());
      }
      hs::TrainerOptions o = base;
      o.deterministic = true;  // full batches of 32
      Progress p;
      hs::DomainTrainer t(registry, model, tok, "text", o, p.callbacks());
      const auto t0 = Clock::now();
      for (const std::string& ev : events) t.submit(ev);
      t.flush();
      const double secs = seconds_since(t0);
      const hs::TrainerStats s = t.stats();
      out["training"] = {{"examples", events.size()},
                         {"tokens_per_example", 64},
                         {"target_tokens", s.totals.tokens_trained},
                         {"seconds", secs},
                         {"target_tokens_per_second", static_cast<double>(s.totals.tokens_trained) / secs},
                         {"tokens_per_second", static_cast<double>(events.size() * 64) / secs},
                         {"batch_ms_p50", s.update_ms_p50}};
    }
    if (a.serve > 0) {  // event acknowledged -> the first token generated with the version that applied it
      hs::Engine engine;
      engine.model = model;
      engine.tokenizer = tok;
      hs::TrainerOptions o = base;
      o.batch_events = 1;
      o.batch_ms = 0;
      Progress p;
      hs::DomainTrainer t(registry, model, tok, "grad", o, p.callbacks());
      std::vector<double> total_ms, apply_ms, swap_ms;
      std::vector<int32_t> prompt(16);
      for (auto& id : prompt) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(model->config.vocab_size));
      for (int64_t i = 0; i < a.serve; ++i) {
        t.submit(submission(layout, "v" + std::to_string(i), a.entries, rng));
        p.wait_applied(static_cast<uint64_t>(i + 1));
        Clock::time_point acked;
        uint64_t version;
        {
          std::lock_guard<std::mutex> l(p.mu);
          acked = p.durable_at;
          version = p.version;
          apply_ms.push_back(std::chrono::duration<double, std::milli>(p.applied_at - p.durable_at).count());
        }
        const auto s0 = Clock::now();
        hs::GenerationRequest req;
        req.prompt = prompt;
        req.sampling.temperature = 0;
        req.sampling.max_tokens = 1;
        req.adapter = registry.weights(*registry.acquire("grad"));
        if (req.adapter->version != version) throw hs::Error(hs::ErrorKind::Internal, "served a stale version");
        swap_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - s0).count());
        hs::generate(engine, req);
        total_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - acked).count());
      }
      out["learn_to_serve"] = {{"count", a.serve},
                               {"ack_to_applied_ms_p50", hs::percentile(apply_ms, 0.5)},
                               {"acquire_and_dense_build_ms_p50", hs::percentile(swap_ms, 0.5)},
                               {"ack_to_first_token_ms_p50", hs::percentile(total_ms, 0.5)},
                               {"ack_to_first_token_ms_p99", hs::percentile(total_ms, 0.99)}};
    }
    hs::remove_tree(dir);
    out["peak_rss_mb"] = hs::bench::peak_rss_mb();
    return out;
  });
}
