// The memory cache of a device (part of device_runtime.cuh, which includes it where its
// allocations are needed; include device_runtime.cuh, not this file): freed blocks kept for
// the next allocation, or an external allocator (DeviceAllocator) in its place.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sparsecore/cuda/memory_cache_stats.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// Freed device blocks kept by size class for the next allocation, one cache per device:
// every batch allocates its scratch anew, and cudaMalloc / cudaFree cost far more than the
// kernels (cudaFree also synchronises the device). Reuse is stream-ordered: a block goes back
// to the cache tagged with the stream current at its release (the stream of the call that
// freed it, which is ordered after the block's earlier uses) and is reused only for work on
// that stream. Size classes: on a device, 4 per power of two (at most 25% slack);
// under the emulator the size rounded to 256 bytes, so a reused block still ends on its
// guard page exactly as a fresh one would. The cache is bounded: a freed block that would
// take the cached bytes past the limit (default kDefaultLimitBytes) goes back to the driver,
// and lowering the limit frees cached blocks down to it. When the driver runs out of memory
// the cache is emptied and the allocation retried.
class DeviceMemoryCache {
 public:
  static constexpr int64_t kDefaultLimitBytes = int64_t{1} << 30;
  static constexpr int kMaxDevices = 64;

  // The cache of `device` (made on first use, never destroyed: no driver calls at exit).
  static DeviceMemoryCache& for_device(int device) {
    SC_CHECK_ARG(device >= 0 && device < kMaxDevices, "device ordinal ", device, " out of range");
    static std::mutex mutex;
    static DeviceMemoryCache* caches[kMaxDevices] = {};
    std::lock_guard<std::mutex> lock(mutex);
    if (!caches[device]) caches[device] = new DeviceMemoryCache(device);
    return *caches[device];
  }
  static DeviceMemoryCache& instance() { return for_device(current_device()); }

  static size_t size_class(size_t bytes) {
    size_t rounded = (bytes + 255) / 256 * 256;
#if defined(__CUDACC__)
    size_t octave = 256;
    while (octave * 2 <= rounded) octave *= 2;
    const size_t quarter = octave / 4 > 256 ? octave / 4 : 256;
    rounded = (rounded + quarter - 1) / quarter * quarter;
#endif
    return rounded;
  }

  int device() const { return device_; }

  // Sends every later allocation to `allocator` (DeviceAllocator: e.g. PyTorch's caching
  // allocator), or back to this cache when it has no functions; the blocks cached so far go
  // back to the driver. Blocks keep the allocator that made them until they are released.
  void set_allocator(const DeviceAllocator& allocator) {
    std::lock_guard<std::mutex> lock(mutex_);
    external_ = allocator.allocate && allocator.release ? std::make_shared<DeviceAllocator>(allocator) : nullptr;
    trim_to(0);
  }

