#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <queue>
#include <string>

#include "common/utf8.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

// A symbol of the word being merged, in a doubly linked list; `len` 0 marks one merged away.
struct Symbol {
  int32_t id;
  int prev, next;
  size_t start, len;  // bytes of the piece it covers
};

int32_t byte_token(const Tokenizer& tok, unsigned char b) { return tok.find_token(byte_token_name(b)); }

// Merges the symbol after `left` into it, unlinking the merged one (its len 0 marks queue entries stale).
void merge_with_next(std::vector<Symbol>& syms, int left) {
  Symbol& l = syms[left];
  Symbol& r = syms[l.next];
  l.len += r.len;
  r.len = 0;
  l.next = r.next;
  if (l.next >= 0) syms[l.next].prev = left;
}

// The <0xXX> tokens of every byte of `chars`; false when one is missing.
bool byte_tokens(const Tokenizer& tok, std::string_view chars, std::vector<int32_t>& out) {
  for (unsigned char b : chars) {
    int32_t id = byte_token(tok, b);
    if (id < 0) return false;
    out.push_back(id);
  }
  return true;
}

// The initial symbols, as `tokenizers`' BPE::merge_word: a character missing from the vocabulary becomes its
// byte tokens (byte_fallback, when all exist), else unk (one per run when fuse_unk), else nothing.
std::vector<Symbol> initial_symbols(const Tokenizer& tok, std::string_view piece) {
  std::vector<Symbol> syms;
  auto add = [&](int32_t id, size_t start, size_t len) {
    syms.push_back({id, static_cast<int>(syms.size()) - 1, -1, start, len});
  };
  int32_t pending_unk_len = 0;
  size_t pending_unk_start = 0;
  auto flush_unk = [&] {
    if (pending_unk_len > 0) add(tok.unk_id, pending_unk_start, pending_unk_len);
    pending_unk_len = 0;
  };
  for (size_t i = 0; i < piece.size();) {
    const size_t n = std::min(utf8_sequence_length(static_cast<unsigned char>(piece[i])), piece.size() - i);
    int32_t id = tok.find_token(std::string(piece.substr(i, n)));
    if (id >= 0) {
      flush_unk();
      add(id, i, n);
    } else if (std::vector<int32_t> bytes; tok.byte_fallback && byte_tokens(tok, piece.substr(i, n), bytes)) {
      // `tokenizers` adds the bytes without first emitting a pending unk; kept for identical ids.
      for (size_t k = 0; k < n; ++k) add(bytes[k], i + k, 1);
    } else if (tok.unk_id >= 0) {
      if (pending_unk_len > 0 && !tok.fuse_unk) flush_unk();
      if (pending_unk_len == 0) pending_unk_start = i;
      pending_unk_len += static_cast<int32_t>(n);
    }
    i += n;
  }
  flush_unk();
  for (size_t i = 0; i + 1 < syms.size(); ++i) syms[i].next = static_cast<int>(i + 1);
  return syms;
}

struct RankedPair {
  int32_t rank, merged;
  int pos;
  bool operator<(const RankedPair& o) const {  // std::priority_queue pops the largest: lowest rank, then leftmost
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

const std::pair<int32_t, int32_t>* find_merge(const Tokenizer& tok, int32_t a, int32_t b) {
  auto it = tok.merges.find((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b));
  return it == tok.merges.end() ? nullptr : &it->second;
}

// Lowest-ranked pair first, leftmost among equals; stale entries are skipped (tokenizers' Word::merge_all).
void merge_by_rank(const Tokenizer& tok, std::vector<Symbol>& syms) {
  std::priority_queue<RankedPair> queue;
  auto push = [&](int pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    if (const auto* m = find_merge(tok, syms[pos].id, syms[syms[pos].next].id)) queue.push({m->first, m->second, pos});
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) push(static_cast<int>(i));
  while (!queue.empty()) {
    const RankedPair top = queue.top();
    queue.pop();
    Symbol& left = syms[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    Symbol& right = syms[left.next];
    const auto* m = find_merge(tok, left.id, right.id);
    if (!m || m->second != top.merged) continue;
    left.id = top.merged;
    merge_with_next(syms, top.pos);
    push(left.prev);
    push(top.pos);
  }
}

struct ScoredPair {
  float score;
  int left, right;
  size_t len;  // bytes of the merged text, to recognise stale entries as llama.cpp does
  bool operator<(const ScoredPair& o) const {  // highest score first, then leftmost
    return score != o.score ? score < o.score : left > o.left;
  }
};

// llama.cpp's llm_tokenizer_spm: UTF-8 characters merged pairwise, highest-scoring merged token first; a symbol
// that is no token (a character missing from the vocabulary) becomes its byte tokens.
class ScoreMerger {
 public:
  ScoreMerger(const Tokenizer& tok, std::string_view text) : tok_(tok), text_(text) {}

  void run(std::vector<int32_t>& out) {
    for (size_t i = 0; i < text_.size();) {
      const size_t n = std::min(utf8_sequence_length(static_cast<unsigned char>(text_[i])), text_.size() - i);
      const int idx = static_cast<int>(syms_.size());
      syms_.push_back({-1, idx - 1, i + n == text_.size() ? -1 : idx + 1, i, n});
      i += n;
    }
    for (int i = 1; i < static_cast<int>(syms_.size()); ++i) try_pair(i - 1, i);
    while (!queue_.empty()) {
      const ScoredPair p = queue_.top();
      queue_.pop();
      Symbol& left = syms_[p.left];
      Symbol& right = syms_[p.right];
      if (left.len == 0 || right.len == 0 || left.len + right.len != p.len) continue;
      merge_with_next(syms_, p.left);
      try_pair(left.prev, p.left);
      try_pair(p.left, left.next);
    }
    for (int i = syms_.empty() ? -1 : 0; i >= 0; i = syms_[i].next) emit(syms_[i], out);
  }

 private:
  void try_pair(int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string merged = std::string(text_.substr(syms_[left].start, syms_[left].len + syms_[right].len));
    const int32_t id = tok_.find_token(merged);
    if (id < 0 || id >= static_cast<int32_t>(tok_.scores.size())) return;
    queue_.push({tok_.scores[id], left, right, merged.size()});
  }

  // Every merged symbol is a token (a pair is queued only then), so only single characters reach the bytes.
  void emit(const Symbol& s, std::vector<int32_t>& out) const {
    const std::string_view text = text_.substr(s.start, s.len);
    if (int32_t id = tok_.find_token(std::string(text)); id >= 0) {
      out.push_back(id);
      return;
    }
    for (unsigned char b : text) out.push_back(byte_token(tok_, b));  // the loader checked all 256 exist
  }

  const Tokenizer& tok_;
  std::string_view text_;
  std::vector<Symbol> syms_;
  std::priority_queue<ScoredPair> queue_;
};

}  // namespace

std::string byte_token_name(unsigned char b) {
  char name[8];
  std::snprintf(name, sizeof(name), "<0x%02X>", b);
  return name;
}

void bpe_encode_piece(const Tokenizer& tok, std::string_view piece, std::vector<int32_t>& out) {
  if (piece.empty()) return;
  if (tok.ignore_merges) {
    int32_t id = tok.find_token(std::string(piece));
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (!tok.scores.empty()) {
    ScoreMerger(tok, piece).run(out);
    return;
  }
  std::vector<Symbol> syms = initial_symbols(tok, piece);
  if (syms.empty()) return;
  merge_by_rank(tok, syms);
  for (int i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

}  // namespace hs
