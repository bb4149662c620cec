// Dedup of a batch's ids on the device (unique + inverse) through a scratch hash set, no
// sorting. The set stores positions, not keys: a slot holds 1 + the smallest position of its
// key (0: empty, so a zeroed allocation is an empty set; atomicCAS to claim, atomicMin to
// keep the first occurrence), and keys are compared through the immutable ids array, so
// every int64 id is legal and no marker key exists. Positions are int32 (a group holds fewer
// than kMaxDedupIds ids); set slots are int64, since the set has 2n to 4n of them.
// Unique ids come out in order of first occurrence (a scan over first-occurrence flags).
#pragma once

#include "device_runtime.cuh"
#include "sparsecore/core/hash.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// Ids per dedup: 1 + position must fit an int.
inline constexpr int64_t kMaxDedupIds = int64_t{INT32_MAX} - 1;

// Slots of the scratch set for n ids: a power of two >= 2n (load <= 1/2).
inline int64_t dedup_set_capacity(int64_t n) {
  int64_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

// set_pos (mask + 1, device) starts at 0; slot_of (n, device) receives each position's slot.
__global__ void SC_LAUNCH_BOUNDS dedup_insert_kernel(const int64_t* __restrict__ ids, int64_t n, int* set_pos,
                                                     uint64_t mask, int64_t* __restrict__ slot_of) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t key = ids[i];
    const int tag = static_cast<int>(i) + 1;
    uint64_t s = key_hash(key) & mask;
    for (;;) {
      int v = load_relaxed(&set_pos[s]);
      if (v == 0) {
        v = atomicCAS(&set_pos[s], 0, tag);
        if (v == 0) break;  // claimed
      }
      if (ids[v - 1] == key) {
        atomicMin(&set_pos[s], tag);
        break;
      }
      s = (s + 1) & mask;
    }
    slot_of[i] = static_cast<int64_t>(s);
  }
}

// is_first[i] = 1 when position i is its key's first occurrence.
__global__ void SC_LAUNCH_BOUNDS mark_first_kernel(const int* __restrict__ set_pos, const int64_t* __restrict__ slot_of,
                                                   int64_t n, int* __restrict__ is_first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) is_first[i] = set_pos[slot_of[i]] == i + 1;
}

// unique_index: exclusive scan of is_first. Writes unique_keys (U) and inverse (n).
__global__ void SC_LAUNCH_BOUNDS dedup_finish_kernel(const int64_t* __restrict__ ids, const int* __restrict__ set_pos,
                                                     const int64_t* __restrict__ slot_of,
                                                     const int* __restrict__ unique_index, int64_t n,
                                                     int64_t* __restrict__ unique_keys, int* __restrict__ inverse) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int first = set_pos[slot_of[i]] - 1;
    const int u = unique_index[first];
    inverse[i] = u;
    if (first == i) unique_keys[u] = ids[i];
  }
}

// Occurrences of each unique id (the sizes of its CSR list; the positions come from a
// stable radix sort of the inverse index, radix_sort_kernels.cuh).
__global__ void SC_LAUNCH_BOUNDS count_occurrences_kernel(const int* __restrict__ inverse, int64_t n, int* counts) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) atomicAdd(&counts[inverse[i]], 1);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
