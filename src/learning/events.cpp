#include "learning/events.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>

#include "adapters/tile_layout.h"
#include "common/error.h"
#include "common/strict_json.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

using json = nlohmann::json;

[[noreturn]] void reject(const std::string& id, const std::string& why) {
  throw Error(ErrorKind::InvalidArgument, (id.empty() ? "event: " : "event '" + id + "': ") + why);
}

const std::set<std::string> kFields = {"id",       "domain", "type",         "prompt",   "completion",
                                       "messages", "text",   "base_version", "gradients"};

std::string string_field(const json& j, const char* key, const std::string& id) {
  const json& v = j.at(key);
  if (!v.is_string()) reject(id, std::string("\"") + key + "\" must be a string");
  return v.get<std::string>();
}

void check_length(TrainingExample& ex, const EventContext& ctx, const std::string& id) {
  const int64_t n = static_cast<int64_t>(ex.tokens.size());
  if (n > ctx.context_length)
    throw Error(ErrorKind::ContextOverflow, "event '" + id + "': the example has " + std::to_string(n) +
                                                " tokens; the model's context holds " +
                                                std::to_string(ctx.context_length));
  if (ctx.max_example_tokens > 0 && n > ctx.max_example_tokens)
    throw Error(ErrorKind::ContextOverflow, "event '" + id + "': the example has " + std::to_string(n) +
                                                " tokens; this domain trains on at most " +
                                                std::to_string(ctx.max_example_tokens) +
                                                " per example (--max-example-tokens): split it");
  bool any = false;
  for (size_t t = 1; t < ex.is_target.size(); ++t) any = any || ex.is_target[t];
  if (!any) reject(id, "the example has no target tokens to learn from");
}

void append(TrainingExample& ex, const std::vector<int32_t>& ids, bool target) {
  ex.tokens.insert(ex.tokens.end(), ids.begin(), ids.end());
  ex.is_target.insert(ex.is_target.end(), ids.size(), target ? 1 : 0);
}

TrainingExample prompt_completion(const json& j, const EventContext& ctx, const std::string& id) {
  if (!j.contains("completion")) reject(id, "an example with \"prompt\" needs a \"completion\"");
  const std::string prompt = string_field(j, "prompt", id), completion = string_field(j, "completion", id);
  if (completion.empty()) reject(id, "the completion is empty: there is nothing to learn");
  const Tokenizer& tok = *ctx.tokenizer;
  TrainingExample ex;
  append(ex, encode(tok, prompt, /*add_special_tokens=*/true), false);
  std::vector<int32_t> target = encode(tok, completion, false);
  if (tok.eos_id >= 0) target.push_back(tok.eos_id);  // so the model learns where the answer ends
  append(ex, target, true);
  return ex;
}

TrainingExample plain_text(const json& j, const EventContext& ctx, const std::string& id) {
  const std::string text = string_field(j, "text", id);
  TrainingExample ex;
  append(ex, encode(*ctx.tokenizer, text, true), true);
  if (!ex.is_target.empty()) ex.is_target[0] = 0;
  if (ex.tokens.size() < 2) reject(id, "the text is too short to learn from (it needs at least two tokens)");
  return ex;
}

// The conversation as a scope recalls it before a later request's turns: rendered as earlier turns, led by its
// system block (its own, or the template's default), which a request must open with. None without a system
// block, as a request's turns could then not be told from a system prompt of its own, or when the block's
// tokens are not those the conversation starts with. `msgs` holds an assistant message.
ScopeMemory conversation_memory(const ChatTemplate& chat, const Tokenizer& tok, std::vector<ChatMessage> msgs) {
  while (msgs.back().role != "assistant") msgs.pop_back();  // an unanswered turn teaches nothing to recall
  std::string system;
  if (msgs.front().role == "system")
    system = render_chat(chat, {msgs.front()}, false);
  else if (!chat.default_system.empty())
    system = render_chat(chat, {{"system", chat.default_system}}, false);
  if (system.empty()) return {};
  ScopeMemory m{encode(tok, render_chat_history(chat, msgs), false), 0};
  const std::vector<int32_t> opening = encode(tok, system, false);
  if (opening.size() >= m.tokens.size() || common_prefix(opening, m.tokens) < opening.size()) return {};
  m.opening = static_cast<uint32_t>(opening.size());
  return m;
}

