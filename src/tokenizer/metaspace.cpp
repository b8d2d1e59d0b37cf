#include "tokenizer/metaspace.h"

#include "tokenizer/normalizer.h"

namespace hs {

void metaspace_pre_tokenize(const Metaspace& m, std::string_view piece, bool at_text_start, bool at_segment_start,
                            std::vector<std::string>& out) {
  if (piece.empty()) return;
  std::string s = replace_all(piece, " ", m.replacement);
  const bool starts_with_replacement = s.compare(0, m.replacement.size(), m.replacement) == 0;
  if (!starts_with_replacement && ((m.prepend == Metaspace::Prepend::Always && at_segment_start) ||
                                   (m.prepend == Metaspace::Prepend::First && at_text_start)))
    s.insert(0, m.replacement);
  if (!m.split) {
    if (!s.empty()) out.push_back(std::move(s));
    return;
  }
  size_t start = 0;
  for (size_t at = s.find(m.replacement, 1); at != std::string::npos; at = s.find(m.replacement, at + 1)) {
    if (at > start) out.push_back(s.substr(start, at - start));
    start = at;
  }
  if (start < s.size()) out.push_back(s.substr(start));
}

}  // namespace hs
