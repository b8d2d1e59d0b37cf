#pragma once
// Keys and values of prompt prefixes, kept by whole blocks, so that requests sharing a prefix (a system
// prompt, a few-shot header) copy its KV instead of computing it again.
//
// A block's hash chains the previous block's hash with its own tokens, starting from a seed that names what
// the KV depends on besides the tokens: the adapter's exact values (name@version#crc) and its scale. A hit
// is verified exactly, not by hash: the block's tokens, its parent entry's id (ids are never reused), and for
// a first block the seed itself. KV is therefore never reused across adapter versions, even when hashes
// collide. Blocks live in one pool allocated at start and are evicted least recently used first; a block
// whose parent was evicted is no longer reachable: it ages out, or a new block under its hash replaces it.
// Owned by the engine thread; not thread-safe.
#include <cstdint>
#include <list>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/forward.h"

namespace hs {

class PrefixCache {
 public:
  // capacity_tokens / block_tokens blocks; a capacity of 0 disables the cache.
  PrefixCache(const Model& model, int64_t block_tokens, int64_t capacity_tokens);

  // Copies the longest cached prefix of `prompt` into positions [0, n) of `slot` and returns n, a multiple
  // of the block size that leaves at least the prompt's last token to compute.
  int64_t load(const std::string& seed, const std::vector<int32_t>& prompt, KvCache& cache, int64_t slot);
  // Keeps the whole blocks of prompt[0, computed) that `slot` now holds.
  void store(const std::string& seed, const std::vector<int32_t>& prompt, int64_t computed, const KvCache& cache,
             int64_t slot);

  int64_t block_tokens() const { return block_; }
  int64_t capacity_blocks() const { return capacity_; }
  int64_t used_blocks() const { return static_cast<int64_t>(entries_.size()); }

 private:
  struct Entry {
    uint64_t id = 0;         // unique for the cache's life
    uint64_t parent_id = 0;  // 0: a first block, whose seed is kept
    std::string seed;
    std::vector<int32_t> tokens;
    int64_t index = 0;  // in the pool
    std::list<uint64_t>::iterator lru;
  };
  // Where the walk along a prompt stands: the chained hash and the id of the block matched last.
  struct Cursor {
    uint64_t hash = 0, parent_id = 0;
  };
  const Entry* find(const std::string& seed, const Cursor& at, const int32_t* tokens, uint64_t* key);
  int64_t take_index();

  int64_t block_ = 0, capacity_ = 0;
  at::Tensor k_, v_;  // [capacity, layers, block, kv_heads, head_dim]
  std::unordered_map<uint64_t, Entry> entries_;
  std::list<uint64_t> lru_;      // most recently used first
  std::vector<int64_t> free_;    // unused pool indices
  uint64_t next_id_ = 1;
};

}  // namespace hs