// Each assistant turn is rendered after the conversation before it with the generation prompt, exactly the
// prompt the model sees when it answers; the turn's tokens up to its end-of-turn token are targets.
TrainingExample chat_messages(const json& j, const EventContext& ctx, const std::string& id, ScopeMemory& memory) {
  if (!ctx.chat) reject(id, "the model has no chat template this server understands; send prompt/completion");
  const json& arr = j.at("messages");
  if (!arr.is_array() || arr.empty()) reject(id, "\"messages\" must be a non-empty array");
  std::vector<ChatMessage> msgs;
  for (const json& m : arr) {
    if (!m.is_object() || !m.contains("role") || !m.contains("content") || !m["role"].is_string() ||
        !m["content"].is_string() || m.size() != 2)
      reject(id, "every message must be an object with string \"role\" and \"content\" and nothing else");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant")
      reject(id, "message role '" + role + "' is not system, user or assistant");
    msgs.push_back({role, m["content"].get<std::string>()});
  }
  const Tokenizer& tok = *ctx.tokenizer;
  TrainingExample ex;
  std::string rendered;  // what ex.tokens holds, as text
  bool any_assistant = false;
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i].role != "assistant") continue;
    if (msgs[i].content.empty()) reject(id, "assistant message " + std::to_string(i) + " is empty");
    any_assistant = true;
    const std::vector<ChatMessage> before(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(i));
    const std::vector<ChatMessage> through(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(i) + 1);
    const std::string prompt = render_chat(*ctx.chat, before, true);
    const std::string full = render_chat(*ctx.chat, through, false);
    if (prompt.compare(0, rendered.size(), rendered) != 0 || full.compare(0, prompt.size(), prompt) != 0)
      reject(id, "the chat template does not render this conversation incrementally; send prompt/completion");
    append(ex, encode(tok, prompt.substr(rendered.size()), false), false);
    std::vector<int32_t> turn = encode(tok, full.substr(prompt.size()), false);
    auto end = std::find(turn.begin(), turn.end(), tok.eos_id);  // the end-of-turn token ends the target
    const size_t n_target = end == turn.end() ? turn.size() : static_cast<size_t>(end - turn.begin()) + 1;
    ex.tokens.insert(ex.tokens.end(), turn.begin(), turn.end());
    for (size_t k = 0; k < turn.size(); ++k) ex.is_target.push_back(k < n_target ? 1 : 0);
    rendered = full;
  }
  if (!any_assistant) reject(id, "the conversation has no assistant message to learn from");
  memory = conversation_memory(*ctx.chat, tok, msgs);
  return ex;
}

int64_t value_index(const TileLayout& layout, int64_t tensor, int64_t row, int64_t col) {
  const LoraTensorInfo& t = layout.tensors[static_cast<size_t>(tensor)];
  if (row < 0 || col < 0 || row >= t.rows || col >= t.cols) return -1;
  const TilePos want{static_cast<int32_t>(row / kTileSize), static_cast<int32_t>(col / kTileSize)};
  auto first = layout.tiles.begin() + t.first_tile, last = first + t.num_tiles;
  auto it = std::lower_bound(first, last, want, [](const TilePos& a, const TilePos& b) {
    return a.row != b.row ? a.row < b.row : a.col < b.col;
  });
  if (it == last || it->row != want.row || it->col != want.col) return -1;
  const int64_t g = it - layout.tiles.begin();
  return g * kTileValues + (row % kTileSize) * kTileSize + col % kTileSize;
}

