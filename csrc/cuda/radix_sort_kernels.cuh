// Pieces of a stable LSD radix sort of int32 keys with int32 values, without CUB: counting
// and scans only, so its cost is the same whatever the key distribution (one hot key in a
// batch costs what any other key does). Each thread owns a chunk of kRadixChunk consecutive
// items; a pass over a 4-bit digit is a per-chunk digit histogram, one exclusive scan of the
// (digit, chunk) counts laid out digit-major (so for equal digits earlier chunks come
// first), and a scatter in which each thread walks its chunk in order. No shared memory, no
// warp operations: the per-chunk counters are packed into two registers. Stability is what
// the callers need: values start as positions, so equal keys keep their positions ascending.
// The kernels (all groups of a batch in one launch) are in batch_kernels.cuh.
#pragma once

#include "device_runtime.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

inline constexpr int kRadixBits = 4;
inline constexpr int kRadixBins = 1 << kRadixBits;
inline constexpr int kRadixChunk = 32;  // items per thread; a count never exceeds 8 bits

// kRadixBins counters of 8 bits in two 64-bit registers (indexing a register array by a
// runtime digit would put it in local memory).
struct DigitCounters {
  uint64_t low = 0, high = 0;
  __device__ __forceinline__ void increment(int digit) {
    const uint64_t one = uint64_t{1} << ((digit & 7) * 8);
    if (digit < 8)
      low += one;
    else
      high += one;
  }
  __device__ __forceinline__ int get(int digit) const {
    return static_cast<int>(((digit < 8 ? low : high) >> ((digit & 7) * 8)) & 0xff);
  }
};

__device__ __forceinline__ int radix_digit(int key, int shift) { return (key >> shift) & (kRadixBins - 1); }

}  // namespace sparsecore::cuda::SC_BACKEND_NS
