#pragma once
// A least-recently-used map from string keys to values: the registry's resident images and hot tensors.
// Not thread-safe; the registry guards it with its own mutex.
#include <functional>
#include <list>
#include <map>
#include <string>

namespace hs {

template <typename V>
class LruCache {
 public:
  // The value under `key`, now the most recently used; null when absent.
  const V* find(const std::string& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second.pos);
    return &it->second.value;
  }

  // Adds a value as the most recently used; false (and no change) when the key is already present.
  bool insert(const std::string& key, V value) {
    if (map_.count(key)) return false;
    order_.push_front(key);
    map_.emplace(key, Entry{std::move(value), order_.begin()});
    return true;
  }

  // Removes and returns the least recently used value; the cache must not be empty.
  V pop_oldest() {
    auto it = map_.find(order_.back());
    V value = std::move(it->second.value);
    map_.erase(it);
    order_.pop_back();
    return value;
  }

  // Removes the value under `key`, if any, handing it to `removed`.
  void erase(const std::string& key, const std::function<void(const V&)>& removed) {
    auto it = map_.find(key);
    if (it == map_.end()) return;
    removed(it->second.value);
    order_.erase(it->second.pos);
    map_.erase(it);
  }

  // Removes every value whose key starts with `prefix`, handing each to `removed`.
  void erase_prefixed(const std::string& prefix, const std::function<void(const V&)>& removed) {
    for (auto it = map_.begin(); it != map_.end();) {
      if (it->first.rfind(prefix, 0) != 0) {
        ++it;
        continue;
      }
      removed(it->second.value);
      order_.erase(it->second.pos);
      it = map_.erase(it);
    }
  }

  void for_each(const std::function<void(const V&)>& fn) const {
    for (const auto& [key, entry] : map_) fn(entry.value);
  }

  size_t size() const { return map_.size(); }

 private:
  struct Entry {
    V value;
    std::list<std::string>::iterator pos;
  };
  std::map<std::string, Entry> map_;
  std::list<std::string> order_;  // most recently used first
};

}  // namespace hs
