// What every kernel source includes: the CUDA runtime under nvcc, the emulation layer
// otherwise, and the few portable pieces both builds share:
//   SC_LAUNCH(grid, block, shared, stream, kernel)(args...)   replaces <<<...>>> (stream nullptr:
//                                                              the thread's current stream)
//   SC_NAMED_KERNEL(kernel) + SC_LAUNCH_NAMED(name, ...)       a kernel passed as a value keeps
//                                                              its name in the emulator's counters
//   SC_CUDA_CHECK(call)                                        CUDA calls, typed exception with file:line
//   SC_DYNAMIC_SHARED(T, name)                                 the block's dynamic shared memory
//   DeviceBuffer<T>                                            RAII device allocation
// The same sources compile twice: into namespace sparsecore::cuda::device (nvcc, real GPU)
// and sparsecore::cuda::emulated (g++, the emulator); SC_BACKEND_NS names the current one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/cuda/cuda_error.h"
#include "sparsecore/cuda/launch_limits.h"
#include "sparsecore/cuda/memory_cache_stats.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define SC_BACKEND_NS device
#define SC_LAUNCH(grid, block, shared, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (shared), ::sparsecore::cuda::device::launch_stream(stream)>>>
#define SC_LAUNCH_NAMED(name, grid, block, shared, stream, ...) \
  __VA_ARGS__<<<(grid), (block), (shared), ::sparsecore::cuda::device::launch_stream(stream)>>>
#define SC_DYNAMIC_SHARED(T, name)                                    \
  extern __shared__ __align__(16) unsigned char sc_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(sc_dynamic_shared_)
