// DedupSet: the open-addressing scratch set the ops layer dedups ids with (key -> index of
// first occurrence). Internal to the ops layer; one per thread, reused between calls.
#pragma once

#include <cstdint>
#include <vector>

namespace sparsecore {

// Open-addressing set: key -> local index, sized for `expected` keys by reset().
// Slots whose index is -1 are empty, so every key value is legal. Key and index share a slot
// (one cache line per probe, not one in each of two arrays).
struct DedupSet {
  struct Slot {
    int64_t key;
    int32_t index;
    int32_t unused;
  };
  std::vector<Slot> slots;
  uint64_t mask = 0;

  void reset(int64_t expected) {
    size_t cap = 16;
    while (cap < static_cast<size_t>(expected) * 2) cap *= 2;
    if (slots.size() < cap) slots.resize(cap);
    mask = cap - 1;
    for (size_t i = 0; i < cap; ++i) slots[i].index = -1;
  }
  // Returns the index of `key`, inserting it with `next` when absent.
  int32_t find_or_add(int64_t key, uint64_t hash, int32_t next, bool* added) {
    uint64_t slot = hash & mask;
    for (;;) {
      Slot& s = slots[slot];
      if (s.index < 0) {
        s.key = key;
        s.index = next;
        *added = true;
        return next;
      }
      if (s.key == key) {
        *added = false;
        return s.index;
      }
      slot = (slot + 1) & mask;
    }
  }
};

}  // namespace sparsecore
