#pragma once
// The Metaspace pre-tokenizer of SentencePiece-style tokenizer.json files: spaces become "▁", a "▁" is
// prepended by the scheme, and with `split` each "▁" starts a new piece (MergedWithNext).
#include <string>
#include <string_view>
#include <vector>

namespace hs {

struct Metaspace {
  enum class Prepend { Always, First, Never };
  std::string replacement = "\xE2\x96\x81";  // U+2581 "▁"
  Prepend prepend = Prepend::Always;
  bool split = true;
};

// `at_text_start`: the piece begins the input text (scheme First prepends only there); `at_segment_start`: it
// begins the text or follows an added token (scheme Always prepends there, not to text continuing a segment).
void metaspace_pre_tokenize(const Metaspace& m, std::string_view piece, bool at_text_start, bool at_segment_start,
                            std::vector<std::string>& out);

}  // namespace hs