#else
#include "emulation/cuda_emulation.h"
#include "emulation/device_memory.h"
#define SC_BACKEND_NS emulated
#define SC_LAUNCH(grid, block, shared, stream, ...) \
  ::sparsecore::cuda_emulation::make_launcher(__VA_ARGS__, (grid), (block), (shared), #__VA_ARGS__)
#define SC_LAUNCH_NAMED(name, grid, block, shared, stream, ...) \
  ::sparsecore::cuda_emulation::make_launcher(__VA_ARGS__, (grid), (block), (shared), (name))
#define SC_DYNAMIC_SHARED(T, name) \
  T* name = reinterpret_cast<T*>(::sparsecore::cuda_emulation::this_thread().shared_memory)
#endif

#define SC_NAMED_KERNEL(...) __VA_ARGS__, #__VA_ARGS__

#define SC_LAUNCH_BOUNDS __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm)
// The same block size for a kernel that keeps more in registers than SC_LAUNCH_BOUNDS' 64
// per thread allow without spilling (the fused update: a row's weights, gradient and two
// state vectors): one block per SM fewer, 80 registers.
#define SC_LAUNCH_BOUNDS_WIDE __launch_bounds__(kMaxBlockThreads, kMinBlocksPerSm - 1)

// Full unrolling of loops with constant trip counts (register arrays stay in registers).
#if defined(__CUDACC__)
#define SC_UNROLL _Pragma("unroll")
#else
#define SC_UNROLL _Pragma("GCC unroll 8")
#endif

#if defined(__CUDACC__)
#define SC_CUDA_CHECK(call)                                                                                  \
  do {                                                                                                       \
    cudaError_t sc_status_ = (call);                                                                         \
    if (sc_status_ != cudaSuccess)                                                                           \
      throw ::sparsecore::cuda::CudaError(std::string(#call) + " failed at " + __FILE__ + ":" +              \
                                          std::to_string(__LINE__) + ": " + cudaGetErrorString(sc_status_)); \
  } while (0)
#define SC_CHECK_LAUNCH() SC_CUDA_CHECK(cudaGetLastError())
#else
#define SC_CHECK_LAUNCH() ((void)0)  // the emulator throws from the launch itself
#endif

namespace sparsecore::cuda::SC_BACKEND_NS {

// Every kernel declares SC_LAUNCH_BOUNDS: blocks of at most kMaxBlockThreads (launches never
// use larger ones: LaunchLimits::validate) and at least kMinBlocksPerSm of them resident per
// SM, a budget of 64 registers per thread that keeps half of an SM's thread slots filled.
// (Given the block size alone, nvcc 13 budgets 32 registers and the pooling kernels spill.)
inline constexpr int kMaxBlockThreads = LaunchLimits::kMaxBlockThreads;
inline constexpr int kMinBlocksPerSm = 4;

// The stream that device work of this host thread goes to: launches, copies, memsets and
// events (nullptr, the legacy default stream, until a StreamScope says otherwise). Nothing
// on the data path synchronises the whole device; a host read waits for this stream only.
inline cudaStream_t& current_stream_slot() {
  thread_local cudaStream_t stream = nullptr;
  return stream;
}
inline cudaStream_t current_stream() { return current_stream_slot(); }
inline cudaStream_t launch_stream(cudaStream_t given) { return given ? given : current_stream(); }

class StreamScope {
 public:
  explicit StreamScope(cudaStream_t stream) : previous_(std::exchange(current_stream_slot(), stream)) {}
  ~StreamScope() { current_stream_slot() = previous_; }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t previous_;
};

// Makes `stream` current from activate() until its own destruction. Declared before an
// object's buffers, it tags their release, which runs after the destructor's body.
class ReleaseScope {
 public:
  ReleaseScope() = default;
  ReleaseScope(const ReleaseScope&) = delete;
  ReleaseScope& operator=(const ReleaseScope&) = delete;
  void activate(cudaStream_t stream) {
    previous_ = std::exchange(current_stream_slot(), stream);
    active_ = true;
  }
  ~ReleaseScope() {
    if (active_) current_stream_slot() = previous_;
  }

 private:
  cudaStream_t previous_ = nullptr;
  bool active_ = false;
};

inline uintptr_t stream_handle(cudaStream_t s) { return reinterpret_cast<uintptr_t>(s); }
inline cudaStream_t stream_from_handle(uintptr_t h) { return reinterpret_cast<cudaStream_t>(h); }

// The current device of this host thread (cudaGetDevice / the emulator's), and a scope that
// makes `device` current and restores the previous one.
inline int current_device() {
#if defined(__CUDACC__)
  int d = 0;
  SC_CUDA_CHECK(cudaGetDevice(&d));
  return d;
#else
  return ::sparsecore::cuda_emulation::current_device();
#endif
}

inline void set_current_device(int device) {
#if defined(__CUDACC__)
  SC_CUDA_CHECK(cudaSetDevice(device));
#else
  ::sparsecore::cuda_emulation::set_current_device(device);
#endif
}

inline int device_count() {
#if defined(__CUDACC__)
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
#else
  return ::sparsecore::cuda_emulation::kEmulatedDevices;
#endif
}

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : previous_(current_device()) {
    if (device != previous_) set_current_device(device);
    changed_ = device != previous_;
  }
  ~DeviceGuard() {
    if (changed_) {
#if defined(__CUDACC__)
      cudaSetDevice(previous_);
#else
      ::sparsecore::cuda_emulation::set_current_device(previous_);
#endif
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
  bool changed_ = false;
};

// Allocation straight from the driver (or the emulator's guarded pages), on the current device.
inline void* raw_device_malloc(size_t bytes) {
#if defined(__CUDACC__)
  void* p = nullptr;
  if (bytes) SC_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
#else
  return ::sparsecore::cuda_emulation::device_allocate(bytes);
#endif
}

inline void raw_device_free(void* p) noexcept {
#if defined(__CUDACC__)
  if (p) cudaFree(p);
#else
  ::sparsecore::cuda_emulation::device_free(p);
#endif
}
}  // namespace sparsecore::cuda::SC_BACKEND_NS

#include "device_memory_cache.cuh"  // DeviceMemoryCache, device_malloc, device_free

namespace sparsecore::cuda::SC_BACKEND_NS {

enum class Copy { kHostToDevice, kDeviceToHost, kDeviceToDevice };

// A copy on the current stream; a device-to-host copy waits for it (the host reads dst next).
inline void copy_bytes(void* dst, const void* src, size_t bytes, Copy kind) {
  if (bytes == 0) return;
#if defined(__CUDACC__)
  cudaMemcpyKind k = kind == Copy::kHostToDevice   ? cudaMemcpyHostToDevice
                     : kind == Copy::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                   : cudaMemcpyDeviceToDevice;
  SC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, current_stream()));
  if (kind == Copy::kDeviceToHost) SC_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
#else
  namespace emu = ::sparsecore::cuda_emulation;
  emu::count_copy(kind == Copy::kHostToDevice   ? emu::CopyDirection::kHostToDevice
                  : kind == Copy::kDeviceToHost ? emu::CopyDirection::kDeviceToHost
                                                : emu::CopyDirection::kDeviceToDevice,
                  bytes);
  std::memcpy(dst, src, bytes);
#endif
}

// Device-to-host copy that does not wait: dst must be pinned host memory (PinnedBuffer), and
// is read only after an event recorded behind the copy has completed (DeviceEvent).
inline void copy_to_host_async(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
#if defined(__CUDACC__)
  SC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, current_stream()));
#else
  namespace emu = ::sparsecore::cuda_emulation;
  emu::count_copy(emu::CopyDirection::kDeviceToHost, bytes, /*blocking=*/false);
  std::memcpy(dst, src, bytes);
#endif
}

