// Stable LSD radix sort of int32 keys with int32 values, without CUB: counting and scans
// only, so its cost is the same whatever the key distribution (one hot key in a batch costs
// what any other key does). Each thread owns a chunk of kRadixChunk consecutive items; a
// pass over a 4-bit digit is a per-chunk digit histogram, one exclusive scan of the
// (digit, chunk) counts laid out digit-major (so for equal digits earlier chunks come
// first), and a scatter in which each thread walks its chunk in order. No shared memory, no
// warp operations: the per-chunk counters are packed into two registers. Stability is what
// the callers need: values start as positions, so equal keys keep their positions ascending.
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

// hist (kRadixBins * chunks): hist[digit * chunks + chunk] = keys of `chunk` with that digit.
__global__ void SC_LAUNCH_BOUNDS radix_histogram_kernel(const int* __restrict__ keys, int64_t n, int shift,
                                                        int64_t chunks, int* __restrict__ hist) {
  for (int64_t c = global_thread(); c < chunks; c += grid_threads()) {
    DigitCounters counts;
    const int64_t begin = c * kRadixChunk, end = begin + kRadixChunk < n ? begin + kRadixChunk : n;
    for (int64_t i = begin; i < end; ++i) counts.increment(radix_digit(keys[i], shift));
    SC_UNROLL
    for (int d = 0; d < kRadixBins; ++d) hist[d * chunks + c] = counts.get(d);
  }
}

// One stable pass: keys_out / values_out[position] for every item, positions from
// hist_offsets (the exclusive scan of radix_histogram_kernel's counts). values_in nullptr:
// the value of item i is i. keys_out nullptr: keys are not written (the last pass).
__global__ void SC_LAUNCH_BOUNDS radix_scatter_kernel(const int* __restrict__ keys_in,
                                                      const int* __restrict__ values_in, int64_t n, int shift,
                                                      int64_t chunks, const int* __restrict__ hist_offsets,
                                                      int* __restrict__ keys_out, int* __restrict__ values_out) {
  for (int64_t c = global_thread(); c < chunks; c += grid_threads()) {
    DigitCounters seen;
    const int64_t begin = c * kRadixChunk, end = begin + kRadixChunk < n ? begin + kRadixChunk : n;
    for (int64_t i = begin; i < end; ++i) {
      const int key = keys_in[i];
      const int digit = radix_digit(key, shift);
      const int at = hist_offsets[digit * chunks + c] + seen.get(digit);
      seen.increment(digit);
      if (keys_out) keys_out[at] = key;
      values_out[at] = values_in ? values_in[i] : static_cast<int>(i);
    }
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
