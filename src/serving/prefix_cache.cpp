#include "serving/prefix_cache.h"

#include <algorithm>

#include "model/model.h"

namespace hs {

namespace {

// FNV-1a over 64 bits: a hash only finds the candidate; find() verifies it exactly.
uint64_t mix(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

uint64_t seed_key(const std::string& seed) { return mix(14695981039346656037ull, seed.data(), seed.size()); }

}  // namespace

PrefixCache::PrefixCache(const Model& model, int64_t block_tokens, int64_t capacity_tokens)
    : block_(std::max<int64_t>(1, block_tokens)), capacity_(std::max<int64_t>(0, capacity_tokens) / block_) {
  if (capacity_ == 0) return;
  const ModelConfig& c = model.config;
  auto opts = at::TensorOptions().dtype(model.dtype).device(model.device);
  k_ = at::zeros({capacity_, c.num_layers, block_, c.num_kv_heads, c.head_dim}, opts);
  v_ = at::zeros_like(k_);
  for (int64_t i = capacity_ - 1; i >= 0; --i) free_.push_back(i);
}

const PrefixCache::Entry* PrefixCache::find(const std::string& seed, const Cursor& at, const int32_t* tokens,
                                            uint64_t* key) {
  *key = mix(at.hash, tokens, static_cast<size_t>(block_) * sizeof(int32_t));
  auto it = entries_.find(*key);
  if (it == entries_.end()) return nullptr;
  const Entry& e = it->second;
  if (e.parent_id != at.parent_id || (e.parent_id == 0 && e.seed != seed) ||
      !std::equal(e.tokens.begin(), e.tokens.end(), tokens))
    return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return &e;
}

int64_t PrefixCache::load(const std::string& seed, const std::vector<int32_t>& prompt, KvCache& cache,
                          int64_t slot) {
  if (capacity_ == 0) return 0;
  const int64_t blocks = (static_cast<int64_t>(prompt.size()) - 1) / block_;
  Cursor at{seed_key(seed), 0};
  int64_t n = 0;
  for (; n < blocks; ++n) {
    uint64_t key = 0;
    const Entry* e = find(seed, at, prompt.data() + n * block_, &key);
    if (!e) break;
    for (int64_t l = 0; l < static_cast<int64_t>(cache.k.size()); ++l) {
      cache.k[l][slot].narrow(0, n * block_, block_).copy_(k_[e->index][l]);
      cache.v[l][slot].narrow(0, n * block_, block_).copy_(v_[e->index][l]);
    }
    at = {key, e->id};
  }
  return n * block_;
}

int64_t PrefixCache::take_index() {
  if (!free_.empty()) {
    const int64_t i = free_.back();
    free_.pop_back();
    return i;
  }
  const uint64_t victim = lru_.back();
  lru_.pop_back();
  const int64_t i = entries_.at(victim).index;
  entries_.erase(victim);
  return i;
}

void PrefixCache::store(const std::string& seed, const std::vector<int32_t>& prompt, int64_t computed,
                        const KvCache& cache, int64_t slot) {
  if (capacity_ == 0) return;
  const int64_t blocks = std::min<int64_t>(computed, static_cast<int64_t>(prompt.size())) / block_;
  Cursor at{seed_key(seed), 0};
  for (int64_t n = 0; n < blocks; ++n) {
    const int32_t* tokens = prompt.data() + n * block_;
    uint64_t key = 0;
    const Entry* found = find(seed, at, tokens, &key);
    if (!found) {
      Entry e;
      e.id = next_id_++;
      e.parent_id = at.parent_id;
      if (at.parent_id == 0) e.seed = seed;
      e.tokens.assign(tokens, tokens + block_);
      // Another entry under this hash (a child whose parent was evicted and stored again, or a collision)
      // gives its place to this one: the other chain misses from here, and never reuses this KV.
      if (auto other = entries_.find(key); other != entries_.end()) {
        e.index = other->second.index;
        lru_.erase(other->second.lru);
        entries_.erase(other);
      } else {
        e.index = take_index();
      }
      for (int64_t l = 0; l < static_cast<int64_t>(cache.k.size()); ++l) {
        k_[e.index][l].copy_(cache.k[l][slot].narrow(0, n * block_, block_));
        v_[e.index][l].copy_(cache.v[l][slot].narrow(0, n * block_, block_));
      }
      lru_.push_front(key);
      e.lru = lru_.begin();
      found = &(entries_[key] = std::move(e));
    }
    at = {key, found->id};
  }
}

}  // namespace hs
