#pragma once
// BPE tokenizers built from a Hugging Face tokenizer.json or from GGUF metadata, in two families:
// byte-level (GPT-2 style: Qwen3, SmolLM2, Llama 3) and SentencePiece style (Llama 2, Mistral: text symbols,
// "▁" for spaces, <0xXX> byte fallback). Behaviour follows the `tokenizers` library: non-normalized added
// tokens are split out first, then normalisation, normalized added tokens, pre-tokenisation, BPE merges;
// GGUF `llama` vocabularies merge by token score as llama.cpp does.
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/metaspace.h"
#include "tokenizer/normalizer.h"

namespace hs {

struct GgufFile;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;  // matched in the normalized text, against its own normalized content
  std::string match;        // the text matched: content, normalized when `normalized`
};

struct SplitRegex;  // a compiled pre-tokenizer pattern (PCRE2), see pretokenizer.h

struct PreTokenizerRule {
  std::shared_ptr<const SplitRegex> regex;
  bool remove_matches = false;  // "Removed" behaviour; otherwise matches are isolated pieces
};

// How the text of SentencePiece-style tokens is decoded (tokenizer.json decoders Replace, ByteFallback, Fuse,
// Strip and Metaspace, reduced to what they do to a token and to the start of the text).
struct PieceDecoding {
  std::vector<std::pair<std::string, std::string>> replacements;  // applied to every token's text, in order
  bool byte_fallback = false;             // a "<0xXX>" token is the byte XX
  std::string drop_in_first_token;        // Metaspace decoder: removed from the first token instead of replaced
  char strip_char = ' ';
  int strip_leading = 0;  // Strip after Fuse: up to this many strip_char removed from the start of the text
};

struct Tokenizer {
  // As the vocabulary stores tokens (byte-level symbols, or text with "▁"); added tokens as their content
  // (normalized ones as their normalized content, which is what `tokenizers` decodes).
  std::vector<std::string> id_to_token;
  std::unordered_map<std::string, int32_t> token_to_id;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left id, right id) -> (rank, merged id)
  std::vector<AddedToken> added_tokens;  // longest first, so that matching prefers the longest
  // Indices into added_tokens by the first byte of their match, longest first: [0] raw, [1] normalized.
  std::array<std::array<std::vector<uint32_t>, 256>, 2> added_by_first_byte;
  std::vector<uint8_t> is_special;       // by id: control tokens, skipped when decoding for display
  std::vector<uint8_t> is_added;         // by id: id_to_token holds raw text, not byte-level symbols
  std::vector<PreTokenizerRule> pre_rules;
  std::vector<NormalizerStep> normalizer;
  std::optional<Metaspace> metaspace;  // pre-tokenizer of SentencePiece-style tokenizer.json files
  bool byte_level = true;              // symbols are GPT-2's byte-mapped characters; otherwise UTF-8 text
  bool add_prefix_space = false;
  bool ignore_merges = false;  // a whole piece found in the vocabulary is emitted as is (Llama 3)
  bool byte_fallback = false;  // a character missing from the vocabulary becomes its <0xXX> byte tokens
  bool fuse_unk = false;       // consecutive unknown characters become one unk token
  // GGUF `llama` vocabularies: the adjacent pair whose merged token scores highest is merged first (llama.cpp
  // SPM); no merge table.
  std::vector<float> scores;
  PieceDecoding decoding;  // used when !byte_level
  std::vector<int32_t> prefix_ids, suffix_ids;  // added by encode(..., add_special_tokens=true)
  int32_t bos_id = -1, eos_id = -1, pad_id = -1;
  int32_t unk_id = -1;  // BPE symbol missing from the vocabulary: this id, or dropped when -1 (as `tokenizers` does)
  std::string chat_template;
  std::string source;

  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token.size()); }
  int32_t find_token(const std::string& text) const;  // -1 when absent
  // Builds added_by_first_byte; called once added_tokens is in its final order.
  void index_added_tokens();
};

// Loads tokenizer.json (and tokenizer_config.json beside it for the chat template and special tokens).
std::shared_ptr<Tokenizer> load_tokenizer_json(const std::string& folder);
std::shared_ptr<Tokenizer> load_tokenizer_gguf(const GgufFile& gguf);
// A folder holding tokenizer.json, or a .gguf file; null when the model ships no tokenizer.
std::shared_ptr<Tokenizer> load_tokenizer(const std::string& model_path);

// Throws InvalidArgument if text is not valid UTF-8.
std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text, bool add_special_tokens = false);
// `text` as it is tokenized right after earlier text whose last token is `previous_id` (a completion after its
// prompt): no start-of-text prefix ("▁" of Metaspace "first"), and no segment prefix (Prepend normalizer,
// Metaspace "always", ByteLevel add_prefix_space) unless `previous_id` is an added token, after which
// `tokenizers` starts a segment. Byte-level vocabularies without add_prefix_space encode as encode() does.
std::vector<int32_t> encode_continuation(const Tokenizer& tok, const std::string& text, int32_t previous_id);
// Raw bytes of the tokens (may end inside a UTF-8 sequence when ids were cut mid-character; HF's ByteFallback
// decoder would write U+FFFD for such bytes). SentencePiece decoders strip the leading space here.
std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special = false);
std::string token_bytes(const Tokenizer& tok, int32_t id);

// Where a decoded text stands: SentencePiece decoders treat its first token and leading spaces apart.
struct DecodeState {
  bool first_token = true;
  int strip_left = 0;  // leading characters still to strip
};
// The text of the next token of a sequence (raw bytes, as token_bytes), advancing `state`.
std::string decode_next(const Tokenizer& tok, int32_t id, DecodeState& state);

// Turns a stream of ids into text pieces that are always whole UTF-8; bytes of a character split across
// tokens are held until it completes. Invalid sequences become U+FFFD. A `continuation` follows decoded text
// (generated tokens after their prompt), so SentencePiece decoders keep the space of its first token, as
// transformers' decode(prompt + generated) does.
class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tok, bool skip_special, bool continuation = false)
      : tok_(tok),
        skip_special_(skip_special),
        state_{!continuation, continuation ? 0 : tok.decoding.strip_leading} {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  DecodeState state_;
  std::string pending_;
};

}  // namespace hs
