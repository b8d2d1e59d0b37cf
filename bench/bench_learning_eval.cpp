// Knowledge-editing evaluation of online learning (CounterFact-style, issue 12): teach invented facts through a
// domain's trainer, then score efficacy (the taught question answered), generalization (its paraphrases
// answered), locality (unrelated control prompts keep the first sentence of their greedy answer) and the drift
// of the model's distributions on the controls (KL from the base model along its answers). Prints JSON.
//
//   hyprstream-bench-learning-eval --data bench/data/learning_eval.json --facts 10 --batch 10 [recipe flags]
#include <ftw.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "adapters/registry.h"
#include "bench_common.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "common/percentile.h"
#include "learning/distillation.h"
#include "learning/lora_gradients.h"
#include "learning/trainer.h"
#include "serving/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace {

using nlohmann::json;

struct Fact {
  std::string question, answer, key;
  std::vector<std::string> paraphrases;
};

struct Dataset {
  std::vector<Fact> facts;
  std::vector<std::string> controls;
};

Dataset read_dataset(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw hs::Error(hs::ErrorKind::NotFound, "cannot read the evaluation data '" + path + "'");
  const json j = json::parse(in);
  Dataset d;
  for (const json& f : j.at("facts")) {
    d.facts.push_back({f.at("question"), f.at("answer"), f.at("key"), f.at("paraphrases")});
    if (d.facts.back().paraphrases.size() != 2)  // scoring pairs paraphrase i with fact i / 2
      throw hs::Error(hs::ErrorKind::InvalidArgument, "each fact in '" + path + "' needs two paraphrases");
  }
  for (const json& c : j.at("controls")) d.controls.push_back(c.at("prompt"));
  return d;
}

// The answer up to and including its first sentence end (or line end), leading space trimmed.
std::string first_sentence(const std::string& text) {
  const size_t begin = text.find_first_not_of(" \n\t");
  if (begin == std::string::npos) return "";
  const size_t end = text.find_first_of(".!?\n", begin);
  return text.substr(begin, end == std::string::npos ? std::string::npos : end + 1 - begin);
}

// Greedy answers of up to 32 tokens through the serving path, with the adapter when given (which answers only the
// prompts inside its scope, as in the server, recalling the nearest taught conversation unless `recall` is off).
std::vector<hs::GenerationResult> results(const hs::Engine& e, const std::vector<std::string>& prompts,
                                          std::shared_ptr<const hs::LoraWeights> adapter, bool recall = true) {
  const hs::ChatTemplate chat = hs::chat_template_of(*e.tokenizer);
  std::vector<hs::GenerationRequest> requests;
  for (const std::string& p : prompts) {
    hs::GenerationRequest r;
    r.prompt = hs::encode(*e.tokenizer, hs::render_chat(chat, {{"user", p}}, true), false);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 32;
    r.adapter = adapter;
    requests.push_back(std::move(r));
  }
  hs::GenerateOptions options;
  options.recall_taught = recall;
  return hs::generate_batch(e, requests, {}, options);
}

std::vector<std::string> answers(const hs::Engine& e, const std::vector<std::string>& prompts,
                                 std::shared_ptr<const hs::LoraWeights> adapter) {
  std::vector<std::string> out;
  for (const hs::GenerationResult& r : results(e, prompts, adapter)) out.push_back(r.text);
  return out;
}

// Share of results the adapter answered (inside its scope, or no scope at all).
double share_adapted(const std::vector<hs::GenerationResult>& got) {
  size_t n = 0;
  for (const hs::GenerationResult& r : got) n += r.adapter_scope != "outside";
  return got.empty() ? 0 : static_cast<double>(n) / static_cast<double>(got.size());
}

std::vector<std::string> texts(const std::vector<hs::GenerationResult>& got) {
  std::vector<std::string> out;
  for (const hs::GenerationResult& r : got) out.push_back(r.text);
  return out;
}

struct Recipe {
  hs::TrainerOptions options;  // flags override the teaching recipe's
  size_t facts = 10;
};

// "gate,up,down": the adapter's target modules.
std::vector<hs::LoraModule> parse_targets(const std::string& list) {
  std::vector<hs::LoraModule> out;
  std::stringstream in(list);
  for (std::string name; std::getline(in, name, ',');) out.push_back(hs::parse_lora_module(name));
  return out;
}

