// CPU emulation of the subset of CUDA that sparsecore's kernels use, so the same .cu sources
// compile with a plain C++20 compiler and run on the CPU (docs/architecture.md).
//
// Execution model of one launch:
//   - blocks run one after another, so __shared__ data is per block, in a seeded random
//     order (a fresh permutation per launch) unless set_block_order_seed(nullopt) asks for
//     grid order: no kernel may depend on the order of its blocks, as none may on a device;
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
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>

#include "sparsecore/core/error.h"
#include "sparsecore/core/half.h"
#include "sparsecore/cuda/emulator_counters.h"

// ----------------------------------------------------------------------------- qualifiers
#define __global__ inline  // kernels in headers: one definition across the TUs that include them
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

// Runs `body` once per thread of every block: grid.x*y*z blocks one at a time (in the block
// order above), each with block.x*y*z concurrent threads and `shared_bytes` of zeroed
// dynamic shared memory. Grids past CUDA's limits (x < 2^31, y and z <= 65535) are refused.
void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

// Block order of the following launches: a seed gives a seeded random permutation per launch
// (the default: SPARSECORE_EMULATOR_BLOCK_SEED, else 1); nullopt gives grid order (x fastest).
void set_block_order_seed(std::optional<uint64_t> seed);
std::optional<uint64_t> block_order_seed();

// The performance witness (sparsecore/cuda/emulator_counters.h): what the emulated kernels
// asked of a device, counted the way a device would see it.
using Counters = cuda::EmulatorCounters;
using KernelCount = cuda::EmulatorKernelCount;
enum class CopyDirection { kHostToDevice, kDeviceToHost, kDeviceToDevice };
Counters counters();
void reset_counters();
void count_launch(const char* kernel, dim3 grid);
// A blocking device-to-host copy is also a host sync (the host waits for the device to reach
// it); an asynchronous one (into pinned memory, read after an event says it landed) is not.
void count_copy(CopyDirection direction, size_t bytes, bool blocking = true);
void count_memset(size_t bytes);
void count_sync();

// Streams. The emulator runs device work when it is issued, so its streams (the default
// ones, 0/1/2, and those of create_stream) are already in order. A deferred stream (for
// tests) queues host work instead, until something waits for it: an event wait runs its
// queue up to the event, a synchronisation runs all of it. That is how a test plays a
// producer on a side stream whose writes land only once a consumer orders itself after them.
uintptr_t create_stream(bool deferred);
void destroy_stream(uintptr_t stream);
// Runs `work` now (eager streams) or queues it (deferred streams).
void enqueue(uintptr_t stream, std::function<void()> work);
// An event on `stream`: the count of work items issued to it so far.
uint64_t record_event(uintptr_t stream);
// Orders the caller after the event: a deferred stream runs its queue up to the event.
void wait_event(uintptr_t stream, uint64_t position);
bool event_done(uintptr_t stream, uint64_t position);
// Work items queued and not yet run on a deferred stream (0 for eager streams).
uint64_t pending_work(uintptr_t stream);
void synchronize_stream(uintptr_t stream);  // runs the queue; counted as a host sync

// The `<<<grid, block, shared, stream>>>` replacement: SC_LAUNCH(...)(args...).
template <typename Kernel>
class Launcher {
 public:
  Launcher(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes, const char* name)
      : kernel_(kernel), grid_(grid), block_(block), shared_(shared_bytes), name_(name) {}
  template <typename... Args>
  void operator()(Args&&... args) const {
    auto params = std::make_tuple(args...);  // by value, as a launch copies its parameters
    Kernel k = kernel_;
    count_launch(name_, grid_);
    run_grid(grid_, block_, shared_, [&params, k] { std::apply(k, params); });
  }

 private:
  Kernel kernel_;
  dim3 grid_, block_;
  size_t shared_;
  const char* name_;
};

template <typename Kernel>
Launcher<Kernel> make_launcher(Kernel kernel, dim3 grid, dim3 block, size_t shared_bytes, const char* name) {
  return Launcher<Kernel>(kernel, grid, block, shared_bytes, name);
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
  return emu::from_bits<T>(
      emu::warp_exchange(mask, emu::to_bits(value), emu::segment_lane(lane, src, width), "__shfl_sync"));
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
  return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(value),
                                              emu::segment_lane(lane, lane ^ lane_mask, width), "__shfl_xor_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::sparsecore::cuda_emulation::warp_ballot(mask, predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, !predicate) == 0; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }

// Correctly rounded float arithmetic (IEEE round to nearest even, one rounding each): the
// host's SSE float operations. The build uses ISO C++ without -ffp-contract=fast and no FMA
// target, so these are never fused either.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }

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

// One conversion for every backend: sparsecore/core/half.h.
inline __half __float2half(float f) {
  __half h;
  h.bits = sparsecore::float_to_half(f);
  return h;
}

inline float __half2float(__half h) { return sparsecore::half_to_float(h.bits); }

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
