// KeyMap<V>: a flat map from int64 keys to small values, for the per-key bookkeeping of the
// online policies (admission's pending counts, the deleted-keys log), where a node-based map
// paid an allocation and a second cache miss per key.
//
// Open addressing with linear probing over one array of {key, value} slots (a power of two,
// load <= 3/4), erase by backward shift (no tombstones). Every int64 is a legal key: the one
// equal to the empty marker lives out of band. Iteration order is the slot order, which
// depends on the history of the map: callers that write what they iterate sort it first.
// A key's home slot comes from the low bits of key_hash: an owner that splits keys over
// several maps splits them by other bits (shards and stripes use the top bits).
//
// Thread-safety: none (the owner guards it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "sparsecore/core/hash.h"

namespace sparsecore {

template <typename V>
class KeyMap {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  V* find(int64_t key) {
    if (key == kEmpty) return has_special_ ? &special_ : nullptr;
    if (slots_.empty()) return nullptr;
    for (size_t s = home(key);; s = (s + 1) & mask_) {
      if (slots_[s].key == key) return &slots_[s].value;
      if (slots_[s].key == kEmpty) return nullptr;
    }
  }
  const V* find(int64_t key) const { return const_cast<KeyMap*>(this)->find(key); }

  // The value of key, inserted as `value` when absent; second: whether it was inserted.
  std::pair<V*, bool> try_emplace(int64_t key, const V& value) {
    if (key == kEmpty) {
      if (has_special_) return {&special_, false};
      has_special_ = true;
      special_ = value;
      ++size_;
      return {&special_, true};
    }
    if ((size_ + 1) * 4 > slots_.size() * 3) grow();
    size_t s = home(key);
    for (; slots_[s].key != kEmpty; s = (s + 1) & mask_)
      if (slots_[s].key == key) return {&slots_[s].value, false};
    slots_[s] = Slot{key, value};
    ++size_;
    return {&slots_[s].value, true};
  }

  bool erase(int64_t key) {
    if (key == kEmpty) {
      if (!has_special_) return false;
      has_special_ = false;
      --size_;
      return true;
    }
    if (slots_.empty()) return false;
    size_t s = home(key);
    for (; slots_[s].key != key; s = (s + 1) & mask_)
      if (slots_[s].key == kEmpty) return false;
    erase_slot(s);
    return true;
  }

  // Removes the entries for which pred(key, value) holds; returns how many.
  template <typename Pred>
  size_t erase_if(Pred&& pred) {
    size_t removed = 0;
    if (has_special_ && pred(kEmpty, special_)) {
      has_special_ = false;
      --size_;
      ++removed;
    }
    // Backward shift may move a later entry into the hole, or wrap an entry from the front to
    // the back: examine the same slot again after an erase, and stop at the first empty slot
    // after the end so wrapped entries are seen.
    const size_t n = slots_.size();
    size_t start = 0;
    while (start < n && slots_[start].key != kEmpty) ++start;  // a run start: no wrap into it
    for (size_t i = 0; i < n; ++i) {
      const size_t s = (start + i) & mask_;
      while (slots_[s].key != kEmpty && pred(slots_[s].key, slots_[s].value)) {
        erase_slot(s);
        ++removed;
      }
    }
    return removed;
  }

  template <typename Fn>
  void for_each(Fn&& fn) const {
    if (has_special_) fn(kEmpty, special_);
    for (const Slot& s : slots_)
      if (s.key != kEmpty) fn(s.key, s.value);
  }

  // Hint: the slot where a probe for key starts.
  void prefetch(int64_t key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[home(key)]);
  }

  void clear() {
    slots_.clear();
    slots_.shrink_to_fit();
    mask_ = 0;
    size_ = 0;
    has_special_ = false;
  }
  void reserve(size_t n) {
    while (n * 4 > slots_.size() * 3) grow();
  }

 private:
  static constexpr int64_t kEmpty = std::numeric_limits<int64_t>::min();
  struct Slot {
    int64_t key;
    V value;
  };

  size_t home(int64_t key) const { return static_cast<size_t>(key_hash(key)) & mask_; }

  void grow() {
    std::vector<Slot> old(slots_.empty() ? 16 : slots_.size() * 2, Slot{kEmpty, V{}});
    old.swap(slots_);
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t at = home(s.key);
      while (slots_[at].key != kEmpty) at = (at + 1) & mask_;
      slots_[at] = s;
    }
  }

  // Backward-shift deletion: pull later members of the run into the hole while their home
  // does not lie cyclically in (hole, j].
  void erase_slot(size_t hole) {
    --size_;
    for (size_t j = (hole + 1) & mask_; slots_[j].key != kEmpty; j = (j + 1) & mask_) {
      const size_t h = home(slots_[j].key);
      const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (stays) continue;
      slots_[hole] = slots_[j];
      hole = j;
    }
    slots_[hole].key = kEmpty;
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
  bool has_special_ = false;
  V special_{};
};

}  // namespace sparsecore