json recipe_json(const hs::TrainerOptions& o) {
  json targets = json::array();
  for (hs::LoraModule m : o.create.targets) targets.push_back(hs::lora_module_name(m));
  return {{"lr", o.adamw.lr},
          {"targets", targets},
          {"sparsity", o.create.sparsity},
          {"seed", o.create.seed},
          {"max_steps", o.steps_per_batch},
          {"stop_loss", o.retention.stop_loss},
          {"distill_weight", o.retention.distill_weight},
          {"anchors_per_step", o.retention.anchors_per_step},
          {"rehearse_per_step", o.retention.rehearse_per_step},
          {"rehearsal_examples", o.retention.rehearsal_examples},
          {"max_grad_norm", o.max_grad_norm},
          {"max_drift", o.guard.max_drift},
          {"scope_layers", o.retention.scope_layers},
          {"batch_events", o.batch_events}};
}

// Fact i as a learning event: its question and answer as a chat.
std::string fact_event(const Fact& f, size_t i) {
  const json messages = {{{"role", "user"}, {"content", f.question}}, {{"role", "assistant"}, {"content", f.answer}}};
  return json{{"id", "fact-" + std::to_string(i)}, {"messages", messages}}.dump();
}

// Teaches the first `facts` facts in batches of options.batch_events, one batch after another.
json teach(hs::AdapterRegistry& registry, const hs::Engine& e, const Dataset& d, const Recipe& recipe) {
  json batches = json::array();
  double teacher_seconds = 0;  // making the teachers' answers, once per domain: not counted as teaching time
  hs::TrainerCallbacks cb;
  cb.on_applied = [&](const hs::BatchReport& r) {
    batches.push_back({{"loss", r.loss}, {"final_loss", r.final_loss}, {"steps", r.steps}, {"drift", r.drift},
                       {"rehearsed", r.rehearsed}, {"rehearsal_loss", r.rehearsal_loss},
                       {"update_s", r.update_ms / 1000}, {"teacher_s", r.teacher_ms / 1000}});
    teacher_seconds += r.teacher_ms / 1000;
  };
  cb.on_quarantined = [&](const hs::QuarantinedBatch& q) {
    batches.push_back({{"refused", q.reason}, {"drift", q.rejection ? q.rejection->drift : -1}});
  };
  hs::TrainerOptions o = recipe.options;
  o.deterministic = true;
  o.fsync = hs::FsyncPolicy::Never;
  hs::DomainTrainer trainer(registry, e.model, e.tokenizer, "eval", o, cb);
  const auto t0 = hs::bench::Clock::now();
  for (size_t i = 0; i < recipe.facts; ++i) {
    trainer.submit(fact_event(d.facts[i], i));
    if ((i + 1) % o.batch_events == 0) trainer.flush();
  }
  trainer.flush();
  const double seconds = hs::bench::seconds_since(t0) - teacher_seconds;
  const hs::TrainerStats s = trainer.stats();
  trainer.stop();
  return {{"batches", batches},
          {"steps", s.totals.steps},
          {"tokens_trained", s.totals.tokens_trained},
          {"train_seconds", seconds},
          {"teacher_seconds", teacher_seconds},
          {"seconds_per_fact", seconds / static_cast<double>(recipe.facts)},
          {"refused_batches", s.rejected_versions}};
}

}  // namespace

