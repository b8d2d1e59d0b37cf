#include "tokenizer/tokenizer.h"

#include <cctype>

#include "common/error.h"
#include "common/utf8.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"

namespace hs {

int32_t Tokenizer::find_token(const std::string& text) const {
  auto it = token_to_id.find(text);
  return it == token_to_id.end() ? -1 : it->second;
}

void Tokenizer::index_added_tokens() {
  for (auto& by_byte : added_by_first_byte)
    for (auto& list : by_byte) list.clear();
  for (size_t k = 0; k < added_tokens.size(); ++k) {
    const AddedToken& a = added_tokens[k];
    if (!a.match.empty())
      added_by_first_byte[a.normalized ? 1 : 0][static_cast<unsigned char>(a.match[0])].push_back(
          static_cast<uint32_t>(k));
  }
}

namespace {

bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }
bool is_word_byte(unsigned char ch) { return std::isalnum(ch) || ch == '_' || ch >= 0x80; }

// Where the text being encoded begins: at the start of the input (Metaspace "first" prepends there), and at
// the start of a segment, the input or the text after an added token (the Prepend normalizer, Metaspace
// "always" and ByteLevel's add_prefix_space prefix every segment).
struct TextStart {
  bool input = true;
  bool segment = true;
};

// Pre-tokenisation and the model, for a normalized text holding no added token.
void encode_normalized(const Tokenizer& tok, std::string_view normalized, TextStart start, std::vector<int32_t>& out) {
  if (normalized.empty()) return;
  std::string text(normalized);
  if (tok.add_prefix_space && start.segment && text[0] != ' ') text.insert(text.begin(), ' ');
  std::vector<std::string_view> pieces{text}, next;
  for (const auto& rule : tok.pre_rules) {
    next.clear();
    for (auto p : pieces) split_by_regex(*rule.regex, p, rule.remove_matches, next);
    pieces.swap(next);
  }
  std::vector<std::string> owned;  // Metaspace pieces (the loader allows no other pre-tokenizer beside it)
  if (tok.metaspace) {
    metaspace_pre_tokenize(*tok.metaspace, text, start.input, start.segment, owned);
    pieces.assign(owned.begin(), owned.end());
  }
  for (auto p : pieces) bpe_encode_piece(tok, tok.byte_level ? byte_level_encode(p) : std::string(p), out);
}

// Finds the earliest added token (normalized ones or the others) at or after `from`; its index or -1.
int find_added(const Tokenizer& tok, std::string_view text, size_t from, bool normalized, size_t* at) {
  const auto& by_first_byte = tok.added_by_first_byte[normalized ? 1 : 0];
  for (size_t i = from; i < text.size(); ++i) {
    for (uint32_t k : by_first_byte[static_cast<unsigned char>(text[i])]) {
      const AddedToken& a = tok.added_tokens[k];
      if (text.compare(i, a.match.size(), a.match) != 0) continue;
      if (a.single_word) {
        size_t end = i + a.match.size();
        if ((i > 0 && is_word_byte(text[i - 1])) || (end < text.size() && is_word_byte(text[end]))) continue;
      }
      *at = i;
      return static_cast<int>(k);
    }
  }
  return -1;
}

// Splits `text` around added tokens of one kind; `encode_between` takes each stretch between them and whether
// it begins the text.
template <typename EncodeBetween>
void split_added(const Tokenizer& tok, std::string_view text, bool normalized, std::vector<int32_t>& out,
                 EncodeBetween encode_between) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t at = 0;
    int k = find_added(tok, text, pos, normalized, &at);
    if (k < 0) {
      encode_between(text.substr(pos), pos == 0);
      return;
    }
    const AddedToken& a = tok.added_tokens[k];
    size_t seg_end = at, next = at + a.match.size();
    if (a.lstrip)
      while (seg_end > pos && is_space(text[seg_end - 1])) --seg_end;
    if (a.rstrip)
      while (next < text.size() && is_space(text[next])) ++next;
    if (seg_end > pos) encode_between(text.substr(pos, seg_end - pos), pos == 0);
    out.push_back(a.id);
    pos = next;
  }
}