void gradient_submission(const json& j, const EventContext& ctx, const std::string& id, LearningEvent& ev) {
  const json& bv = j.contains("base_version") ? j["base_version"] : json();
  if (!bv.is_number_unsigned() || bv.get<uint64_t>() == 0)
    reject(id, "a gradient needs \"base_version\": the adapter version it was computed on (a positive integer)");
  ev.base_version = bv.get<uint64_t>();
  if (ctx.version_exists && !ctx.version_exists(ev.base_version))
    reject(id, "base version " + std::to_string(ev.base_version) +
                   " no longer exists for this adapter; recompute the gradient on the current version");
  if (!j.contains("gradients") || !j["gradients"].is_array() || j["gradients"].empty())
    reject(id, "\"gradients\" must be a non-empty array of {layer, module, matrix, entries}");
  const TileLayout& layout = *ctx.layout;
  for (const json& part : j["gradients"]) {
    if (!part.is_object() || part.size() != 4 || !part.contains("layer") || !part.contains("module") ||
        !part.contains("matrix") || !part.contains("entries"))
      reject(id, "each gradient part must have exactly \"layer\", \"module\", \"matrix\" and \"entries\"");
    if (!part["layer"].is_number_unsigned() || part["layer"].get<uint64_t>() > (1u << 20))
      reject(id, "\"layer\" must be a layer index, not " + part["layer"].dump());
    if (!part["module"].is_string() || !part["matrix"].is_string()) reject(id, "\"module\" and \"matrix\" must be strings");
    const std::string matrix = part["matrix"].get<std::string>();
    if (matrix != "A" && matrix != "B") reject(id, "\"matrix\" must be \"A\" or \"B\", not '" + matrix + "'");
    LoraModule module;
    try {
      module = parse_lora_module(part["module"].get<std::string>());
    } catch (const Error& e) {
      reject(id, e.what());
    }
    const int64_t layer = part["layer"].get<int64_t>();
    const int64_t tensor = layout.find(layer, module, matrix == "B");
    const std::string where = "layer " + std::to_string(layer) + " " + lora_module_name(module) + "." + matrix;
    if (tensor < 0) reject(id, "the adapter has no " + where);
    if (!part["entries"].is_array()) reject(id, "\"entries\" of " + where + " must be an array of [row, col, value]");
    for (const json& e : part["entries"]) {
      if (!e.is_array() || e.size() != 3 || !e[0].is_number_integer() || !e[1].is_number_integer() || !e[2].is_number())
        reject(id, "every entry of " + where + " must be [row, col, value] with integer row and col");
      const double value = e[2].get<double>();
      if (!std::isfinite(value) || std::fabs(value) > 3.4e38) reject(id, "a gradient value of " + where + " is not finite");
      // Coordinates beyond int64 (or negative) are outside every pattern; the message quotes them as sent.
      auto coordinate = [](const json& v) {
        return v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX) ? v.get<int64_t>() : -1;
      };
      const int64_t index = value_index(layout, tensor, coordinate(e[0]), coordinate(e[1]));
      if (index < 0)
        reject(id, "entry (" + e[0].dump() + ", " + e[1].dump() + ") of " + where +
                       " lies outside the adapter's sparsity pattern");
      ev.gradient.emplace_back(index, static_cast<float>(value));
    }
  }
  if (ev.gradient.empty()) reject(id, "the gradient has no entries");
  // Sum repeated coordinates in the order given, as accumulating them into a dense vector would.
  std::stable_sort(ev.gradient.begin(), ev.gradient.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  size_t out = 0;
  for (size_t i = 0; i < ev.gradient.size(); ++i) {
    if (out > 0 && ev.gradient[out - 1].first == ev.gradient[i].first) {
      ev.gradient[out - 1].second += ev.gradient[i].second;
    } else {
      ev.gradient[out++] = ev.gradient[i];
    }
  }
  ev.gradient.resize(out);
}

LearningEvent parse_checked(std::string_view text, const EventContext& ctx);

}  // namespace

LearningEvent parse_learning_event(std::string_view text, const EventContext& ctx) {
  try {
    return parse_checked(text, ctx);
  } catch (const json::exception& e) {  // a value of an unexpected type or range deep inside the event
    reject("", std::string("malformed event: ") + e.what());
  }
}

std::optional<std::string> event_id(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("id") || !j["id"].is_string() || j["id"].get<std::string>().empty())
    return std::nullopt;
  return j["id"].get<std::string>();
}

namespace {

LearningEvent parse_checked(std::string_view text, const EventContext& ctx) {
  const json j = parse_strict_json(text, "the event");
  if (!j.is_object()) reject("", "an event must be a JSON object");
  if (!j.contains("id") || !j["id"].is_string() || j["id"].get<std::string>().empty())
    reject("", "every event needs a non-empty string \"id\" (duplicates are applied once)");
  LearningEvent ev;
  ev.id = j["id"].get<std::string>();
  if (ev.id.size() > kMaxEventIdBytes) reject("", "event ids are at most 128 bytes");
  for (const auto& [key, value] : j.items())
    if (!kFields.count(key)) reject(ev.id, "unknown field \"" + key + "\"");
  if (j.contains("domain") && string_field(j, "domain", ev.id) != ctx.domain)
    reject(ev.id, "the event is for domain '" + j["domain"].get<std::string>() + "', not '" + ctx.domain + "'");
  std::string type = j.contains("type") ? string_field(j, "type", ev.id) : (j.contains("gradients") ? "gradient" : "example");
  const int forms = j.contains("prompt") + j.contains("messages") + j.contains("text");
  if (type == "gradient") {
    if (forms > 0 || j.contains("completion")) reject(ev.id, "a gradient event carries no prompt, messages or text");
    ev.kind = EventKind::Gradient;
    gradient_submission(j, ctx, ev.id, ev);
  } else if (type == "example") {
    if (j.contains("base_version") || j.contains("gradients"))
      reject(ev.id, "an example carries no \"base_version\" or \"gradients\"");
    if (forms != 1) reject(ev.id, "an example needs exactly one of \"prompt\" (with \"completion\"), \"messages\" or \"text\"");
    if (j.contains("completion") && !j.contains("prompt")) reject(ev.id, "\"completion\" needs a \"prompt\"");
    ev.kind = EventKind::Example;
    ev.example = j.contains("prompt") ? prompt_completion(j, ctx, ev.id)
                 : j.contains("text") ? plain_text(j, ctx, ev.id)
                                      : chat_messages(j, ctx, ev.id, ev.memory);
    check_length(ev.example, ctx, ev.id);
  } else {
    reject(ev.id, "\"type\" must be \"example\" or \"gradient\", not '" + type + "'");
  }
  ev.json = j.dump();
  return ev;
}

}  // namespace

}  // namespace hs
