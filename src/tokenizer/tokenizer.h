#pragma once
// Byte-level BPE tokenizer (the GPT-2 family used by Qwen3, SmolLM2 and Llama 3), built from a
// Hugging Face tokenizer.json or from GGUF metadata. Behaviour follows the `tokenizers` library:
// added tokens are split out first, then normalisation, regex pre-tokenisation, byte mapping, BPE merges.
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace hs {

struct GgufFile;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

struct SplitRegex;  // a compiled pre-tokenizer pattern (PCRE2), see pretokenizer.h

struct PreTokenizerRule {
  std::shared_ptr<const SplitRegex> regex;
  bool remove_matches = false;  // "Removed" behaviour; otherwise matches are isolated pieces
};

struct Tokenizer {
  std::vector<std::string> id_to_token;  // byte-level form for BPE tokens, raw text for added tokens
  std::unordered_map<std::string, int32_t> token_to_id;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left id, right id) -> (rank, merged id)
  std::vector<AddedToken> added_tokens;  // longest first, so that matching prefers the longest
  std::vector<uint8_t> is_special;       // by id: control tokens, skipped when decoding for display
  std::vector<uint8_t> is_added;         // by id: id_to_token holds raw text, not byte-level symbols
  std::vector<PreTokenizerRule> pre_rules;
  bool nfc = false;
  bool add_prefix_space = false;
  bool ignore_merges = false;  // a whole piece found in the vocabulary is emitted as is (Llama 3)
  std::vector<int32_t> prefix_ids, suffix_ids;  // added by encode(..., add_special_tokens=true)
  int32_t bos_id = -1, eos_id = -1, pad_id = -1;
  int32_t unk_id = -1;  // BPE symbol missing from the vocabulary: this id, or dropped when -1 (as `tokenizers` does)
  std::string chat_template;
  std::string source;

  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token.size()); }
  int32_t find_token(const std::string& text) const;  // -1 when absent
};

// Loads tokenizer.json (and tokenizer_config.json beside it for the chat template and special tokens).
std::shared_ptr<Tokenizer> load_tokenizer_json(const std::string& folder);
std::shared_ptr<Tokenizer> load_tokenizer_gguf(const GgufFile& gguf);
// A folder holding tokenizer.json, or a .gguf file; null when the model ships no tokenizer.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& model_path);

// Throws InvalidArgument if text is not valid UTF-8.
std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text, bool add_special_tokens = false);
// Raw bytes of the tokens (may end inside a UTF-8 sequence when ids were cut mid-character).
std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special = false);
std::string token_bytes(const Tokenizer& tok, int32_t id);

// Turns a stream of ids into text pieces that are always whole UTF-8; bytes of a character split across
// tokens are held until it completes. Invalid sequences become U+FFFD.
class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tok, bool skip_special) : tok_(tok), skip_special_(skip_special) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace hs
