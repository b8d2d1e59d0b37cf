#include "tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <climits>
#include <cstdlib>

#include "common/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/byte_level.h"
#include "common/utf8.h"

namespace hs {

int32_t Tokenizer::find_token(const std::string& text) const {
  auto it = token_to_id.find(text);
  return it == token_to_id.end() ? -1 : it->second;
}

namespace {

bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
bool is_word_byte(unsigned char ch) { return std::isalnum(ch) || ch == '_' || ch >= 0x80; }

std::string nfc(std::string_view s) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(std::string(s).c_str()));
  if (!out) throw Error(ErrorKind::InvalidArgument, "text is not valid UTF-8");
  std::string r(reinterpret_cast<char*>(out));
  std::free(out);
  return r;
}

void bpe_piece(const Tokenizer& tok, std::string_view piece, std::vector<int32_t>& out) {
  std::string mapped = byte_level_encode(piece);
  if (tok.ignore_merges) {
    int32_t id = tok.find_token(mapped);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<int32_t> symbols;
  for (size_t i = 0; i < mapped.size();) {
    size_t n = utf8_sequence_length(static_cast<unsigned char>(mapped[i]));
    int32_t id = tok.find_token(mapped.substr(i, n));
    if (id < 0) id = tok.unk_id;
    if (id >= 0) symbols.push_back(id);
    i += n;
  }
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX, best_id = -1;
    size_t best_at = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = tok.merges.find((static_cast<uint64_t>(symbols[i]) << 32) | static_cast<uint32_t>(symbols[i + 1]));
      if (it != tok.merges.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        best_id = it->second.second;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    // Merge every occurrence of the best pair, left to right.
    const int32_t left = symbols[best_at], right = symbols[best_at + 1];
    std::vector<int32_t> next;
    next.reserve(symbols.size());
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        next.push_back(best_id);
        ++i;
      } else {
        next.push_back(symbols[i]);
      }
    }
    symbols.swap(next);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

void encode_segment(const Tokenizer& tok, std::string_view segment, std::vector<int32_t>& out) {
  if (segment.empty()) return;
  std::string text = tok.nfc ? nfc(segment) : std::string(segment);
  if (tok.add_prefix_space && text[0] != ' ') text.insert(text.begin(), ' ');
  std::vector<std::string_view> pieces{text}, next;
  for (const auto& rule : tok.pre_rules) {
    next.clear();
    for (auto p : pieces) split_by_regex(*rule.regex, p, rule.remove_matches, next);
    pieces.swap(next);
  }
  for (auto p : pieces) bpe_piece(tok, p, out);
}

// Finds the earliest added token at or after `from`; returns its index or -1.
int find_added(const Tokenizer& tok, const std::string& text, size_t from, size_t* at) {
  for (size_t i = from; i < text.size(); ++i) {
    for (size_t k = 0; k < tok.added_tokens.size(); ++k) {
      const AddedToken& a = tok.added_tokens[k];
      if (a.content.empty() || text.compare(i, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        size_t end = i + a.content.size();
        if ((i > 0 && is_word_byte(text[i - 1])) || (end < text.size() && is_word_byte(text[end]))) continue;
      }
      *at = i;
      return static_cast<int>(k);
    }
  }
  return -1;
}

}  // namespace

std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text, bool add_special_tokens) {
  if (!utf8_is_valid(text)) throw Error(ErrorKind::InvalidArgument, "text is not valid UTF-8");
  std::vector<int32_t> out;
  if (add_special_tokens) out = tok.prefix_ids;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t at = 0;
    int k = find_added(tok, text, pos, &at);
    if (k < 0) {
      encode_segment(tok, std::string_view(text).substr(pos), out);
      break;
    }
    const AddedToken& a = tok.added_tokens[k];
    size_t seg_end = at, next = at + a.content.size();
    if (a.lstrip)
      while (seg_end > pos && is_space(text[seg_end - 1])) --seg_end;
    if (a.rstrip)
      while (next < text.size() && is_space(text[next])) ++next;
    encode_segment(tok, std::string_view(text).substr(pos, seg_end - pos), out);
    out.push_back(a.id);
    pos = next;
  }
  if (add_special_tokens) out.insert(out.end(), tok.suffix_ids.begin(), tok.suffix_ids.end());
  return out;
}

std::string token_bytes(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.vocab_size())
    throw Error(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                                std::to_string(tok.vocab_size() - 1) + ")");
  const std::string& t = tok.id_to_token[id];
  return tok.is_added[id] ? t : byte_level_decode(t);
}

std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && id >= 0 && id < tok.vocab_size() && tok.is_special[id]) continue;
    out += token_bytes(tok, id);
  }
  return out;
}

std::string StreamingDetokenizer::push(int32_t id) {
  if (skip_special_ && id >= 0 && id < tok_.vocab_size() && tok_.is_special[id]) return {};
  pending_ += token_bytes(tok_, id);
  return utf8_take_complete(pending_);
}

std::string StreamingDetokenizer::flush() {
  std::string out = utf8_replace_invalid(pending_);
  pending_.clear();
  return out;
}

}  // namespace hs
