// OpenAI-compatible routes: /v1/chat/completions, /v1/completions and /v1/models, as the official SDK calls
// them. A request picks an adapter by "model" (an adapter's name, as vLLM and LoRAX do) or by "adapter".
#include <chrono>

#include "api/server/generation_job.h"
#include "api/server/routes.h"
#include "api/server/views.h"
#include "serving/service.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace hs::api {

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json usage_of(const std::vector<Choice>& choices) {
  int64_t completion = 0;
  for (const Choice& c : choices) completion += static_cast<int64_t>(c.result.ids.size());
  const int64_t prompt = choices.empty() ? 0 : choices[0].result.prompt_tokens;
  const int64_t cached = choices.empty() ? 0 : choices[0].result.cached_tokens;
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

json chat_logprob(const Tokenizer& tok, const TokenEvent& ev) {
  json entry = token_text(tok, ev.id);
  entry["logprob"] = ev.logprob;
  json tops = json::array();
  for (const auto& [id, lp] : ev.top_logprobs) {
    json t = token_text(tok, id);
    t["logprob"] = lp;
    tops.push_back(t);
  }
  entry["top_logprobs"] = tops;
  return entry;
}

// Fields common to both OpenAI response shapes.
struct OpenAiFormat : Format {
  OpenAiFormat(const Tokenizer& tok, std::string id, std::string object, std::string model, bool logprobs,
               bool include_usage)
      : tok(tok), id(std::move(id)), object(std::move(object)), model(std::move(model)), logprobs(logprobs),
        include_usage(include_usage), created(unix_now()) {}
  json chunk(json choices) const {
    return {{"id", id}, {"object", object + (object == "chat.completion" ? ".chunk" : "")}, {"created", created},
            {"model", model}, {"choices", std::move(choices)}};
  }
  std::vector<json> on_all_done(const std::vector<Choice>& choices) override {
    if (!include_usage) return {};
    json last = chunk(json::array());
    last["usage"] = usage_of(choices);
    return {last};
  }
  json whole_shell(const std::vector<Choice>& choices, json out_choices) const {
    json j = {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"choices", out_choices},
              {"usage", usage_of(choices)}};
    if (!choices.empty()) j["adapter"] = result_adapter_json(choices[0].result);
    return j;
  }
  const Tokenizer& tok;
  std::string id, object, model;
  bool logprobs, include_usage;
  int64_t created;
};

struct ChatFormat : OpenAiFormat {
  using OpenAiFormat::OpenAiFormat;
  std::vector<json> on_start(size_t i) override {
    return {chunk({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                    {"finish_reason", nullptr}}})};
  }
  std::vector<json> on_token(size_t i, const TokenEvent& ev) override {
    if (ev.text.empty() && !logprobs) return {};
    json lp = logprobs ? json{{"content", json::array({chat_logprob(tok, ev)})}} : json(nullptr);
    return {chunk({{{"index", i}, {"delta", {{"content", ev.text}}}, {"logprobs", lp}, {"finish_reason", nullptr}}})};
  }
  std::vector<json> on_finish(size_t i, const GenerationResult& r) override {
    json c = chunk({{{"index", i}, {"delta", r.tail.empty() ? json::object() : json{{"content", r.tail}}},
                     {"logprobs", nullptr}, {"finish_reason", r.finish_reason}}});
    c["adapter"] = result_adapter_json(r);
    return {c};
  }
  json whole(const std::vector<Choice>& choices) override {
    json out = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
      json lp = nullptr;
      if (logprobs) {
        lp = {{"content", json::array()}};
        for (const TokenEvent& ev : choices[i].tokens) lp["content"].push_back(chat_logprob(tok, ev));
      }
      out.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", choices[i].result.text}}},
                     {"logprobs", lp}, {"finish_reason", choices[i].result.finish_reason}});
    }
    return whole_shell(choices, out);
  }
};

