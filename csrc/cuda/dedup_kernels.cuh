// Dedup of a batch's ids on the device (unique + inverse) through a scratch hash set, no
// sorting. The set stores positions, not keys: a slot holds 1 + the smallest position of its
// key (0: empty, so a zeroed allocation is an empty set; atomicCAS to claim, atomicMin to
// keep the first occurrence), and keys are compared through the immutable ids arrays, so
// every int64 id is legal and no marker key exists. Positions are int32 (a batch holds fewer
// than kMaxDedupIds ids, all groups together); set slots are int64, since the set has 2n to
// 4n of them. Unique ids come out in order of first occurrence (a scan over first-occurrence
// flags). The insert and finish kernels (all groups in one launch) are in batch_kernels.cuh.
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

// is_first[i] = 1 when position i is its key's first occurrence.
__global__ void SC_LAUNCH_BOUNDS mark_first_kernel(const int* __restrict__ set_pos, const int64_t* __restrict__ slot_of,
                                                   int64_t n, int* __restrict__ is_first) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) is_first[i] = set_pos[slot_of[i]] == i + 1;
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
