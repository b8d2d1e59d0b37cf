// `train`: streams learning events from a JSONL file or stdin through a domain's online learning pipeline.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "adapters/registry.h"
#include "api/server/views.h"
#include "cli/commands.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/utf8.h"
#include "learning/trainer.h"
#include "serving/engine.h"

namespace hs::cli {

namespace {

// Non-empty lines of a UTF-8 text file.
std::vector<std::string> read_prompt_lines(const std::string& path) {
  // read_text_file refuses FIFOs and folders rather than blocking on them.
  std::istringstream in(read_text_file(path));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (!utf8_is_valid(line)) throw Error(ErrorKind::InvalidArgument, "'" + path + "' is not valid UTF-8 text");
    lines.push_back(line);
  }
  if (lines.empty()) throw Error(ErrorKind::InvalidArgument, "'" + path + "' holds no prompt");
  return lines;
}

}  // namespace

void add_learning_flags(CLI::App* s, TrainFlags& t) {
  s->add_option("--lr", t.lr, "AdamW learning rate")->capture_default_str();
  s->add_option("--steps-per-batch", t.steps, "AdamW steps on each micro-batch at most (see --stop-loss)")
      ->capture_default_str();
  s->add_option("--stop-loss", t.stop_loss,
                "A micro-batch's steps stop once its examples' mean loss is this low (0: always every step)")
      ->capture_default_str();
  s->add_option("--distill-weight", t.distill_weight,
                "Weight of the KL term that keeps answers to general prompts as the base model's (0: off)")
      ->capture_default_str();
  s->add_option("--anchors-per-step", t.anchors_per_step, "General prompts in each step's KL term")
      ->capture_default_str();
  s->add_option("--rehearse-per-step", t.rehearse_per_step,
                "Examples taught by earlier micro-batches added to each step's loss, so new facts do not overwrite "
                "old ones (0: off)")
      ->capture_default_str();
  s->add_option("--rehearsal-examples", t.rehearsal_examples,
                "Taught examples kept for rehearsal at most (a uniform sample of all taught)")
      ->capture_default_str();
  s->add_option("--scope-layers", t.scope_layers,
                "Relevance scope: the adapter answers only prompts near those it was taught, compared on the base "
                "model's hidden states after this many layers; others get the base model (0: it answers every prompt)")
      ->capture_default_str();
  s->add_option("--max-drift", t.max_drift,
                "Publication guard: a version whose canary answers drift more than this (mean KL, nats) from the "
                "base model's is refused (0: no guard)")
      ->capture_default_str();
  s->add_option("--canaries", t.canaries,
                "File of the domain's own canary prompts, one per line, checked with the built-in ones (kept in the "
                "domain's training folder for later runs)");
  s->add_option("--weight-decay", t.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  s->add_option("--max-grad-norm", t.max_grad_norm, "Clip each step's gradient to this global norm (0: off)")
      ->capture_default_str();
  s->add_option("--batch-events", t.batch_events, "Events per micro-batch at most")->capture_default_str();
  s->add_option("--batch-ms", t.batch_ms, "A micro-batch closes this long after its oldest event")->capture_default_str();
  s->add_option("--queue", t.queue, "Events waiting at most; beyond it submissions get 'busy, retry'")
      ->capture_default_str();
  s->add_option("--dp-noise", t.dp_noise, "Differential privacy: Gaussian noise multiplier (0: off)")
      ->capture_default_str();
  s->add_option("--dp-clip", t.dp_clip, "Differential privacy: per-example gradient norm bound")->capture_default_str();
  s->add_option("--dp-delta", t.dp_delta, "Differential privacy: the delta epsilon is reported at")->capture_default_str();
  s->add_option("--fsync", t.fsync, "always: each micro-batch is on disk before it is acknowledged; batch: group "
                                    "commit, one sync shared by the micro-batches logged while the last one ran; "
                                    "never: the OS decides (survives a killed process, not a power loss)")
      ->capture_default_str();
  s->add_option("--checkpoint-every", t.checkpoint_every, "Batches between checkpoints (the log is compacted then)")
      ->capture_default_str();
  s->add_option("--max-example-tokens", t.max_example_tokens,
                "Longest example accepted, in tokens, checked before it is acknowledged (0: the model's context)")
      ->capture_default_str();
  s->add_option("--max-staleness", t.max_staleness,
                "A gradient submission's base version may be this many versions behind the current one")
      ->capture_default_str();
  s->add_flag("--deterministic", t.deterministic,
              "Close batches only when full (or at the end), so the same events give a bit-identical adapter");
  s->add_option("--train-seed", t.seed,
                "Seed of the privacy noise and of the rehearsal memory's sample (keep it for bit-identical replays)")
      ->capture_default_str();
  s->add_option("--rank", t.rank, "Rank of a new domain adapter")->capture_default_str();
  s->add_option("--alpha", t.alpha, "Alpha of a new domain adapter")->capture_default_str();
  s->add_option("--sparsity", t.sparsity, "Sparsity of a new domain adapter")->capture_default_str();
}

TrainerOptions trainer_options(const TrainFlags& t) {
  TrainerOptions o;
  o.batch_events = t.batch_events;
  o.batch_ms = t.batch_ms;
  o.queue_capacity = t.queue;
  o.steps_per_batch = t.steps;
  o.adamw.lr = t.lr;
  o.adamw.weight_decay = t.weight_decay;
  o.max_grad_norm = t.max_grad_norm;
  o.retention.stop_loss = t.stop_loss;
  o.retention.distill_weight = t.distill_weight;
  o.retention.anchors_per_step = t.anchors_per_step;
  o.retention.rehearse_per_step = t.rehearse_per_step;
  o.retention.rehearsal_examples = t.rehearsal_examples;
  o.retention.scope_layers = t.scope_layers;
  o.guard.max_drift = t.max_drift;
  if (!t.canaries.empty()) o.guard.canaries = read_prompt_lines(t.canaries);
  o.privacy = {t.dp_noise, t.dp_clip, t.dp_delta};
  o.fsync = parse_fsync_policy(t.fsync);
  o.checkpoint_every = t.checkpoint_every;
  o.max_example_tokens = t.max_example_tokens;
  o.deterministic = t.deterministic;
  o.max_staleness = t.max_staleness;
  o.seed = t.seed;
  o.create.rank = t.rank;
  o.create.alpha = t.alpha;
  o.create.sparsity = t.sparsity;
  validate_adapter_config(o.create);
  validate_trainer_options(o);
  return o;
}

CLI::App* add_train_command(CLI::App& app, ModelFlags& m, AdapterFlags& a, TrainFlags& t) {
  auto* s = app.add_subcommand("train", "Teach a domain's adapter from a JSONL file of learning events");
  add_model_flags(s, m);
  s->add_option("--adapter-dir", a.dir, "Folder of adapters (default: $HYPRSTREAM_ADAPTER_DIR or "
                                        "~/.local/share/hyprstream/adapters)");
  s->add_option("--domain", t.domain, "Domain (its adapter is created when missing)")->required();
  s->add_option("--data", t.data, "JSONL file of events, or - for stdin (one event per line)")->required();
  s->add_flag("--json", t.json, "JSON lines on stdout: acknowledgements, applied batches, rejections, a summary");
  add_learning_flags(s, t);
  return s;
}

namespace {


size_t count_lines(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

}  // namespace

int run_train(const ModelFlags& m, const AdapterFlags& a, const TrainFlags& t) {
  const TrainerOptions options = trainer_options(t);
  std::ifstream file;
  const bool from_stdin = t.data == "-";
  if (!from_stdin) {
    file.open(t.data);
    if (!file) throw Error(ErrorKind::NotFound, "cannot read events from '" + t.data + "'");
  }
  std::istream& in = from_stdin ? std::cin : file;
  const size_t total = from_stdin ? 0 : count_lines(t.data);

  Engine e = load_engine(EngineOptions{m.model, m.dtype, m.device, true, m.quantize});
  require_tokenizer(e);
  AdapterRegistry registry(RegistryOptions{a.dir.empty() ? default_adapter_root() : a.dir}, e.model);

  std::mutex out_mu;  // callbacks run on the trainer's thread
  const bool bar = !t.json && isatty(STDERR_FILENO);
  const auto start = std::chrono::steady_clock::now();
  uint64_t applied = 0;
  double last_loss = 0;
  uint64_t version = 0;
  TrainerCallbacks cb;
  cb.on_durable = [&](const std::vector<std::string>& ids, uint64_t seq) {
    if (!t.json) return;
    std::lock_guard<std::mutex> lock(out_mu);
    std::cout << nlohmann::json{{"event", "durable"}, {"seq", seq}, {"ids", ids}}.dump() << std::endl;
  };
  cb.on_applied = [&](const BatchReport& r) {
    std::lock_guard<std::mutex> lock(out_mu);
    applied += r.ids.size();
    version = r.version;
    if (r.examples > 0) last_loss = r.loss;
    if (t.json) {
      nlohmann::json j = api::batch_report_json(r);
      j["event"] = "applied";
      std::cout << j.dump() << std::endl;
    }
    if (bar) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = secs > 0 ? static_cast<double>(applied) / secs : 0;
      std::string line;
      if (total > 0) {
        const size_t width = 30, done = std::min(width, static_cast<size_t>(width * applied / total));
        line = "[" + std::string(done, '#') + std::string(width - done, ' ') + "] " + std::to_string(applied) + "/" +
               std::to_string(total);
      } else {
        line = std::to_string(applied) + " events";
      }
      std::fprintf(stderr, "\r%s  %.1f events/s  loss %.4f  v%llu   ", line.c_str(), rate, last_loss,
                   static_cast<unsigned long long>(version));
      std::fflush(stderr);
    }
  };

  cb.on_quarantined = [&](const QuarantinedBatch& q) {
    std::lock_guard<std::mutex> lock(out_mu);
    const std::string reason = utf8_escape_invalid(q.reason);
    if (t.json) {
      nlohmann::json j = api::quarantined_json(q);
      j["event"] = q.rejection ? "refused" : "quarantined";
      std::cout << j.dump() << std::endl;
    } else {
      std::cerr << (bar ? "\n" : "") << "batch " << q.seq << " (" << q.ids.size() << " events) set aside, not applied: "
                << reason << "; its events are kept in " << q.file << "\n";
    }
  };

  DomainTrainer trainer(registry, e.model, e.tokenizer, t.domain, options, cb);
  uint64_t rejected = 0;
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    while (true) {
      try {
        if (trainer.submit(line) == SubmitResult::Duplicate && t.json) {
          std::lock_guard<std::mutex> lock(out_mu);
          const nlohmann::json dup = {{"event", "duplicate"}, {"line", line_no}, {"id", event_id(line).value_or("")}};
          std::cout << dup.dump() << std::endl;
        }
      } catch (const Error& err) {
        if (!trainer.stats().failure.empty()) throw;  // the trainer stopped: its error, with its kind
        if (err.kind() == ErrorKind::Busy) {  // the queue is full: wait for the pipeline as a client would
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          continue;
        }
        rejected += 1;
        // The message may quote the line's bytes, which need not be UTF-8.
        const std::string why = utf8_escape_invalid(err.what());
        std::lock_guard<std::mutex> lock(out_mu);
        if (t.json) {
          std::cout << nlohmann::json{{"event", "rejected"}, {"line", line_no}, {"error", why}}.dump() << std::endl;
        } else {
          std::cerr << (bar ? "\n" : "") << "line " << line_no << ": " << why << "\n";
        }
      }
      break;
    }
  }
  trainer.flush();
  trainer.stop();
  const TrainerStats s = trainer.stats();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (bar) std::fprintf(stderr, "\n");
  if (t.json) {
    nlohmann::json j = api::trainer_stats_json(s);
    j["event"] = "done";
    j["seconds"] = secs;
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << "domain " << s.domain << ": version " << s.version << ", " << s.accepted << " events accepted, "
              << s.duplicates << " duplicates, " << rejected << " rejected; " << s.totals.tokens_trained
              << " tokens trained in " << secs << " s; last loss " << s.last_loss << "\n";
    if (s.epsilon > 0) std::cout << "privacy spent per event: epsilon " << s.epsilon << " at delta " << s.delta << "\n";
  }
  return rejected > 0 ? 2 : 0;
}

}  // namespace hs::cli