namespace {

struct Base {
  std::vector<std::string> facts, paraphrases, controls;  // the base model's answers
  std::vector<hs::TeacherTargets> control_targets;        // its distributions along the control answers
};

std::vector<std::string> fact_questions(const Dataset& d, size_t n) {
  std::vector<std::string> q;
  for (size_t i = 0; i < n; ++i) q.push_back(d.facts[i].question);
  return q;
}

std::vector<std::string> paraphrase_questions(const Dataset& d, size_t n) {
  std::vector<std::string> q;
  for (size_t i = 0; i < n; ++i) q.insert(q.end(), d.facts[i].paraphrases.begin(), d.facts[i].paraphrases.end());
  return q;
}

// The base model's side, read from `cache` when it holds it (it takes minutes on a CPU), else computed and kept.
Base base_side(const hs::Engine& e, const Dataset& d, const std::string& cache) {
  const size_t n = d.facts.size();
  const hs::TeacherOptions wide{32, 1024};  // top 1024 tokens: the KL misses only the far tail
  const hs::ChatTemplate chat = hs::chat_template_of(*e.tokenizer);
  Base b;
  if (!cache.empty() && ::access(cache.c_str(), F_OK) == 0) {
    const json j = json::parse(std::ifstream(cache));
    b.facts = j.at("facts");
    b.paraphrases = j.at("paraphrases");
    b.controls = j.at("controls");
    if (auto t = hs::read_teacher_targets(cache + ".targets", d.controls, wide, hs::weights_name(*e.model)))
      b.control_targets = std::move(*t);
  }
  if (b.controls.size() != d.controls.size() || b.control_targets.empty()) {
    b.facts = answers(e, fact_questions(d, n), nullptr);
    b.paraphrases = answers(e, paraphrase_questions(d, n), nullptr);
    b.controls = answers(e, d.controls, nullptr);
    b.control_targets = hs::build_teacher_targets(*e.model, *e.tokenizer, &chat, d.controls, wide);
    if (!cache.empty()) {
      std::ofstream(cache) << json{{"facts", b.facts}, {"paraphrases", b.paraphrases}, {"controls", b.controls}};
      hs::write_teacher_targets(cache + ".targets", d.controls, b.control_targets, wide,
                                hs::weights_name(*e.model));
    }
  }
  return b;
}

// Whether answer i (of per_fact answers to each fact, in order) names its fact's key.
bool has_key(const std::vector<std::string>& got, size_t i, const Dataset& d, size_t per_fact) {
  return got[i].find(d.facts[i / per_fact].key) != std::string::npos;
}

double share_with_key(const std::vector<std::string>& got, const Dataset& d, size_t per_fact) {
  size_t hits = 0;
  for (size_t i = 0; i < got.size(); ++i) hits += has_key(got, i, d, per_fact);
  return got.empty() ? 0 : static_cast<double>(hits) / static_cast<double>(got.size());
}

// The questions whose answers miss their fact's key, with those answers.
json misses(const std::vector<std::string>& questions, const std::vector<std::string>& got, const Dataset& d,
            size_t per_fact) {
  json out = json::array();
  for (size_t i = 0; i < got.size(); ++i)
    if (!has_key(got, i, d, per_fact)) out.push_back({{"q", questions[i]}, {"a", got[i]}});
  return out;
}

json score(const hs::Engine& e, hs::AdapterRegistry& registry, const Dataset& d, const Base& base, size_t n) {
  auto snap = registry.acquire("eval");
  auto adapter = registry.weights(*snap);
  const std::vector<std::string> fact_qs = fact_questions(d, n), para_qs = paraphrase_questions(d, n);
  const std::vector<hs::GenerationResult> fact_results = results(e, fact_qs, adapter);
  const std::vector<hs::GenerationResult> para_results = results(e, para_qs, adapter);
  const std::vector<hs::GenerationResult> control_results = results(e, d.controls, adapter);
  const std::vector<std::string> facts = texts(fact_results), paras = texts(para_results),
                                 controls = texts(control_results);
  json changed = json::array();
  size_t kept = 0;
  for (size_t i = 0; i < controls.size(); ++i) {
    if (first_sentence(controls[i]) == first_sentence(base.controls[i])) {
      kept += 1;
    } else if (changed.size() < 12) {
      changed.push_back({{"prompt", d.controls[i]}, {"base", base.controls[i]}, {"adapted", controls[i]}});
    }
  }
  const hs::Drift drift = hs::distillation_drift(*e.model, snap->image->layout(), snap->image->values(),
                                                 snap->config.scale(), base.control_targets);
  // As served: a control outside the scope gets the base model, whose KL to itself is zero.
  std::vector<double> served;
  for (size_t i = 0; i < base.control_targets.size(); ++i) {
    const auto at = std::find(d.controls.begin(), d.controls.end(), base.control_targets[i].prompt);
    const bool adapted = control_results[static_cast<size_t>(at - d.controls.begin())].adapter_scope != "outside";
    served.push_back(adapted ? drift.per_anchor[i] : 0.0);
  }
  double served_mean = 0;
  for (size_t i = 0; i < served.size(); ++i)
    served_mean += served[i] * static_cast<double>(base.control_targets[i].positions());
  int64_t positions = 0;
  for (const hs::TeacherTargets& t : base.control_targets) positions += t.positions();
  served_mean /= static_cast<double>(std::max<int64_t>(positions, 1));
  const std::vector<std::string> base_facts(base.facts.begin(), base.facts.begin() + static_cast<long>(n));
  const std::vector<std::string> facts_alone = texts(results(e, fact_qs, adapter, false)),
                                 paras_alone = texts(results(e, para_qs, adapter, false));
  return {{"efficacy", share_with_key(facts, d, 1)},
          {"generalization", share_with_key(paras, d, 2)},
          {"efficacy_without_recall", share_with_key(facts_alone, d, 1)},
          {"generalization_without_recall", share_with_key(paras_alone, d, 2)},
          {"locality", static_cast<double>(kept) / static_cast<double>(controls.size())},
          {"control_kl_mean", served_mean},
          {"control_kl_p95", hs::percentile(served, 0.95)},
          {"control_kl_mean_without_scope", drift.mean},
          {"scope", {{"examples", snap->scope ? snap->scope->examples.size() : 0},
                     {"facts_inside", share_adapted(fact_results)},
                     {"paraphrases_inside", share_adapted(para_results)},
                     {"controls_inside", share_adapted(control_results)}}},
          {"base_efficacy", share_with_key(base_facts, d, 1)},
          {"missed_facts", misses(fact_qs, facts, d, 1)},
          {"missed_paraphrases", misses(para_qs, paras, d, 2)},
          {"changed_controls", changed}};
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }

// The base model's answers to replay and canary prompts depend only on the model: kept beside the cache and
// copied into each run's training folder, they are made once rather than by every run's trainer.
void seed_teachers(const std::string& dir, const std::string& cache, bool save) {
  if (cache.empty()) return;
  if (!save) hs::ensure_directory(dir + "/eval/training");
  for (const char* name : {"replay-targets.json", "canary-targets.json"}) {
    const std::string kept = cache + "." + name, used = dir + "/eval/training/" + name;
    const std::string& from = save ? used : kept;
    const std::string& to = save ? kept : used;
    if (::access(from.c_str(), F_OK) != 0 || (save && ::access(to.c_str(), F_OK) == 0)) continue;
    std::ofstream(to) << std::ifstream(from).rdbuf();
  }
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  return hs::bench::run([&]() -> json {
    hs::bench::ModelArgs args;
    std::string data = "bench/data/learning_eval.json", cache;
    Recipe recipe{hs::teaching_recipe()};
    hs::TrainerOptions& o = recipe.options;
    o.batch_events = 10;
    auto num = [](const std::string& v) { return std::stod(v); };
    hs::bench::parse_flags(
        argc, argv, args,
        {{"--data", [&](const std::string& v) { data = v; }},
         {"--base-cache", [&](const std::string& v) { cache = v; }},
         {"--facts", [&](const std::string& v) { recipe.facts = std::stoul(v); }},
         {"--batch", [&](const std::string& v) { o.batch_events = std::stoul(v); }},
         {"--lr", [&](const std::string& v) { o.adamw.lr = num(v); }},
         {"--steps", [&](const std::string& v) { o.steps_per_batch = std::stoi(v); }},
         {"--stop-loss", [&](const std::string& v) { o.retention.stop_loss = num(v); }},
         {"--distill-weight", [&](const std::string& v) { o.retention.distill_weight = num(v); }},
         {"--anchors-per-step", [&](const std::string& v) { o.retention.anchors_per_step = std::stoul(v); }},
         {"--rehearse-per-step", [&](const std::string& v) { o.retention.rehearse_per_step = std::stoul(v); }},
         {"--rehearsal-examples", [&](const std::string& v) { o.retention.rehearsal_examples = std::stoul(v); }},
         {"--max-grad-norm", [&](const std::string& v) { o.max_grad_norm = num(v); }},
         {"--max-drift", [&](const std::string& v) { o.guard.max_drift = num(v); }},
         {"--scope-layers", [&](const std::string& v) { o.retention.scope_layers = std::stol(v); }},
         {"--sparsity", [&](const std::string& v) { o.create.sparsity = num(v); }},
         {"--targets", [&](const std::string& v) { o.create.targets = parse_targets(v); }},
         {"--seed", [&](const std::string& v) { o.create.seed = std::stoull(v); }}});
    hs::validate_trainer_options(o);
    hs::validate_adapter_config(o.create);
    const Dataset d = read_dataset(data);
    if (recipe.facts < 1 || recipe.facts > d.facts.size())
      throw hs::Error(hs::ErrorKind::InvalidArgument, "--facts must lie in [1, " + std::to_string(d.facts.size()) + "]");
    const hs::Engine e = hs::load_engine(hs::EngineOptions{args.model, args.dtype, args.device, true, args.quantize});
    const Base base = base_side(e, d, cache);
    const std::string dir = (fs::temp_directory_path() / ("hs-learning-eval-" + std::to_string(::getpid()))).string();
    hs::AdapterRegistry registry(hs::RegistryOptions{dir}, e.model);
    json out = {{"machine", hs::bench::machine_json()}, {"model", e.path}, {"recipe", recipe_json(o)},
                {"facts", recipe.facts}, {"controls", d.controls.size()}};
    registry.create("eval", o.create);
    seed_teachers(dir, cache, false);
    out["training"] = teach(registry, e, d, recipe);
    seed_teachers(dir, cache, true);
    out["scores"] = score(e, registry, d, base, recipe.facts);
    ::nftw(dir.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return out;
  });
}
