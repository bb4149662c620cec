// cuda::MemoryCacheStats: what a device's memory cache holds and how it served allocations.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace sparsecore::cuda {

// One device's cache of freed device blocks (csrc/cuda/device_runtime.cuh): every batch
// allocates its scratch anew, and the cache serves those from blocks freed before instead of
// cudaMalloc / cudaFree. Bounded: a freed block that would take cached_bytes past
// limit_bytes goes back to the driver (released_over_limit counts them). With an external
// allocator (DeviceAllocator) the cache keeps nothing: in_use_bytes counts the blocks it
// handed out and misses every allocation.
struct MemoryCacheStats {
  int64_t limit_bytes = 0;
  int64_t cached_bytes = 0;  // freed blocks kept for reuse
  int64_t in_use_bytes = 0;  // blocks handed out through the cache and not yet freed
  int64_t hits = 0;          // allocations served from the cache
  int64_t misses = 0;        // allocations that went to the driver
  int64_t released_over_limit = 0;
};

// An external allocator of device memory for one device (e.g. PyTorch's caching allocator,
// so that sparsecore's buffers come from the pool torch manages and reports): allocate(bytes,
// device, stream) returns a block of at least `bytes` usable in the order of `stream` (a
// cudaStream_t as an integer; throws, or returns null, when it has none), release(block)
// takes a block back. Both are called from any thread that runs a device call.
struct DeviceAllocator {
  std::function<void*(size_t bytes, int device, uintptr_t stream)> allocate;
  std::function<void(void* block)> release;
};

}  // namespace sparsecore::cuda
