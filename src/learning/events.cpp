#include "learning/events.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "adapters/tile_layout.h"
#include "common/base64.h"
#include "common/error.h"
#include "common/strict_json.h"
#include "common/utf8.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

using json = nlohmann::json;

[[noreturn]] void reject(const std::string& id, const std::string& why) {
  throw Error(ErrorKind::InvalidArgument, (id.empty() ? "event: " : "event '" + id + "': ") + why);
}

const std::set<std::string> kFields = {"id",   "domain",       "type",      "prompt", "completion", "messages",
                                       "text", "base_version", "gradients", "packed"};

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

// Text that follows the example's tokens, encoded as it is in context (with SentencePiece-style vocabularies,
// no start-of-text "▁").
std::vector<int32_t> encode_after(const Tokenizer& tok, const TrainingExample& ex, const std::string& text) {
  return ex.tokens.empty() ? encode(tok, text, false) : encode_continuation(tok, text, ex.tokens.back());
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
  std::vector<int32_t> target = encode_after(tok, ex, completion);
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
  const std::string system = render_chat_opening(chat, msgs);
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
    append(ex, encode_after(tok, ex, prompt.substr(rendered.size())), false);
    std::vector<int32_t> turn = encode_after(tok, ex, full.substr(prompt.size()));
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

// Checks a gradient submission part by part, entry by entry, into (value index, value) pairs: the one check
// of the JSON form and of the arrays of the gRPC API.
class GradientBuilder {
 public:
  GradientBuilder(const EventContext& ctx, const std::string& id, uint64_t base_version) : ctx_(ctx), id_(id) {
    if (base_version == 0)
      reject(id, "a gradient needs \"base_version\": the adapter version it was computed on (a positive integer)");
    if (ctx.base_version_problem)
      if (const std::string problem = ctx.base_version_problem(base_version); !problem.empty()) reject(id, problem);
  }

  void reserve(size_t entries) { gradient_.reserve(entries); }

  // Starts the part of one LoRA matrix; `where` names it for later messages.
  void part(int64_t layer, std::string_view module_name, std::string_view matrix) {
    if (matrix != "A" && matrix != "B") reject(id_, "\"matrix\" must be \"A\" or \"B\", not '" + std::string(matrix) + "'");
    if (layer < 0 || layer > (1 << 20)) reject(id_, "\"layer\" must be a layer index, not " + std::to_string(layer));
    LoraModule module;
    try {
      module = parse_lora_module(module_name);
    } catch (const Error& e) {
      reject(id_, e.what());
    }
    tensor_ = ctx_.layout->find(layer, module, matrix == "B", tensor_ + 1);
    layer_ = layer;
    module_ = module;
    b_ = matrix == "B";
    if (tensor_ < 0) reject(id_, "the adapter has no " + where());
  }

  // The part's name for messages, made only for one.
  std::string where() const { return "layer " + std::to_string(layer_) + " " + lora_module_name(module_) + (b_ ? ".B" : ".A"); }

  // Coordinates outside int64 or negative are passed as -1. False when the entry lies outside the pattern.
  bool add(int64_t row, int64_t col, double value) {
    if (!std::isfinite(value) || std::fabs(value) > 3.4e38) reject(id_, "a gradient value of " + where() + " is not finite");
    const int64_t index = value_index(*ctx_.layout, tensor_, row, col);
    if (index < 0) return false;
    gradient_.emplace_back(index, static_cast<float>(value));
    return true;
  }

  // Sums repeated coordinates in the order given, as accumulating them into a dense vector would.
  std::vector<std::pair<int64_t, float>> finish() {
    if (gradient_.empty()) reject(id_, "the gradient has no entries");
    std::stable_sort(gradient_.begin(), gradient_.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    size_t out = 0;
    for (size_t i = 0; i < gradient_.size(); ++i) {
      if (out > 0 && gradient_[out - 1].first == gradient_[i].first) {
        gradient_[out - 1].second += gradient_[i].second;
      } else {
        gradient_[out++] = gradient_[i];
      }
    }
    gradient_.resize(out);
    return std::move(gradient_);
  }

 private:
  const EventContext& ctx_;
  const std::string& id_;
  int64_t tensor_ = -1, layer_ = 0;
  LoraModule module_{};
  bool b_ = false;
  std::vector<std::pair<int64_t, float>> gradient_;
};

// The log's form of a checked gradient: (u32 value index, f32 value) pairs, ascending, little-endian, base64.
std::string pack_gradient(const std::vector<std::pair<int64_t, float>>& gradient) {
  std::string bytes(gradient.size() * 8, '\0');
  for (size_t i = 0; i < gradient.size(); ++i) {
    if (gradient[i].first > UINT32_MAX)
      throw Error(ErrorKind::Unsupported, "an adapter of more than 2^32 values cannot log packed gradients");
    const uint32_t index = static_cast<uint32_t>(gradient[i].first);
    std::memcpy(&bytes[i * 8], &index, 4);
    std::memcpy(&bytes[i * 8 + 4], &gradient[i].second, 4);
  }
  return base64_encode(bytes);
}

void unpack_gradient(const json& j, const EventContext& ctx, const std::string& id, LearningEvent& ev) {
  if (j.contains("gradients")) reject(id, "a gradient has \"gradients\" or \"packed\", not both");
  if (!j["packed"].is_string()) reject(id, "\"packed\" must be a base64 string");
  const std::string bytes = base64_decode(j["packed"].get<std::string>(), "event '" + id + "': \"packed\"");
  if (bytes.empty() || bytes.size() % 8 != 0) reject(id, "\"packed\" must hold (index, value) pairs of 8 bytes");
  const int64_t limit = ctx.layout->num_values();
  for (size_t at = 0; at < bytes.size(); at += 8) {
    uint32_t index;
    float value;
    std::memcpy(&index, &bytes[at], 4);
    std::memcpy(&value, &bytes[at + 4], 4);
    if (static_cast<int64_t>(index) >= limit || (!ev.gradient.empty() && index <= ev.gradient.back().first))
      reject(id, "\"packed\" indices must ascend within the adapter's " + std::to_string(limit) + " values");
    if (!std::isfinite(value)) reject(id, "a packed gradient value is not finite");
    ev.gradient.emplace_back(index, value);
  }
}

std::string outside_pattern(const std::string& where, const std::string& row, const std::string& col) {
  return "entry (" + row + ", " + col + ") of " + where + " lies outside the adapter's sparsity pattern";
}

void gradient_submission(const json& j, const EventContext& ctx, const std::string& id, LearningEvent& ev) {
  const json& bv = j.contains("base_version") ? j["base_version"] : json();
  ev.base_version = bv.is_number_unsigned() ? bv.get<uint64_t>() : 0;
  GradientBuilder g(ctx, id, ev.base_version);
  if (j.contains("packed")) return unpack_gradient(j, ctx, id, ev);
  if (!j.contains("gradients") || !j["gradients"].is_array() || j["gradients"].empty())
    reject(id, "\"gradients\" must be a non-empty array of {layer, module, matrix, entries}");
  for (const json& part : j["gradients"]) {
    if (!part.is_object() || part.size() != 4 || !part.contains("layer") || !part.contains("module") ||
        !part.contains("matrix") || !part.contains("entries"))
      reject(id, "each gradient part must have exactly \"layer\", \"module\", \"matrix\" and \"entries\"");
    if (!part["layer"].is_number_unsigned() || part["layer"].get<uint64_t>() > (1u << 20))
      reject(id, "\"layer\" must be a layer index, not " + part["layer"].dump());
    if (!part["module"].is_string() || !part["matrix"].is_string()) reject(id, "\"module\" and \"matrix\" must be strings");
    g.part(part["layer"].get<int64_t>(), part["module"].get<std::string>(), part["matrix"].get<std::string>());
    if (!part["entries"].is_array()) reject(id, "\"entries\" of " + g.where() + " must be an array of [row, col, value]");
    for (const json& e : part["entries"]) {
      if (!e.is_array() || e.size() != 3 || !e[0].is_number_integer() || !e[1].is_number_integer() || !e[2].is_number())
        reject(id, "every entry of " + g.where() + " must be [row, col, value] with integer row and col");
      // Coordinates beyond int64 (or negative) are outside every pattern; the message quotes them as sent.
      auto coordinate = [](const json& v) {
        return v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX) ? v.get<int64_t>() : -1;
      };
      if (!g.add(coordinate(e[0]), coordinate(e[1]), e[2].get<double>()))
        reject(id, outside_pattern(g.where(), e[0].dump(), e[1].dump()));
    }
  }
  ev.gradient = g.finish();
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

LearningEvent gradient_event(std::string id, uint64_t base_version, const std::vector<GradientPart>& parts,
                             const EventContext& ctx) {
  if (id.empty()) reject("", "every event needs a non-empty \"id\" (duplicates are applied once)");
  if (id.size() > kMaxEventIdBytes) reject("", "event ids are at most 128 bytes");
  if (!utf8_is_valid(id)) reject("", "event ids must be UTF-8");
  GradientBuilder g(ctx, id, base_version);
  if (parts.empty()) reject(id, "the gradient has no parts");
  size_t entries = 0;
  for (const GradientPart& p : parts) entries += p.size;
  g.reserve(entries);
  for (const GradientPart& p : parts) {
    g.part(p.layer, p.module, p.matrix);
    for (size_t i = 0; i < p.size; ++i)
      if (!g.add(p.rows[i], p.cols[i], p.values[i]))
        reject(id, outside_pattern(g.where(), std::to_string(p.rows[i]), std::to_string(p.cols[i])));
  }
  LearningEvent ev;
  ev.gradient = g.finish();  // before the id moves: the builder names it in its messages
  ev.id = std::move(id);
  ev.kind = EventKind::Gradient;
  ev.base_version = base_version;
  // Spelt out rather than dumped: the packed text needs no escaping, and is most of the line.
  ev.json = "{\"id\":" + json(ev.id).dump() + ",\"type\":\"gradient\",\"base_version\":" +
            std::to_string(base_version) + ",\"packed\":\"" + pack_gradient(ev.gradient) + "\"}";
  return ev;
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
  std::string type = j.contains("type")                                  ? string_field(j, "type", ev.id)
                     : j.contains("gradients") || j.contains("packed") ? "gradient"
                                                                       : "example";
  const int forms = j.contains("prompt") + j.contains("messages") + j.contains("text");
  if (type == "gradient") {
    if (forms > 0 || j.contains("completion")) reject(ev.id, "a gradient event carries no prompt, messages or text");
    ev.kind = EventKind::Gradient;
    gradient_submission(j, ctx, ev.id, ev);
  } else if (type == "example") {
    if (j.contains("base_version") || j.contains("gradients") || j.contains("packed"))
      reject(ev.id, "an example carries no \"base_version\", \"gradients\" or \"packed\"");
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