  // A block of at least `bytes` on this cache's device.
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    const size_t cls = size_class(bytes);
    if (std::shared_ptr<DeviceAllocator> external = external_allocator()) {
      void* p = external->allocate(cls, device_, reinterpret_cast<uintptr_t>(current_stream()));
      SC_CHECK(p != nullptr, CudaError, "the external device allocator returned no block of ", cls, " bytes on device ",
               device_);
      std::lock_guard<std::mutex> lock(mutex_);
      external_blocks_[p] = {cls, std::move(external)};
      in_use_bytes_ += static_cast<int64_t>(cls);
      ++misses_;
      return p;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(cls);
      const cudaStream_t stream = current_stream();
      if (it != free_.end()) {
        auto& blocks = it->second;
        for (size_t i = blocks.size(); i-- > 0;) {
          if (blocks[i].second != stream) continue;
          void* p = blocks[i].first;
          blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i));
          cached_bytes_ -= cls;
          in_use_bytes_ += cls;
          ++hits_;
          return p;
        }
      }
      ++misses_;
    }
    return allocate_fresh(cls);
  }

  void release(void* p) noexcept {
    if (!p) return;
    std::unique_lock<std::mutex> lock(mutex_);
    if (auto ext = external_blocks_.find(p); ext != external_blocks_.end()) {
      auto [bytes, allocator] = std::move(ext->second);
      external_blocks_.erase(ext);
      in_use_bytes_ -= static_cast<int64_t>(bytes);
      lock.unlock();
      try {
        allocator->release(p);
      } catch (...) {  // a release cannot fail the caller: the block is the allocator's now
      }
      return;
    }
    auto it = size_of_.find(p);
    if (it == size_of_.end()) {
      raw_device_free(p);
      return;
    }
    in_use_bytes_ -= it->second;
    if (cached_bytes_ + static_cast<int64_t>(it->second) > limit_bytes_) {
      size_of_.erase(it);
      ++released_over_limit_;
      free_on_device(p);
      return;
    }
    free_[it->second].emplace_back(p, current_stream());
    cached_bytes_ += it->second;
  }

  // Returns every cached block to the driver.
  void trim() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_to(0);
  }

  // Caps the cached bytes (>= 0); cached blocks past the new limit are freed now.
  void set_limit(int64_t bytes) {
    SC_CHECK_ARG(bytes >= 0, "memory cache limit must be >= 0 bytes, got ", bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    limit_bytes_ = bytes;
    trim_to(bytes);
  }

  MemoryCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return {limit_bytes_, cached_bytes_, in_use_bytes_, hits_, misses_, released_over_limit_};
  }

  int64_t cached_bytes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }

 private:
  explicit DeviceMemoryCache(int device) : device_(device) {}

  void* allocate_fresh(size_t bytes) {
    DeviceGuard on(device_);
    void* p = nullptr;
    try {
      p = raw_device_malloc(bytes);
    } catch (const std::exception&) {
#if defined(__CUDACC__)
      cudaGetLastError();  // the failed cudaMalloc must not surface at the next launch check
#endif
      trim();
      p = raw_device_malloc(bytes);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    size_of_[p] = bytes;
    in_use_bytes_ += static_cast<int64_t>(bytes);
    return p;
  }

  void free_on_device(void* p) noexcept {
    try {
      DeviceGuard on(device_);
      raw_device_free(p);
    } catch (...) {
      raw_device_free(p);
    }
  }

  // Frees cached blocks (largest classes first) until at most `bytes` stay cached. Locked.
  void trim_to(int64_t bytes) noexcept {
    while (cached_bytes_ > bytes && !free_.empty()) {
      auto largest = std::prev(free_.end());
      for (const auto& block : largest->second) {
        size_of_.erase(block.first);
        free_on_device(block.first);
        cached_bytes_ -= static_cast<int64_t>(largest->first);
      }
      free_.erase(largest);
    }
  }

  std::shared_ptr<DeviceAllocator> external_allocator() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return external_;
  }

  const int device_;
  mutable std::mutex mutex_;
  std::shared_ptr<DeviceAllocator> external_;  // set: allocations go there, not to the cache
  std::unordered_map<void*, std::pair<size_t, std::shared_ptr<DeviceAllocator>>> external_blocks_;
  // By size class: (block, the stream it was released on). A block is handed out again only
  // on that stream, whose later work is ordered after every earlier use of the block.
  std::map<size_t, std::vector<std::pair<void*, cudaStream_t>>> free_;
  std::unordered_map<void*, size_t> size_of_;
  int64_t limit_bytes_ = kDefaultLimitBytes;
  int64_t cached_bytes_ = 0, in_use_bytes_ = 0;
  int64_t hits_ = 0, misses_ = 0, released_over_limit_ = 0;
};

// A block on the current device, and its return to the cache of the device it came from.
inline void* device_malloc(size_t bytes) { return DeviceMemoryCache::instance().allocate(bytes); }
inline void device_free(void* p, int device) noexcept {
  if (p) DeviceMemoryCache::for_device(device).release(p);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
