// Dedup of a batch's ids on the device (unique + inverse) through a scratch hash set, no
// sorting. The set stores positions, not keys: a slot holds the smallest position of its
// key (atomicCAS to claim, atomicMin to keep the first occurrence), and keys are compared
// through the immutable ids array, so every int64 id is legal and no marker key exists.
// Unique ids come out in order of first occurrence (a scan over first-occurrence flags).
#pragma once

#include "device_runtime.cuh"
#include "sparsecore/core/hash.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// set_pos (mask + 1, device) starts at -1; slot_of (n, device) receives each position's slot.
__global__ void dedup_insert_kernel(const int64_t* __restrict__ ids, int64_t n, int* set_pos, uint64_t mask,
                                    int* __restrict__ slot_of) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t key = ids[i];
    uint64_t s = key_hash(key) & mask;
    for (;;) {
      int v = load_relaxed(&set_pos[s]);
      if (v < 0) {
        v = atomicCAS(&set_pos[s], -1, static_cast<int>(i));
        if (v < 0) break;  // claimed
      }
      if (ids[v] == key) {
        atomicMin(&set_pos[s], static_cast<int>(i));
        break;
      }
      s = (s + 1) & mask;
    }
    slot_of[i] = static_cast<int>(s);
  }
}

// is_first[i] = 1 when position i is its key's first occurrence.
__global__ void mark_first_kernel(const int* __restrict__ set_pos, const int* __restrict__ slot_of, int64_t n,
                                  int* __restrict__ is_first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) is_first[i] = set_pos[slot_of[i]] == i;
}

// unique_index: exclusive scan of is_first. Writes unique_keys (U) and inverse (n).
__global__ void dedup_finish_kernel(const int64_t* __restrict__ ids, const int* __restrict__ set_pos,
                                    const int* __restrict__ slot_of, const int* __restrict__ unique_index, int64_t n,
                                    int64_t* __restrict__ unique_keys, int* __restrict__ inverse) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int first = set_pos[slot_of[i]];
    const int u = unique_index[first];
    inverse[i] = u;
    if (first == i) unique_keys[u] = ids[i];
  }
}

// Occurrences of each unique id (the sizes of its CSR list; the positions come from a
// stable radix sort of the inverse index, radix_sort_kernels.cuh).
__global__ void count_occurrences_kernel(const int* __restrict__ inverse, int64_t n, int* counts) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) atomicAdd(&counts[inverse[i]], 1);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
