// Device hash table over 64-bit keys: open addressing with linear probing, slots claimed with
// a 64-bit atomicCAS. A key's slot index is also its row index (rows live in parallel arrays),
// so a claimed slot never waits for a second allocation and duplicate keys within a batch
// meet at the same slot: one row per key, never two.
//
// Every int64 key is legal. The two marker values (empty, erased) are stored out of band in
// two extra slots after the probed ones: slot `capacity` holds key kEmptyKey, slot
// `capacity + 1` holds kErasedKey, each guarded by a flag.
// Erase leaves a tombstone (kErasedKey) that probes walk over; inserts only claim empty
// slots, and the host rehashes (dropping tombstones) before the load would pass its limit.
#pragma once

#include <climits>

#include "device_runtime.cuh"
#include "sparsecore/core/hash.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline constexpr int64_t kEmptyKey = INT64_MIN;
inline constexpr int64_t kErasedKey = INT64_MIN + 1;
inline constexpr int kReservedSlots = 2;

struct TableView {
  int64_t* keys = nullptr;  // (capacity) device; kEmptyKey = free, kErasedKey = tombstone
  int* reserved = nullptr;  // (2) device; 1 when the marker key of that slot is present
  int64_t capacity = 0;     // a power of two (0: no slots yet)
};

__device__ __forceinline__ int reserved_index(int64_t key) {
  return key == kEmptyKey ? 0 : (key == kErasedKey ? 1 : -1);
}

// The slot of `key`, or -1 when absent (insert = false) or the probe found no free slot.
// *inserted is set when this call claimed the slot.
__device__ __forceinline__ int64_t probe_slot(const TableView& t, int64_t key, bool insert, int* inserted) {
  *inserted = 0;
  const int r = reserved_index(key);
  if (r >= 0) {
    if (!insert) return load_relaxed(&t.reserved[r]) ? t.capacity + r : -1;
    if (atomicCAS(&t.reserved[r], 0, 1) == 0) *inserted = 1;
    return t.capacity + r;
  }
  if (t.capacity == 0) return -1;
  const uint64_t mask = static_cast<uint64_t>(t.capacity) - 1;
  uint64_t s = key_hash(key) & mask;
  for (int64_t i = 0; i < t.capacity; ++i, s = (s + 1) & mask) {
    int64_t k = load_relaxed(&t.keys[s]);
    if (k == key) return static_cast<int64_t>(s);
    if (k != kEmptyKey) continue;
    if (!insert) return -1;
    auto* word = reinterpret_cast<unsigned long long*>(&t.keys[s]);
    unsigned long long old =
        atomicCAS(word, static_cast<unsigned long long>(kEmptyKey), static_cast<unsigned long long>(key));
    if (old == static_cast<unsigned long long>(kEmptyKey)) {
      *inserted = 1;
      return static_cast<int64_t>(s);
    }
    if (static_cast<int64_t>(old) == key) return static_cast<int64_t>(s);  // a duplicate won the race
  }
  return -1;
}

// slots[i] = slot of keys[i] (inserting when `insert`). Inserting: inserted[i] = 1 for the
// one thread that created the key and *count (the table's live-row count) counts them.
// Finding: *count counts the keys not found (-1). keys (n), slots (n), inserted (n or
// nullptr): device.
__global__ void SC_LAUNCH_BOUNDS lookup_kernel(TableView t, const int64_t* __restrict__ keys, int64_t n,
                                               int64_t* __restrict__ slots, int* __restrict__ inserted, bool insert,
                                               unsigned long long* count) {
  for (int64_t base = warp_base(); base < n; base += grid_threads()) {  // whole warps (warp_increment)
    const int64_t i = base + lane_index();
    bool counted = false;
    if (i < n) {
      int created = 0;
      const int64_t s = probe_slot(t, keys[i], insert, &created);
      slots[i] = s;
      if (inserted) inserted[i] = created;
      counted = insert ? created != 0 : s < 0;
    }
    warp_increment(count, counted);
  }
}

// keys[0..n) = value (a table's empty marker, which no byte pattern gives).
__global__ void SC_LAUNCH_BOUNDS fill_keys_kernel(int64_t* __restrict__ keys, int64_t n, int64_t value) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) keys[i] = value;
}

// Removes keys (n, device); *num_erased counts the keys that were present, and the table's
// stats (live rows, tombstones; device) follow. removed (n, device, or nullptr): 1 where the
// thread removed its key (a key given twice is removed by one of them).
__global__ void SC_LAUNCH_BOUNDS erase_kernel(TableView t, const int64_t* __restrict__ keys, int64_t n,
                                              unsigned long long* num_erased, unsigned long long* stats,
                                              unsigned char* __restrict__ removed) {
  constexpr unsigned long long kMinusOne = ~0ULL;  // atomicAdd of -1 (no 64-bit atomicSub)
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t key = keys[i];
    const int r = reserved_index(key);
    if (removed) removed[i] = 0;
    if (r >= 0) {
      if (atomicCAS(&t.reserved[r], 1, 0) == 1) {
        atomicAdd(num_erased, 1ULL);
        atomicAdd(&stats[0], kMinusOne);
        if (removed) removed[i] = 1;
      }
      continue;
    }
    int created = 0;
    int64_t s = probe_slot(t, key, false, &created);
    if (s < 0) continue;
    auto* word = reinterpret_cast<unsigned long long*>(&t.keys[s]);
    if (atomicCAS(word, static_cast<unsigned long long>(key), static_cast<unsigned long long>(kErasedKey)) ==
        static_cast<unsigned long long>(key)) {
      atomicAdd(num_erased, 1ULL);
      atomicAdd(&stats[0], kMinusOne);
      atomicAdd(&stats[1], 1ULL);
      if (removed) removed[i] = 1;
    }
  }
}

__device__ __forceinline__ bool slot_live(const TableView& t, int64_t s, int64_t* key) {
  if (s >= t.capacity) {
    *key = s == t.capacity ? kEmptyKey : kErasedKey;
    return t.reserved[s - t.capacity] != 0;
  }
  *key = t.keys[s];
  return *key != kEmptyKey && *key != kErasedKey;
}

// Appends the live slots of t (all capacity + 2 of them) to out_slots and their keys to
// out_keys (slot_live's); *count is the cursor. With
// last_step, only the rows changed after `since` (last_step[s] > since) are collected.
__global__ void SC_LAUNCH_BOUNDS collect_live_kernel(TableView t, const int64_t* __restrict__ last_step, int64_t since,
                                                     int64_t* __restrict__ out_slots, int64_t* __restrict__ out_keys,
                                                     unsigned long long* count) {
  const int64_t total = t.capacity + kReservedSlots;
  for (int64_t s = global_thread(); s < total; s += grid_threads()) {
    int64_t key;
    if (!slot_live(t, s, &key) || (last_step && last_step[s] <= since)) continue;
    const unsigned long long at = atomicAdd(count, 1ULL);
    out_slots[at] = s;
    out_keys[at] = key;
  }
}

// Re-inserts every live key of `from` into the empty table `to`; new_slot_of[s] is the new
// slot of old slot s (-1: not live). Rows are moved by the caller with these slots.
__global__ void SC_LAUNCH_BOUNDS rehash_kernel(TableView from, TableView to, int64_t* __restrict__ new_slot_of) {
  const int64_t total = from.capacity + kReservedSlots;
  for (int64_t s = global_thread(); s < total; s += grid_threads()) {
    int64_t key;
    int created = 0;
    new_slot_of[s] = slot_live(from, s, &key) ? probe_slot(to, key, true, &created) : -1;
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
