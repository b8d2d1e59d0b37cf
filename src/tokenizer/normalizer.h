#pragma once
// The tokenizer.json normalizers we implement, as an ordered list of steps (a Sequence flattened):
// NFC and NFKC (utf8proc), Prepend, and Replace of a literal string. Llama 2 and Mistral use
// Sequence[Prepend("▁"), Replace(" ", "▁")].
#include <string>
#include <string_view>
#include <vector>

namespace hs {

struct NormalizerStep {
  enum class Kind { Nfc, Nfkc, Prepend, Replace };
  Kind kind = Kind::Nfc;
  std::string text;  // Prepend: the prefix; Replace: the string replaced
  std::string with;  // Replace: its replacement
};

// Applies the steps in order. Prepend leaves an empty text empty, as `tokenizers` does; `prepend` false skips
// it, for text that continues earlier text rather than starting a segment.
std::string normalize(const std::vector<NormalizerStep>& steps, std::string_view text, bool prepend = true);

std::string replace_all(std::string_view text, std::string_view from, std::string_view to);

}  // namespace hs
