#pragma once
// Regex pre-tokenisation with PCRE2 in UTF + Unicode-property mode, matching the `tokenizers` Split
// pre-tokenizer with the Isolated / Removed behaviours.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hs {

struct SplitRegex;

// The pattern GPT-2's ByteLevel pre-tokenizer uses when use_regex is true.
extern const char* const kGpt2SplitPattern;

std::shared_ptr<const SplitRegex> compile_split_regex(const std::string& pattern);

// Splits text into pieces: the matches of the pattern and the text between them (unless remove_matches).
void split_by_regex(const SplitRegex& re, std::string_view text, bool remove_matches,
                    std::vector<std::string_view>& out);

}  // namespace hs
