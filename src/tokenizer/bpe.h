#pragma once
// The BPE models: merges by rank (tokenizer.json, GGUF gpt2) and, for GGUF `llama` vocabularies, merges by the
// merged token's score as llama.cpp's SentencePiece tokenizer does.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

struct Tokenizer;

// One pre-tokenized piece (byte-level symbols or UTF-8 text, as the vocabulary stores them) to ids.
void bpe_encode_piece(const Tokenizer& tok, std::string_view piece, std::vector<int32_t>& out);

// "<0xXX>": the SentencePiece token of a byte, for byte fallback.
std::string byte_token_name(unsigned char b);

}  // namespace hs