int byte_token_value(const std::string& t) {
  auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>' || !hex(t[3]) || !hex(t[4])) return -1;
  return std::stoi(t.substr(3, 2), nullptr, 16);
}

std::string piece_text(const Tokenizer& tok, int32_t id, bool first_token) {
  const std::string& t = tok.id_to_token[id];
  if (tok.byte_level) return tok.is_added[id] ? t : byte_level_decode(t);
  const PieceDecoding& d = tok.decoding;
  if (int b = d.byte_fallback ? byte_token_value(t) : -1; b >= 0) return std::string(1, static_cast<char>(b));
  std::string s = first_token && !d.drop_in_first_token.empty() ? replace_all(t, d.drop_in_first_token, "") : t;
  for (const auto& [from, to] : d.replacements) s = replace_all(s, from, to);
  return s;
}

void check_id(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.vocab_size())
    throw Error(ErrorKind::InvalidArgument, "token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                                std::to_string(tok.vocab_size() - 1) + ")");
}

bool skipped(const Tokenizer& tok, int32_t id, bool skip_special) {
  return skip_special && id >= 0 && id < tok.vocab_size() && tok.is_special[id];
}

// Added tokens split out, then each stretch between them normalized and encoded; `start` says where the
// first stretch stands, later ones follow an added token.
void encode_text(const Tokenizer& tok, const std::string& text, TextStart start, std::vector<int32_t>& out) {
  if (!utf8_is_valid(text)) throw Error(ErrorKind::InvalidArgument, "text is not valid UTF-8");
  split_added(tok, text, false, out, [&](std::string_view raw, bool at_start) {
    const bool segment = !at_start || start.segment;
    const std::string normalized = normalize(tok.normalizer, raw, segment);
    split_added(tok, normalized, true, out, [&](std::string_view piece, bool piece_at_start) {
      const bool first = at_start && piece_at_start;
      encode_normalized(tok, piece, {first && start.input, !first || start.segment}, out);
    });
  });
}

}  // namespace

std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text, bool add_special_tokens) {
  std::vector<int32_t> out;
  if (add_special_tokens) out = tok.prefix_ids;
  encode_text(tok, text, {}, out);
  if (add_special_tokens) out.insert(out.end(), tok.suffix_ids.begin(), tok.suffix_ids.end());
  return out;
}

std::vector<int32_t> encode_continuation(const Tokenizer& tok, const std::string& text, int32_t previous_id) {
  const bool after_added = previous_id >= 0 && previous_id < tok.vocab_size() && tok.is_added[previous_id];
  std::vector<int32_t> out;
  encode_text(tok, text, {false, after_added}, out);
  return out;
}

std::string token_bytes(const Tokenizer& tok, int32_t id) {
  check_id(tok, id);
  return piece_text(tok, id, false);
}

std::string decode_next(const Tokenizer& tok, int32_t id, DecodeState& state) {
  check_id(tok, id);
  std::string s = piece_text(tok, id, state.first_token);
  state.first_token = false;
  size_t cut = 0;
  while (state.strip_left > 0 && cut < s.size()) {
    if (s[cut] != tok.decoding.strip_char) {
      state.strip_left = 0;
      break;
    }
    ++cut;
    --state.strip_left;
  }
  return s.substr(cut);
}

std::string decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  DecodeState state{true, tok.decoding.strip_leading};
  std::string out;
  for (int32_t id : ids)
    if (!skipped(tok, id, skip_special)) out += decode_next(tok, id, state);
  return out;
}

std::string StreamingDetokenizer::push(int32_t id) {
  if (skipped(tok_, id, skip_special_)) return {};
  pending_ += decode_next(tok_, id, state_);
  return utf8_take_complete(pending_);
}

std::string StreamingDetokenizer::flush() {
  std::string out = utf8_replace_invalid(pending_);
  pending_.clear();
  return out;
}

}  // namespace hs
