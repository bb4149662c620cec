// Exclusive prefix sums of int32 arrays without CUB: each block scans a tile in shared
// memory (Hillis-Steele between barriers), then one block scans the tile totals; consumers
// add a tile's offset when they read (two launches per scan, whatever its length).
#pragma once

#include "device_runtime.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline constexpr int kScanItemsPerThread = 4;

// The block-wide step both kernels share: each thread holds kScanItemsPerThread items of
// one tile starting at `base` (zeros past `n`); returns the exclusive prefix of this thread's
// items within the tile and sets *total to the tile's sum. buffer: 2 * blockDim.x ints of
// shared memory; every thread of the block must call it.
__device__ inline int block_exclusive_scan(const int* __restrict__ in, int64_t base, int64_t n,
                                           int (&items)[kScanItemsPerThread], int* buffer, int* total) {
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
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
  *total = src[threads - 1];
  return src[tid] - local;
}

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
  int total = 0;
  int running = block_exclusive_scan(in, base, n, items, buffer, &total);  // this thread's prefix
  for (int j = 0; j < kScanItemsPerThread; ++j) {
    if (base + j < n) out[base + j] = running;
    running += items[j];
  }
  if (tid == threads - 1) tile_sums[blockIdx.x] = total;
}

// tile_offsets (tiles) <- exclusive scan of tile_sums (tiles), by one block walking the
// tiles in chunks of blockDim.x * 4 with a running carry. Consumers add tile_offsets[i / tile]
// to scan_tiles_kernel's output themselves (ScanView), so a scan of any length is two launches.
// Dynamic shared memory: 2 * blockDim.x ints. Launch with one block.
__global__ void SC_LAUNCH_BOUNDS scan_tile_sums_kernel(const int* __restrict__ tile_sums,
                                                       int* __restrict__ tile_offsets, int64_t tiles) {
  SC_DYNAMIC_SHARED(int, buffer);
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t chunk = int64_t{threads} * kScanItemsPerThread;
  int carry = 0;
  for (int64_t start = 0; start < tiles; start += chunk) {  // the same trip count in every thread
    const int64_t base = start + int64_t{tid} * kScanItemsPerThread;
    int items[kScanItemsPerThread];
    int total = 0;
    int running = carry + block_exclusive_scan(tile_sums, base, tiles, items, buffer, &total);
    for (int j = 0; j < kScanItemsPerThread; ++j) {
      if (base + j < tiles) tile_offsets[base + j] = running;
      running += items[j];
    }
    carry += total;
    __syncthreads();  // every thread has read the buffer before the next chunk writes it
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
