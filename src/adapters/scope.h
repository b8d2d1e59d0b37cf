#pragma once
// A domain adapter's relevance scope (issue 12): the prompts it was taught, as the base model sees them, and
// for each a radius within which a request counts as near it. Requests outside every one get the base model,
// so teaching a domain new facts leaves its answers to everything else unchanged (the GRACE / WISE idea of an
// edit that applies only near its keys; bench/learning_scope.py chose the keys and the rule by measurement).
//
// Keys are the base model's hidden states after `layers` decoder layers, at every token of a taught prompt,
// scaled to unit length. A request's similarity to a taught prompt is the lowest, over the taught prompt's
// compared tokens, of that token's best cosine with any of the request's tokens: every taught token, the
// subject's included, must have a close match. Each taught prompt has a radius, the highest similarity a
// built-in general prompt has to it; a request is inside when its similarity to some taught prompt exceeds the
// highest radius of the scope (adapters/scope_index.cpp says why, and the exception). Torch-free.
//
// Stored beside the adapter version it belongs to (v00000007.scope) and in the trainer's checkpoint: magic
// "HSSCOPE2", u64 JSON length, JSON (layers, dim, rows, and per taught prompt its tokens, key rows, first
// compared token, radius and, when it has one, its memory: "memory" tokens and "memory_opening"), float32 keys
// [rows, dim], CRC-32 of all before. Scopes written before memories existed read with none.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

// A taught conversation kept whole (issue 12): a request inside the scope near its prompt is served with it
// recalled as the conversation's earlier turns, as in-context knowledge editing (IKE) does, so that a
// paraphrase is answered from the taught answer itself. Empty for an example that was not a conversation.
struct ScopeMemory {
  std::vector<int32_t> tokens;  // the rendered conversation, its answer's end-of-turn and what follows it
  uint32_t opening = 0;         // its leading tokens before its turns (the system block), which a request's
                                // prompt must start with for the conversation to be placed after them
};

struct ScopeExample {
  std::vector<int32_t> tokens;  // the taught prompt: the tokens before its first target
  std::vector<uint32_t> rows;   // per token, its key's row in AdapterScope::keys
  // Tokens before this one are the chat template's opening that every templated prompt shares (its system
  // prompt): keyed, for their context, but not compared, so that a request is judged on its own content.
  uint32_t first = 0;
  double radius = 0;  // a request is near this prompt above this similarity
  ScopeMemory memory;
};

struct AdapterScope {
  int64_t layers = 0;  // decoder layers of the base model the keys are read after
  int64_t dim = 0;     // the model's hidden size
  std::vector<float> keys;  // [rows, dim], unit length; prompts sharing a prefix share its rows
  std::vector<ScopeExample> examples;

  int64_t rows() const { return dim > 0 ? static_cast<int64_t>(keys.size()) / dim : 0; }
  bool empty() const { return examples.empty(); }
  size_t bytes() const;  // held in memory: keys, and each example with its tokens, rows and memory
};

// How many leading tokens `a` and `b` share.
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b);

// Whether a memory can be placed in a prompt: none at all, or an opening of at least one token and turns after it.
bool valid_memory(const ScopeMemory& memory);

// Adds a taught prompt with its unit keys (tokens.size() rows of `dim` floats). The rows of the longest prefix
// it shares with a prompt already there are reused (causal attention: the same prefix has the same hidden
// states); a prompt taught before keeps its keys and radius and takes the newer memory (a correction's, or
// none when it was not a conversation). Throws InvalidArgument for a memory that fails valid_memory.
void add_scope_example(AdapterScope& scope, const std::vector<int32_t>& tokens, const float* keys, uint32_t first,
                       double radius, ScopeMemory memory = {});

// The opening `tokens` shares with every prompt of `general` (ScopeExample::first), leaving at least one token.
uint32_t shared_opening(const AdapterScope& general, const std::vector<int32_t>& tokens);

// Throws InvalidArgument for a non-finite radius (it could not be read back).
std::string scope_to_bytes(const AdapterScope& scope);
// Throws CorruptFile naming `where` for anything but a complete, consistent scope.
AdapterScope scope_from_bytes(std::string_view bytes, const std::string& where);
// The scope stored at `path`; throws CorruptFile for a missing or damaged one.
AdapterScope read_scope_file(const std::string& path);

}  // namespace hs
