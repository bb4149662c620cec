// Exclusive prefix sums of int32 arrays without CUB: each block scans a tile in shared
// memory (Hillis-Steele between barriers), tile totals are scanned recursively, then added.
#pragma once

#include "device_runtime.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline constexpr int kScanItemsPerThread = 4;

// out[i] = sum of in[0..i) within each tile of blockDim.x * 4 elements; tile_sums[tile] =
// the tile's total. in, out (n), tile_sums (tiles): device. Dynamic shared memory:
// 2 * blockDim.x ints. One block per tile (the grid is not capped).
__global__ void SC_LAUNCH_BOUNDS scan_tiles_kernel(const int* __restrict__ in, int* __restrict__ out,
                                                   int* __restrict__ tile_sums, int64_t n) {
  SC_DYNAMIC_SHARED(int, buffer);
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t base = int64_t{blockIdx.x} * threads * kScanItemsPerThread + int64_t{tid} * kScanItemsPerThread;
  int items[kScanItemsPerThread];
  int local = 0;
  for (int j = 0; j < kScanItemsPerThread; ++j) {
    items[j] = base + j < n ? in[base + j] : 0;
    local += items[j];
  }
  int* src = buffer;
  int* dst = buffer + threads;
  src[tid] = local;
  __syncthreads();
  for (int offset = 1; offset < threads; offset <<= 1) {
    dst[tid] = tid >= offset ? src[tid] + src[tid - offset] : src[tid];
    __syncthreads();
    int* t = src;
    src = dst;
    dst = t;
  }
  int running = src[tid] - local;  // exclusive prefix of this thread's items
  for (int j = 0; j < kScanItemsPerThread; ++j) {
    if (base + j < n) out[base + j] = running;
    running += items[j];
  }
  if (tid == threads - 1) tile_sums[blockIdx.x] = src[tid];
}

// out[i] += tile_offsets[i / tile].
__global__ void SC_LAUNCH_BOUNDS add_tile_offsets_kernel(int* __restrict__ out, const int* __restrict__ tile_offsets,
                                                         int64_t n, int64_t tile) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) out[i] += tile_offsets[i / tile];
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
