// `generate` and `chat`: the commands that run the model.
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "api/server/views.h"
#include "adapters/lora_weights.h"
#include "adapters/registry.h"
#include "common/error.h"
#include "common/utf8.h"
#include "learning/trainer.h"
#include "serving/generate.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace hs::cli {

void add_model_flags(CLI::App* app, ModelFlags& f) {
  app->add_option("-m,--model", f.model, "Hugging Face folder, .gguf file, or 'default' (bundled SmolLM2-135M-Instruct)")
      ->capture_default_str();
  app->add_option("--dtype", f.dtype, "auto, float32 or bfloat16")->capture_default_str();
  app->add_option("--device", f.device, "cpu, cuda or cuda:N")->capture_default_str();
  app->add_option("--quantize", f.quantize, "auto: int4 for a GGUF whose projections are 4-bit, on the cpu in float32, else none; int8 or int4: weight-only quantized projections (cpu), faster decoding (int4 takes a GGUF's own 4-bit blocks); none: dense")
      ->capture_default_str();
}

void add_adapter_flags(CLI::App* app, AdapterFlags& f) {
  app->add_option("--adapter", f.name, "Run with this adapter (see `hyprstream adapters`)");
  app->add_option("--adapter-scale", f.scale, "Multiplier on the adapter's update (1 = as trained, 0 = base model)")
      ->capture_default_str();
  app->add_option("--adapter-version", f.version, "A kept version of the adapter instead of its current one")
      ->check(CLI::PositiveNumber);
  app->add_option("--adapter-dir", f.dir, "Folder of adapters (default: $HYPRSTREAM_ADAPTER_DIR or ~/.local/share/hyprstream/adapters)");
}

void add_sampling_flags(CLI::App* app, SamplingFlags& f) {
  app->add_option("--temperature", f.temperature, "Sampling temperature; 0 is greedy");
  app->add_option("--top-p", f.top_p, "Nucleus sampling threshold in (0, 1]");
  app->add_option("--top-k", f.top_k, "Keep the k most likely tokens; 0 disables");
  app->add_option("--min-p", f.min_p, "Drop tokens below min-p times the top probability");
  app->add_option("--repetition-penalty", f.repetition_penalty, "Penalty for tokens already present (1 disables)");
  app->add_option("--max-tokens", f.max_tokens, "Maximum new tokens");
  app->add_option("--seed", f.seed, "Random seed for reproducible sampling");
  app->add_option("--stop", f.stop, "Stop string (repeatable)");
  app->add_option("--stop-token-id", f.stop_token_ids, "Token id that ends generation (repeatable)");
}

SamplingParams resolve_sampling(const SamplingParams& defaults, const SamplingFlags& f, int32_t default_max_tokens) {
  SamplingParams p = defaults;
  p.max_tokens = default_max_tokens;
  if (f.temperature) p.temperature = *f.temperature;
  if (f.top_p) p.top_p = *f.top_p;
  if (f.top_k) p.top_k = *f.top_k;
  if (f.min_p) p.min_p = *f.min_p;
  if (f.repetition_penalty) p.repetition_penalty = *f.repetition_penalty;
  if (f.max_tokens) p.max_tokens = *f.max_tokens;
  if (f.seed) p.seed = *f.seed;
  p.stop = f.stop;
  p.stop_token_ids = f.stop_token_ids;
  validate_sampling(p);
  return p;
}

namespace {

Engine load(const ModelFlags& m) {
  Engine e = load_engine(EngineOptions{m.model, m.dtype, m.device, true, m.quantize});
  require_tokenizer(e);
  return e;
}

// The adapter a request runs with, or null; the snapshot is fixed for the life of the command.
std::shared_ptr<const LoraWeights> load_adapter(const Engine& e, const AdapterFlags& a) {
  if (a.name.empty()) return nullptr;
  AdapterRegistry registry(RegistryOptions{a.dir}, e.model);
  return registry.weights(*registry.acquire(a.name, a.version));
}

// Streams one generation to stdout; returns the full text.
std::string stream(const Engine& e, const GenerationRequest& req, bool json) {
  GenerationResult r = generate(e, req, [&](const TokenEvent& ev) {
    if (json) {
      std::cout << nlohmann::json{{"id", ev.id}, {"text", ev.text}, {"logprob", ev.logprob}}.dump() << "\n";
    } else {
      std::cout << ev.text;
    }
    std::cout.flush();
    return true;
  });
  if (json) {
    std::cout << nlohmann::json{{"finish_reason", r.finish_reason}, {"text", r.text},
                                {"prompt_tokens", r.prompt_tokens}, {"completion_tokens", r.ids.size()},
                                {"adapter", api::result_adapter_json(r)}}
                     .dump()
              << "\n";
  } else {
    std::cout << r.tail;  // text held back for a possible stop string, released at the end
  }
  std::cout.flush();
  return r.text;
}

}  // namespace

