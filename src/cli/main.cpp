// hyprstream: command-line front end. Errors become a one-line message on stderr and an exit code per kind.
#include <iostream>

#include "cli/commands.h"
#include "common/error.h"

namespace {

int exit_code(hs::ErrorKind kind) {
  switch (kind) {
    case hs::ErrorKind::InvalidArgument: return 2;
    case hs::ErrorKind::NotFound: return 3;
    case hs::ErrorKind::CorruptFile: return 4;
    case hs::ErrorKind::Unsupported: return 5;
    case hs::ErrorKind::ContextOverflow: return 6;
    case hs::ErrorKind::Io: return 7;
    case hs::ErrorKind::Busy: return 8;
    case hs::ErrorKind::AlreadyExists: return 9;
    case hs::ErrorKind::Internal: return 1;
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hs::cli;
  CLI::App app{"Hyprstream: serve a language model that keeps learning"};
  app.require_subcommand(1);

  ModelFlags model;
  AdapterFlags adapter;
  AdapterAdminFlags admin;
  SamplingFlags sampling;
  GenerateFlags gen;
  ChatFlags chat;
  TokenizeFlags tok;
  TrainFlags train;
  EventsFlags events;
  bool info_json = false;

  auto* g = app.add_subcommand("generate", "Complete a prompt, streaming the text");
  add_model_flags(g, model);
  add_adapter_flags(g, adapter);
  add_sampling_flags(g, sampling);
  g->add_option("-p,--prompt", gen.prompt, "Prompt text (read from stdin when omitted)");
  g->add_flag("--json", gen.json, "One JSON object per generated token: id, text, logprob");

  auto* c = app.add_subcommand("chat", "Chat with the model's chat template (one user turn per stdin line)");
  add_model_flags(c, model);
  add_adapter_flags(c, adapter);
  add_sampling_flags(c, sampling);
  c->add_option("--system", chat.system, "System prompt");
  c->add_flag("--no-think", chat.no_think, "Qwen3: answer without a thinking block");
  c->add_flag("--learn", chat.learn, "Train --adapter online: '/correct TEXT' after an answer teaches TEXT");
  add_learning_flags(c, train);

  auto* t = app.add_subcommand("tokenize", "Show the token ids of a text");
  add_model_flags(t, model);
  t->add_option("--text", tok.text, "Text to tokenize (read from stdin when omitted)");
  t->add_flag("--json", tok.json, "Print {\"ids\": [...], \"tokens\": [...]}");
  t->add_flag("--add-special", tok.add_special, "Add the model's BOS/EOS tokens as its tokenizer would");

  auto* i = app.add_subcommand("info", "Architecture, parameter count, dtype and context length");
  add_model_flags(i, model);
  i->add_flag("--json", info_json, "Print JSON");

  auto adapter_actions = add_adapter_commands(app, model, adapter, admin);
  auto* tr = add_train_command(app, model, adapter, train);
  auto* sv = add_serve_command(app);
  auto* push = add_events_command(app, events);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    if (g->parsed()) return run_generate(model, adapter, sampling, gen);
    if (c->parsed()) return run_chat(model, adapter, sampling, chat, train);
    if (tr->parsed()) return run_train(model, adapter, train);
    if (sv->parsed()) return run_serve();
    if (push->parsed()) return run_events_push(events);
    for (const auto& [action, sub] : adapter_actions)
      if (sub->parsed()) return run_adapters(action, model, adapter, admin);
    if (t->parsed()) return run_tokenize(model, tok);
    if (i->parsed()) return run_info(model, info_json);
  } catch (const hs::Error& e) {
    std::cout.flush();
    std::cerr << "error: " << e.what() << "\n";
    return exit_code(e.kind());
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "error: internal error: " << e.what() << "\n";
    return 1;
  }
  return 2;
}