struct CompletionFormat : OpenAiFormat {
  using OpenAiFormat::OpenAiFormat;
  json legacy_logprobs(const std::vector<TokenEvent>& tokens, size_t offset) const {
    json j = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
    for (const TokenEvent& ev : tokens) {
      j["tokens"].push_back(token_text(tok, ev.id)["token"]);
      j["token_logprobs"].push_back(ev.logprob);
      json tops = json::object();
      for (const auto& [id, lp] : ev.top_logprobs) tops[token_text(tok, id)["token"].get<std::string>()] = lp;
      j["top_logprobs"].push_back(tops);
      j["text_offset"].push_back(offset);
      offset += ev.text.size();
    }
    return j;
  }
  std::vector<json> on_token(size_t i, const TokenEvent& ev) override {
    if (ev.text.empty() && !logprobs) return {};
    json lp = logprobs ? legacy_logprobs({ev}, 0) : json(nullptr);
    return {chunk({{{"index", i}, {"text", ev.text}, {"logprobs", lp}, {"finish_reason", nullptr}}})};
  }
  std::vector<json> on_finish(size_t i, const GenerationResult& r) override {
    json c = chunk({{{"index", i}, {"text", r.tail}, {"logprobs", nullptr}, {"finish_reason", r.finish_reason}}});
    c["adapter"] = result_adapter_json(r);
    return {c};
  }
  json whole(const std::vector<Choice>& choices) override {
    json out = json::array();
    for (size_t i = 0; i < choices.size(); ++i)
      out.push_back({{"index", i}, {"text", choices[i].result.text},
                     {"logprobs", logprobs ? legacy_logprobs(choices[i].tokens, 0) : json(nullptr)},
                     {"finish_reason", choices[i].result.finish_reason}});
    return whole_shell(choices, out);
  }
};

// "model" names the base model or an adapter; "adapter" (our extension) wins when both are given.
void resolve_model(ApiContext& ctx, const json& body, GenerationParams& g) {
  const std::string model = get_string(body, "model").value_or("");
  if (!g.adapter.empty() || model.empty() || model == ctx.model_name) return;
  try {
    ctx.service.registry().manifest(model);
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::NotFound) throw;
    throw RequestError(ErrorKind::NotFound, "the model '" + model + "' does not exist: use '" + ctx.model_name +
                                                "' or the name of an adapter (GET /v1/models lists them)",
                       "unknown_adapter");
  }
  g.adapter = model;
}

