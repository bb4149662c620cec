// ShardedDedup: the one dedup primitive of the library. It hashes each id once, groups the
// positions by shard (contiguous bucket ranges, core/hash.h shard_of_hash), dedups each
// shard's ids and builds the inverse index. A batch's plan (ops/batch_planner.h), the data
// helpers' dedup_ids and a hash table's batch calls all go through it.
//
// The phases are separate so that a caller can run phase 2 of different shards on different
// threads and act on a shard's unique ids while they are in the cache (a table looks them up
// under the shard's lock):
//   group(ids, n, shards)            phase 1: hash, count, stable counting sort by shard
//   dedup_shard(ids, s, set, unique) phase 2: the distinct ids of shard s in order of their
//                                    first position, written at unique + shard_begin(s)
//   compact(unique, rows, inverse)   phase 3: shards' distinct ids made contiguous (in shard
//                                    order), inverse[i] = index of ids[i] in unique
// Every int64 is a legal id. Deterministic: the result depends only on the ids and `shards`.
//
// Thread-safety: one ShardedDedup per array being deduplicated; dedup_shard of distinct
// shards may run concurrently (each with its own DedupSet). All memory is host memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparsecore/core/pod_vector.h"

namespace sparsecore {

// Open-addressing set: key -> local index, sized for `expected` keys by reset().
// Slots whose index is -1 are empty, so every key value is legal. Key and index share a slot
// (one cache line per probe, not one in each of two arrays). Scratch: one per thread, reused.
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
  // Whether a set holding `count` keys must grow before one more is added (load <= 1/2).
  bool full(int64_t count) const { return static_cast<uint64_t>(count + 1) * 2 > mask + 1; }
  // Twice the slots, holding keys[i] at index i for i < count (the keys added so far, in
  // the order of their indices); hash(key) gives each key's hash.
  template <typename Hash>
  void grow(const int64_t* keys, int32_t count, Hash hash) {
    reset(static_cast<int64_t>(mask + 1));
    bool added = false;
    for (int32_t i = 0; i < count; ++i) find_or_add(keys[i], hash(keys[i]), i, &added);
  }
  // Hint: the slot where find_or_add(key, hash, ...) starts.
  void prefetch(uint64_t hash) const { __builtin_prefetch(slots.data() + (hash & mask)); }
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

class ShardedDedup {
 public:
  // Phase 1. ids (n) host, n < 2^31; shards in [1, 2^16]. Throws InvalidArgument otherwise.
  void group(const int64_t* ids, int64_t n, int shards);

  int num_shards() const { return static_cast<int>(shard_start_.size()) - 1; }
  int64_t size() const { return static_cast<int64_t>(perm_.size()); }
  // Positions of shard s are perm()[shard_begin(s), shard_end(s)), ascending.
  int64_t shard_begin(int s) const { return shard_start_[s]; }
  int64_t shard_end(int s) const { return shard_start_[s + 1]; }
  const int32_t* perm() const { return perm_.data(); }
  const uint64_t* hashes() const { return hashes_.data(); }

  // Phase 2 for shard s: writes its distinct ids to unique + shard_begin(s) (room for every
  // position of the shard) and returns how many. `ids` is the array given to group().
  int64_t dedup_shard(const int64_t* ids, int s, DedupSet& set, int64_t* unique);

  // Distinct ids of shard s, after dedup_shard(s); after compact they are the s-th run.
  int64_t shard_unique(int s) const { return shard_unique_[s]; }
  // Phase 3, after dedup_shard of every shard: moves each shard's distinct ids (and the
  // entries of `rows` beside them, when not null) down to follow the previous shard's, and
  // writes inverse (n). Returns the number of distinct ids.
  int64_t compact(int64_t* unique, std::byte** rows, int32_t* inverse);

  // The three phases on the calling thread. unique: room for n ids; inverse (n).
  int64_t run(const int64_t* ids, int64_t n, int shards, int64_t* unique, int32_t* inverse);

  // The same unique, inverse and shard_unique(s) as run(), computed the other way round on
  // the calling thread: the ids deduplicated in position order first (one probe per position
  // into a set that grows with the distinct ids, not with n), then only the distinct ids
  // grouped by shard. Cheaper when ids repeat (a skewed batch), but one thread per array:
  // run()'s phases let the shards of one large array go to different threads. Afterwards
  // num_shards() and shard_unique(s) are valid; shard_begin/end and perm() are not.
  // unique: room for n ids; inverse (n). Throws InvalidArgument as group() does.
  int64_t run_distinct_first(const int64_t* ids, int64_t n, int shards, DedupSet& set, int64_t* unique,
                             int32_t* inverse);

 private:
  PodVector<uint64_t> hashes_;         // (n)
  PodVector<int32_t> perm_;            // (n) positions grouped by shard, ascending within
  std::vector<int64_t> shard_start_;   // (shards + 1)
  PodVector<int32_t> local_index_;     // (n) index of a position's id among its shard's
  std::vector<int64_t> shard_unique_;  // (shards)
  // run_distinct_first: the distinct ids in order of first position, the shard of each, and
  // where each goes in shard order.
  PodVector<int64_t> first_keys_;
  PodVector<int32_t> first_shard_;
  PodVector<int32_t> placed_;
  int64_t last_distinct_ = 0;
};

// The distinct ids of ids (n, n < 2^31) in order of first occurrence, and inverse (n) with
// ids[i] == unique[inverse[i]]: ShardedDedup over one shard (the worker-side "request union"
// of the data path, for callers outside a batch plan).
void dedup_ids(const int64_t* ids, int64_t n, std::vector<int64_t>& unique, std::vector<int64_t>& inverse);

}  // namespace sparsecore