// Page-locked host memory (plain host memory under the emulator): the target of asynchronous
// device-to-host copies.
template <typename T>
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t n) : size_(n) {
#if defined(__CUDACC__)
    if (n) SC_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&data_), n * sizeof(T)));
#else
    data_ = n ? new T[n]() : nullptr;
#endif
  }
  ~PinnedBuffer() {
#if defined(__CUDACC__)
    if (data_) cudaFreeHost(data_);
#else
    delete[] data_;
#endif
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// A point in a stream's work: recorded behind the work queued on the current stream, waited
// for by another stream without the host (wait), or asked without blocking (done).
class DeviceEvent {
 public:
  DeviceEvent() {
#if defined(__CUDACC__)
    SC_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
#endif
  }
  ~DeviceEvent() {
#if defined(__CUDACC__)
    if (event_) cudaEventDestroy(event_);
#endif
  }
  DeviceEvent(const DeviceEvent&) = delete;
  DeviceEvent& operator=(const DeviceEvent&) = delete;
  void record() {
#if defined(__CUDACC__)
    SC_CUDA_CHECK(cudaEventRecord(event_, current_stream()));
#else
    stream_ = stream_handle(current_stream());
    position_ = ::sparsecore::cuda_emulation::record_event(stream_);
#endif
  }
  // The current stream's later work runs after the recorded point.
  void wait() const {
#if defined(__CUDACC__)
    SC_CUDA_CHECK(cudaStreamWaitEvent(current_stream(), event_, 0));
#else
    ::sparsecore::cuda_emulation::wait_event(stream_, position_);
#endif
  }
  // True when the device has passed the recorded point (never blocks).
  bool done() const {
#if defined(__CUDACC__)
    const cudaError_t status = cudaEventQuery(event_);
    if (status == cudaErrorNotReady) return false;
    SC_CUDA_CHECK(status);
    return true;
#else
    return ::sparsecore::cuda_emulation::event_done(stream_, position_);
#endif
  }

 private:
#if defined(__CUDACC__)
  cudaEvent_t event_ = nullptr;
#else
  uintptr_t stream_ = 0;
  uint64_t position_ = 0;
#endif
};

// The current stream waits for the work queued so far on `producer` (an event between them).
inline void wait_for_stream(cudaStream_t producer) {
  if (producer == current_stream()) return;
  DeviceEvent e;
  {
    StreamScope on(producer);
    e.record();
  }
  e.wait();
}

// A non-blocking stream of the current device, owned (a collection's own stream).
class OwnedStream {
 public:
  OwnedStream() {
#if defined(__CUDACC__)
    SC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
#else
    stream_ = stream_from_handle(::sparsecore::cuda_emulation::create_stream(false));
#endif
  }
  ~OwnedStream() {
#if defined(__CUDACC__)
    if (stream_) cudaStreamDestroy(stream_);
#else
    ::sparsecore::cuda_emulation::destroy_stream(stream_handle(stream_));
#endif
  }
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

inline void fill_bytes(void* dst, int value, size_t bytes) {
  if (bytes == 0) return;
#if defined(__CUDACC__)
  SC_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, current_stream()));
#else
  ::sparsecore::cuda_emulation::count_memset(bytes);
  std::memset(dst, value, bytes);
#endif
}

// Waits for the current stream (never for the whole device).
inline void synchronize() {
#if defined(__CUDACC__)
  SC_CUDA_CHECK(cudaStreamSynchronize(current_stream()));
#else
  ::sparsecore::cuda_emulation::count_sync();
#endif
}

