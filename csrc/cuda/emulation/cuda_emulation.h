// CPU emulation of the subset of CUDA that sparsecore's kernels use, so the same .cu sources
// compile with a plain C++20 compiler and run on the CPU (DESIGN.md "Decisions").
//
// Execution model of one launch:
//   - blocks run one after another (grid order: x fastest), so __shared__ data is per block;
//   - the threads of a block run concurrently on a thread team (real threads, reused across
//     blocks and launches) with a real barrier behind __syncthreads();
//   - warps are 32 consecutive threads; shuffles, ballots and __syncwarp meet at a per-warp
//     barrier and require the full mask of the warp (anything else is rejected);
//   - atomics are std::atomic_ref operations on the same memory;
//   - device allocations end against an inaccessible guard page, so an index past the end
//     of an allocation stops the process with a message naming it (see device_memory.h).
// Launches are serialised (one at a time per process), which also makes `static` storage a
// faithful model of __shared__. Anything the emulator does not implement fails to compile
// or throws EmulationError from the launch; it never silently runs something different.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulation.h is for the CPU build of the kernels; nvcc uses the CUDA runtime"
#endif

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

#include "sparsecore/core/error.h"

// ----------------------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
using cudaStream_t = void*;

namespace sparsecore::cuda_emulation {

// A kernel used something the emulator does not implement, or threw.
class EmulationError : public Error {
 public:
  using Error::Error;
};

inline constexpr int kWarpSize = 32;
inline constexpr int kMaxBlockThreads = 1024;

struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  int linear_tid = 0;
  unsigned char* shared_memory = nullptr;  // dynamic shared memory of the current block
};

ThreadState& this_thread();
void sync_block();
// Exchange of one 64-bit value per lane through the warp; returns the value of lane `src`
// of this warp. `mask` must be the warp's full mask.
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* what);
// OR of a predicate bit over the warp (ballot).
unsigned warp_ballot(unsigned mask, bool predicate);
void sync_warp(unsigned mask);

// Runs `body` once per thread of every block: grid.x*y*z blocks in order, each with
// block.x*y*z concurrent threads and `shared_bytes` of zeroed dynamic shared memory.
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

// The `<<<grid, block, shared, stream>>>` replacement: SC_LAUNCH(...)(args...).
template <typename Kernel>
class Launcher {
 public:
  Launcher(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes)
      : kernel_(kernel), grid_(grid), block_(block), shared_(shared_bytes) {}
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto params = std::make_tuple(args...);  // by value, as a launch copies its parameters
    Kernel k = kernel_;
    run_grid(grid_, block_, shared_, [&params, k] { std::apply(k, params); });
  }

 private:
  Kernel kernel_;
  dim3 grid_, block_;
  size_t shared_;
};

template <typename Kernel>
Launcher<Kernel> make_launcher(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes) {
  return Launcher<Kernel>(kernel, grid, block, shared_bytes);
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp operations move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

inline int lane_id() { return this_thread().linear_tid % kWarpSize; }

// Source lane of a shuffle within segments of `width` lanes (CUDA's rules).
inline int segment_lane(int lane, int target, int width) { return (lane & ~(width - 1)) + (target & (width - 1)); }

}  // namespace sparsecore::cuda_emulation

// ----------------------------------------------------------------------------- built-ins
#define threadIdx (::sparsecore::cuda_emulation::this_thread().thread_idx)
#define blockIdx (::sparsecore::cuda_emulation::this_thread().block_idx)
#define blockDim (::sparsecore::cuda_emulation::this_thread().block_dim)
#define gridDim (::sparsecore::cuda_emulation::this_thread().grid_dim)
inline constexpr int warpSize = 32;

inline void __syncthreads() { ::sparsecore::cuda_emulation::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::sparsecore::cuda_emulation::sync_warp(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int src, int width = 32) {
  namespace emu = ::sparsecore::cuda_emulation;
  int lane = emu::lane_id();
  return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(value), emu::segment_lane(lane, src, width), "__shfl_sync"));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  namespace emu = ::sparsecore::cuda_emulation;
  int lane = emu::lane_id();
  int in_segment = (lane & (width - 1)) + static_cast<int>(delta);
  int src = in_segment < width ? lane + static_cast<int>(delta) : lane;
  return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(value), src, "__shfl_down_sync"));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  namespace emu = ::sparsecore::cuda_emulation;
  int lane = emu::lane_id();
  return emu::from_bits<T>(
      emu::warp_exchange(mask, emu::to_bits(value), emu::segment_lane(lane, lane ^ lane_mask, width), "__shfl_xor_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::sparsecore::cuda_emulation::warp_ballot(mask, predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, !predicate) == 0; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

// Atomics: std::atomic_ref over the same memory, relaxed as CUDA's are.
template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <typename T>
T atomicSub(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_sub(value, std::memory_order_relaxed);
}
template <typename T>
T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <typename T>
T atomicCAS(T* address, T expected, T desired) {
  static_assert(std::is_integral_v<T>, "atomicCAS works on integers");
  std::atomic_ref<T>(*address).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;  // the value found, as CUDA returns
}
template <typename T>
T atomicMin(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (value < old && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (value > old && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
  }
  return old;
}

// ----------------------------------------------------------------------------- half precision
// IEEE binary16 storage with round-to-nearest-even conversion, bit-compatible with cuda_fp16.
struct __half {
  uint16_t bits = 0;
};

inline __half __float2half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t abs = x & 0x7fffffffu;
  __half h;
  if (abs >= 0x7f800000u) {  // Inf or NaN
    h.bits = static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    return h;
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to Inf
    h.bits = static_cast<uint16_t>(sign | 0x7c00u);
    return h;
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) {  // < 2^-25: rounds to zero
      h.bits = static_cast<uint16_t>(sign);
      return h;
    }
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    int shift = 126 - static_cast<int>(abs >> 23);  // 14 + 112 - exp... gives shift into 10-bit mantissa
    uint32_t q = mant >> (shift + 0);
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half_point = 1u << (shift - 1);
    uint32_t m = q >> 0;
    if (rem > half_point || (rem == half_point && (m & 1u))) ++m;
    h.bits = static_cast<uint16_t>(sign | m);
    return h;
  }
  uint32_t exp = (abs >> 23) - 112;  // rebias 127 -> 15
  uint32_t mant = abs & 0x7fffffu;
  uint32_t m = mant >> 13;
  uint32_t rem = mant & 0x1fffu;
  uint32_t out = (exp << 10) | m;
  if (rem > 0x1000u || (rem == 0x1000u && (m & 1u))) ++out;  // may carry into the exponent: correct
  h.bits = static_cast<uint16_t>(sign | out);
  return h;
}

inline float __half2float(__half h) {
  uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  uint32_t x;
  if (exp == 0x1fu) {
    x = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    x = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while (!(mant & 0x400u));
    x = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// ----------------------------------------------------------------------------- vector types
// The vector loads the kernels use (16-byte float4, 4-byte __half2): same layout and
// alignment as CUDA's, so a misaligned vector access is as wrong here as on a device.
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(4) __half2 {
  __half x, y;
};
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