int run_generate(const ModelFlags& m, const AdapterFlags& a, const SamplingFlags& s, const GenerateFlags& g) {
  std::string prompt = g.prompt;
  if (prompt.empty()) prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  if (prompt.empty()) throw Error(ErrorKind::InvalidArgument, "the prompt is empty (pass --prompt or pipe text in)");
  Engine e = load(m);
  GenerationRequest req{encode(*e.tokenizer, prompt, /*add_special_tokens=*/true),
                        resolve_sampling(e.defaults, s, 256), load_adapter(e, a), a.scale};
  stream(e, req, g.json);
  if (!g.json) std::cout << "\n";
  return 0;
}

namespace {

// The state of one `chat` run: the conversation and, with --learn, the domain's trainer.
struct ChatSession {
  const Engine& engine;
  const AdapterFlags& adapter_flags;
  const ChatFlags& flags;
  ChatTemplate tmpl;
  SamplingParams params;
  std::unique_ptr<AdapterRegistry> registry;
  std::unique_ptr<DomainTrainer> trainer;
  std::shared_ptr<const LoraWeights> adapter;
  std::vector<ChatMessage> messages;
  uint64_t corrections = 0;
  int64_t started = std::chrono::system_clock::now().time_since_epoch().count();

  void restart() {
    messages.clear();
    if (!flags.system.empty()) messages.push_back({"system", flags.system});
  }

  // "/correct TEXT": the last answer becomes TEXT and the conversation so far is taught to the adapter.
  void correct(const std::string& text) {
    if (messages.empty() || messages.back().role != "assistant") {
      std::cout << "(nothing to correct yet)\n";
      return;
    }
    messages.back().content = text;
    nlohmann::json event = {{"id", "chat-" + std::to_string(started) + "-" + std::to_string(++corrections)},
                            {"messages", nlohmann::json::array()}};
    for (const ChatMessage& msg : messages) event["messages"].push_back({{"role", msg.role}, {"content", msg.content}});
    const uint64_t set_aside = trainer->stats().quarantined_batches;
    trainer->submit(event.dump());
    trainer->flush();
    const TrainerStats s = trainer->stats();
    if (s.quarantined_batches > set_aside) {
      std::cout << "(not learned: " << s.last_quarantine_reason << ")\n";
      return;
    }
    std::cout << "(learned: adapter " << adapter_flags.name << " is now version " << s.version << ")\n";
  }

  void answer(const std::string& line) {
    messages.push_back({"user", line});
    try {
      const nlohmann::ordered_json kwargs =
          flags.no_think ? nlohmann::ordered_json{{"enable_thinking", false}} : nlohmann::ordered_json::object();
      std::string prompt = render_chat(tmpl, messages, true, kwargs);
      if (trainer) adapter = registry->weights(*registry->acquire(adapter_flags.name));
      GenerationRequest req{encode(*engine.tokenizer, prompt, false), params, adapter, adapter_flags.scale};
      messages.push_back({"assistant", stream(engine, req, false)});
      std::cout << "\n";
    } catch (const Error& e) {
      messages.pop_back();  // the turn is refused; the conversation goes on without it
      throw;
    }
  }

  // One line of input; a line the model cannot take is refused with a message and the chat goes on.
  void handle(const std::string& line) {
    if (!utf8_is_valid(line)) throw Error(ErrorKind::InvalidArgument, "the line is not valid UTF-8; it was ignored");
    if (trainer && line == "/new") {  // a fresh conversation: what was learned stays in the adapter
      restart();
      std::cout << "(new conversation)\n";
    } else if (trainer && line.rfind("/correct ", 0) == 0) {
      correct(line.substr(9));
    } else {
      answer(line);
    }
  }
};

}  // namespace

int run_chat(const ModelFlags& m, const AdapterFlags& a, const SamplingFlags& s, const ChatFlags& c,
             const TrainFlags& t) {
  Engine e = load(m);
  if (c.learn && a.name.empty()) throw Error(ErrorKind::InvalidArgument, "chat --learn needs --adapter NAME to teach");
  ChatSession chat{e, a, c, chat_template_of(*e.tokenizer), resolve_sampling(e.defaults, s, 512)};
  // With --learn the adapter is trained in this process and every answer takes its newest version.
  if (c.learn) {
    chat.registry = std::make_unique<AdapterRegistry>(RegistryOptions{a.dir.empty() ? default_adapter_root() : a.dir},
                                                      e.model);
    chat.trainer = std::make_unique<DomainTrainer>(*chat.registry, e.model, e.tokenizer, a.name, trainer_options(t));
  } else {
    chat.adapter = load_adapter(e, a);
  }
  chat.restart();
  const bool interactive = isatty(STDIN_FILENO);
  if (interactive && c.learn)
    std::cout << "(after an answer, type /correct followed by the answer you wanted; /new starts over)\n";
  for (std::string line;;) {
    if (interactive) std::cout << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    try {
      chat.handle(line);
    } catch (const Error& err) {
      if (err.kind() != ErrorKind::InvalidArgument && err.kind() != ErrorKind::ContextOverflow) throw;
      std::cout.flush();
      std::cerr << "error: " << utf8_escape_invalid(err.what()) << "\n";
    }
  }
  if (chat.trainer) chat.trainer->stop();
  return 0;
}

}  // namespace hs::cli
