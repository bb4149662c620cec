// Stable LSD radix sort of int32 keys with int32 values, without CUB: counting and scans
// only, so its cost is the same whatever the key distribution (one hot key in a batch costs
// what any other key does). 8-bit digits; each pass is a per-tile digit histogram, one
// exclusive scan of the (digit, tile) counts (digit-major, so earlier tiles come first for
// equal digits), and a scatter in which each warp walks its tile in order, ranking equal
// digits within a round of 32 through ballots. Stability is what the callers need: values
// start as positions, so equal keys keep their positions ascending.
#pragma once

#include "device_runtime.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline constexpr int kRadixBits = 8;
inline constexpr int kRadixBins = 1 << kRadixBits;
inline constexpr int kRadixItemsPerLane = 8;
inline constexpr int64_t kRadixTileItems = 32 * kRadixItemsPerLane;  // one warp's tile

// Dynamic shared memory of both kernels: kRadixBins ints per warp of the block.
inline size_t radix_shared_bytes(int block_threads) { return size_t(block_threads / 32) * kRadixBins * sizeof(int); }

__device__ __forceinline__ int radix_digit(int key, int shift) { return (key >> shift) & (kRadixBins - 1); }

// hist (kRadixBins * tiles): hist[digit * tiles + tile] = keys of `tile` with that digit.
__global__ void radix_histogram_kernel(const int* __restrict__ keys, int64_t n, int shift, int64_t tiles,
                                       int* __restrict__ hist) {
  SC_DYNAMIC_SHARED(int, shared);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  int* counts = shared + (threadIdx.x / 32) * kRadixBins;
  const int64_t warps = grid_threads() / 32;
  for (int64_t tile = global_thread() / 32; tile < tiles; tile += warps) {
    for (int d = lane; d < kRadixBins; d += 32) counts[d] = 0;
    __syncwarp();
    const int64_t begin = tile * kRadixTileItems;
    for (int k = 0; k < kRadixItemsPerLane; ++k) {
      const int64_t i = begin + k * 32 + lane;
      if (i < n) atomicAdd(&counts[radix_digit(keys[i], shift)], 1);
    }
    __syncwarp();
    for (int d = lane; d < kRadixBins; d += 32) hist[int64_t{d} * tiles + tile] = counts[d];
    __syncwarp();
  }
}

// One stable pass: keys_out / values_out[position] for every item, positions from
// hist_offsets (the exclusive scan of radix_histogram_kernel's counts). values_in nullptr:
// the value of item i is i. keys_out nullptr: keys are not written (the last pass).
__global__ void radix_scatter_kernel(const int* __restrict__ keys_in, const int* __restrict__ values_in, int64_t n,
                                     int shift, int64_t tiles, const int* __restrict__ hist_offsets,
                                     int* __restrict__ keys_out, int* __restrict__ values_out) {
  SC_DYNAMIC_SHARED(int, shared);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const unsigned lanes_before = (1u << lane) - 1u;
  int* next = shared + (threadIdx.x / 32) * kRadixBins;  // next output position per digit
  const int64_t warps = grid_threads() / 32;
  for (int64_t tile = global_thread() / 32; tile < tiles; tile += warps) {
    for (int d = lane; d < kRadixBins; d += 32) next[d] = hist_offsets[int64_t{d} * tiles + tile];
    __syncwarp();
    const int64_t begin = tile * kRadixTileItems;
    for (int k = 0; k < kRadixItemsPerLane; ++k) {
      const int64_t i = begin + k * 32 + lane;
      const bool valid = i < n;
      const int key = valid ? keys_in[i] : 0;
      const int digit = radix_digit(key, shift);
      unsigned peers = __ballot_sync(0xffffffffu, valid);  // valid lanes with this lane's digit
      for (int b = 0; b < kRadixBits; ++b) {
        const bool bit = (digit >> b) & 1;
        const unsigned with_bit = __ballot_sync(0xffffffffu, bit);
        peers &= bit ? with_bit : ~with_bit;
      }
      const int rank = __popc(peers & lanes_before);
      if (valid) {
        const int at = next[digit] + rank;
        if (keys_out) keys_out[at] = key;
        values_out[at] = values_in ? values_in[i] : static_cast<int>(i);
      }
      __syncwarp();
      if (valid && rank == 0) next[digit] += __popc(peers);  // the first of its peers advances
      __syncwarp();
    }
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