// `body` is the request parsed keeping its key order, which the template's tojson of tools and arguments shows.
std::vector<ChatMessage> read_messages(const nlohmann::ordered_json& body) {
  using ojson = nlohmann::ordered_json;
  auto it = body.find("messages");
  if (it == body.end() || !it->is_array() || it->empty())
    throw Error(ErrorKind::InvalidArgument, "'messages' must be a non-empty array of {role, content}");
  std::vector<ChatMessage> out;
  for (const ojson& m : *it) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Error(ErrorKind::InvalidArgument, "every message needs a string 'role'");
    // Fields besides role and content (tool_calls, tool_call_id, name...) reach the template as given.
    ChatMessage msg{m["role"].get<std::string>(), "", m};
    msg.extras.erase("role");
    msg.extras.erase("content");
    const ojson& c = m.contains("content") ? m["content"] : ojson();
    if (c.is_null()) {
      msg.extras["content"] = nullptr;  // a tool call's message may have none; the template then sees none
    } else if (c.is_string()) {
      msg.content = c.get<std::string>();
    } else if (c.is_array()) {  // content parts: text only
      for (const ojson& part : c) {
        if (!part.is_object() || part.value("type", ojson()) != "text" || !part.contains("text") ||
            !part["text"].is_string())
          throw Error(ErrorKind::Unsupported, "only text content parts are supported");
        msg.content += part["text"].get<std::string>();
      }
    } else {
      throw Error(ErrorKind::InvalidArgument, "a message's 'content' must be a string, null or an array of text parts");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

std::vector<GenerationRequest> choices_of(const GenerationRequest& base, const GenerationParams& g) {
  std::vector<GenerationRequest> out(static_cast<size_t>(g.n), base);
  for (size_t i = 0; i < out.size(); ++i)
    if (base.sampling.seed >= 0)  // wraps within [0, INT64_MAX] instead of overflowing
      out[i].sampling.seed = static_cast<int64_t>((static_cast<uint64_t>(base.sampling.seed) + i) & INT64_MAX);
  return out;
}

void chat_completions(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  // Parsed in order for the template (its tojson of tools and arguments shows key order); a copy for the rest.
  const nlohmann::ordered_json ordered = parse_ordered_body(req);
  const json body = ordered;
  std::set<std::string> fields = generation_fields();
  fields.insert({"messages", "logprobs", "top_logprobs", "chat_template_kwargs"});
  check_fields(body, fields);
  GenerationParams g = read_generation_params(body, ctx.service.engine().defaults);
  const bool logprobs = get_bool(body, "logprobs").value_or(false);
  g.sampling.top_logprobs = static_cast<int32_t>(get_integer(body, "top_logprobs", 0, 20).value_or(0));
  g.sampling.logprobs = true;
  resolve_model(ctx, body, g);
  const nlohmann::ordered_json kwargs = ordered.value("chat_template_kwargs", nlohmann::ordered_json::object());
  if (!kwargs.is_object() && !kwargs.is_null())
    throw Error(ErrorKind::InvalidArgument, "'chat_template_kwargs' must be an object");
  const Tokenizer& tok = *ctx.service.engine().tokenizer;
  const std::string prompt = render_chat(ctx.service.chat_template(), read_messages(ordered), true, kwargs);
  GenerationRequest base;
  base.id = req.id;
  base.prompt = encode(tok, prompt, false);
  prepare_request(ctx, g, base, ctx.service.scheduler().max_request_tokens());
  auto format = std::make_unique<ChatFormat>(tok, "chatcmpl-" + req.id, "chat.completion",
                                             get_string(body, "model").value_or(ctx.model_name), logprobs,
                                             g.include_usage);
  std::make_shared<GenerationJob>(ctx, r, std::move(format), g.stream)->run(choices_of(base, g));
}

void completions(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  std::set<std::string> fields = generation_fields();
  fields.insert({"prompt", "logprobs", "echo", "suffix"});
  check_fields(body, fields);
  if (get_bool(body, "echo").value_or(false)) throw Error(ErrorKind::Unsupported, "'echo' is not supported");
  if (get_string(body, "suffix")) throw Error(ErrorKind::Unsupported, "'suffix' is not supported");
  GenerationParams g = read_generation_params(body, ctx.service.engine().defaults);
  const auto logprobs = get_integer(body, "logprobs", 0, 5);
  g.sampling.top_logprobs = static_cast<int32_t>(logprobs.value_or(0));
  resolve_model(ctx, body, g);
  const Tokenizer& tok = *ctx.service.engine().tokenizer;
  GenerationRequest base;
  base.id = req.id;
  base.prompt = read_prompt(body, tok);
  prepare_request(ctx, g, base, 16);  // OpenAI's default max_tokens for completions
  auto format = std::make_unique<CompletionFormat>(tok, "cmpl-" + req.id, "text_completion",
                                                   get_string(body, "model").value_or(ctx.model_name),
                                                   logprobs.has_value(), g.include_usage);
  std::make_shared<GenerationJob>(ctx, r, std::move(format), g.stream)->run(choices_of(base, g));
}

void models(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  const int64_t now = unix_now();
  json data = json::array({{{"id", ctx.model_name}, {"object", "model"}, {"created", now}, {"owned_by", "hyprstream"}}});
  AdapterRegistry& reg = ctx.service.registry();
  for (const AdapterListing& a : reg.list()) {
    if (!a.manifest || a.manifest->base_fingerprint != reg.base_fingerprint()) continue;
    data.push_back({{"id", a.name}, {"object", "model"}, {"created", now}, {"owned_by", "hyprstream"},
                    {"parent", ctx.model_name}, {"root", ctx.model_name}, {"version", a.manifest->current}});
  }
  reply_json(*r, 200, {{"object", "list"}, {"data", data}});
}

}  // namespace

void add_openai_routes(ApiContext& ctx, http::Router& router) {
  add_route(ctx, router, "POST", "/v1/chat/completions", chat_completions, Runs::OnReaderPool);
  add_route(ctx, router, "POST", "/v1/completions", completions, Runs::OnReaderPool);
  add_route(ctx, router, "GET", "/v1/models", models, Runs::OnReaderPool);
}

}  // namespace hs::api