// An owned device array of T (uninitialised), on the device that was current when it was
// (re)sized; it goes back to that device's cache. Moves, never copies.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), device_(o.device_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      device_free(data_, device_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      device_ = o.device_;
    }
    return *this;
  }
  ~DeviceBuffer() { device_free(data_, device_); }

  // Discards the contents when the size changes.
  void resize(size_t n) {
    if (n == size_) return;
    device_free(data_, device_);
    data_ = nullptr;
    size_ = 0;
    device_ = current_device();
    data_ = static_cast<T*>(device_malloc(n * sizeof(T)));
    size_ = n;
  }
  void upload(const T* host, size_t n) {
    resize(n);
    copy_bytes(data_, host, n * sizeof(T), Copy::kHostToDevice);
  }
  void download(T* host, size_t n) const { copy_bytes(host, data_, n * sizeof(T), Copy::kDeviceToHost); }
  void fill_zero() { fill_bytes(data_, 0, size_ * sizeof(T)); }
  void fill_bytes_with(int byte) { fill_bytes(data_, byte, size_ * sizeof(T)); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  int device() const { return device_; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
  int device_ = 0;
};

// Relaxed atomic read of memory other threads CAS (a plain read would be a data race).
template <typename T>
__device__ __forceinline__ T load_relaxed(const T* p) {
#if defined(__CUDACC__)
  return *static_cast<const volatile T*>(p);
#else
  return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_relaxed);
#endif
}

// Row storage element <-> fp32.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}

// Grid-stride loop bounds: kernels accept any grid, so launches can cap their block count.
__device__ __forceinline__ int64_t global_thread() { return int64_t{blockIdx.x} * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t{gridDim.x} * blockDim.x; }

// Warps: blocks are one-dimensional multiples of 32 threads (LaunchLimits), so a warp is 32
// consecutive threads and grid_threads() is a multiple of 32. A grid-stride loop over
// warp_base() steps keeps every lane of a warp in the loop together (lanes past the end run
// with nothing to do), which warp votes and shuffles need.
inline constexpr unsigned kFullWarp = 0xffffffffu;
__device__ __forceinline__ int lane_index() { return static_cast<int>(threadIdx.x) & 31; }
__device__ __forceinline__ int64_t warp_base() { return global_thread() - lane_index(); }

// Warp-aggregated increment: each lane with `flag` adds 1 to *counter (lanes may name
// different counters); one atomic per distinct counter of the warp, from its first lane,
// instead of one per lane. Every lane of the warp must call it together.
__device__ __forceinline__ void warp_increment(unsigned long long* counter, bool flag) {
  unsigned todo = __ballot_sync(kFullWarp, flag);
  while (todo) {  // warp-uniform: every lane sees the same votes
    const int leader = __ffs(todo) - 1;
    const auto target = __shfl_sync(kFullWarp, reinterpret_cast<unsigned long long>(counter), leader);
    const unsigned same = __ballot_sync(kFullWarp, flag && reinterpret_cast<unsigned long long>(counter) == target);
    if (lane_index() == leader)
      atomicAdd(reinterpret_cast<unsigned long long*>(target), static_cast<unsigned long long>(__popc(same)));
    todo &= ~same;
  }
}

// InvalidArgument naming `what` unless p is device memory of `device` (the emulator's device
// memory is host memory: host pointers pass, emulated device memory must be on `device`).
inline void check_device_memory(const void* p, int device, const std::string& what) {
#if defined(__CUDACC__)
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    cudaGetLastError();  // clear the error of an unknown pointer
    attr.type = cudaMemoryTypeUnregistered;
  }
  SC_CHECK_ARG(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, what,
               " is not CUDA device memory (pass host arrays as NumPy arrays, device arrays as CuPy or torch CUDA)");
  const std::optional<int> on = attr.type == cudaMemoryTypeDevice ? std::optional<int>(attr.device) : std::nullopt;
#else
  const std::optional<int> on = ::sparsecore::cuda_emulation::device_of(p);
#endif
  SC_CHECK_ARG(!on || *on == device, what, " is on cuda:", on.value_or(-1),
               ", but this collection lives on cuda:", device, " (move the array to cuda:", device,
               ", or build the collection with device=", on.value_or(-1), ")");
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
