#pragma once
// Learning events: what clients send to teach a domain's adapter. One JSON object per event, e.g.
//   {"id": "e1", "prompt": "Q: ...", "completion": " A ..."}          completion tokens (and EOS) are targets
//   {"id": "e2", "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}   assistant turns are targets
//   {"id": "e3", "text": "..."}                                        every token after the first is a target
//   {"id": "g1", "type": "gradient", "base_version": 7,
//    "gradients": [{"layer": 0, "module": "q_proj", "matrix": "A", "entries": [[row, col, value], ...]}]}
//   {"id": "g2", "type": "gradient", "base_version": 7, "packed": "..."}   the log's form of a checked gradient:
//    base64 of (u32 index into the adapter's values, f32 value) pairs, ascending, little-endian
// "domain" may be given and must then match the domain being trained. Unknown fields are refused, so a
// misspelt field never trains on an empty example. Torch-free.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "adapters/scope.h"
#include "learning/lora_gradients.h"
#include "tokenizer/chat_template.h"

namespace hs {

struct Tokenizer;
struct TileLayout;

enum class EventKind { Example, Gradient };

struct LearningEvent {
  std::string id;
  EventKind kind = EventKind::Example;
  std::string json;  // the event as received, compacted to one line: what the write-ahead log stores
  TrainingExample example;  // Example
  ScopeMemory memory;       // Example given as "messages": the conversation as a scope recalls it (adapters/scope.h)
  uint64_t base_version = 0;                         // Gradient: the version the gradient was computed on
  // Gradient: (index into the adapter's values, d loss / d value), ascending, each index once (repeated
  // coordinates of the submission are summed).
  std::vector<std::pair<int64_t, float>> gradient;
};

// What an event is checked against.
struct EventContext {
  std::string domain;
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat = nullptr;  // null when the model has no usable chat template
  int64_t context_length = 0;
  int64_t max_example_tokens = 0;  // a lower per-example limit of the trainer's; 0: none
  const TileLayout* layout = nullptr;
  // Why a gradient computed on adapter version `version` is refused (empty: accepted); unset skips the check
  // (replaying the log, where the event was checked when it arrived).
  std::function<std::string(uint64_t version)> base_version_problem;
};

// Maximum length of a client-chosen event id.
constexpr size_t kMaxEventIdBytes = 128;

// Parses, tokenizes and checks one event. Throws InvalidArgument (malformed JSON, wrong types, unknown fields,
// empty targets, non-finite gradient values, coordinates outside the pattern, unknown base version) or
// ContextOverflow (an example longer than the context or the per-example limit), each naming the event id
// where one was read. Duplicate keys anywhere in the event are refused.
LearningEvent parse_learning_event(std::string_view text, const EventContext& ctx);

// One LoRA matrix's part of a gradient submission as arrays (the gRPC API's form): views of the caller's memory.
struct GradientPart {
  int64_t layer = 0;
  std::string_view module, matrix;  // "q_proj", ...; "A" or "B"
  const uint32_t* rows = nullptr;
  const uint32_t* cols = nullptr;
  const float* values = nullptr;
  size_t size = 0;
};

// A gradient submission given as arrays, checked as parse_learning_event checks one given as JSON, without
// JSON on the way; its `json` is the packed form the log keeps.
LearningEvent gradient_event(std::string id, uint64_t base_version, const std::vector<GradientPart>& parts,
                             const EventContext& ctx);

// The id of an event: set when the text is a JSON object with a non-empty string "id". Never throws.
std::optional<std::string> event_id(std::string_view text);

}  // namespace hs
