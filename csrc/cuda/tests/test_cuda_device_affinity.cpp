// A collection lives on one device: its rows are allocated there, every call runs there
// (the caller's current device is restored), and device arrays of another device are refused
// naming both. Each device's memory cache stays within its limit. Under the emulator, which
// has devices 0..7 with their own allocations.
#include <algorithm>

#include "cuda_test_util.h"
#include "device_runtime.cuh"

namespace sparsecore::cuda::testing {
namespace {

namespace emu = ::sparsecore::cuda_emulation;
using emulated::DeviceBuffer;

TableConfig table() {
  TableConfig c;
  c.name = "t";
  c.dim = 4;
  return c;
}

DeviceEmbeddingCollection on_device(int device) {
  return DeviceEmbeddingCollection({table()}, 2, RowStorage::kFloat32, Backend::kEmulated,
                                   test_limits(Backend::kEmulated), device);
}

// Device arrays (the emulator's) of `device`, holding `values`.
DeviceBuffer<int64_t> array_on(int device, const std::vector<int64_t>& values) {
  emulated::DeviceGuard on(device);
  DeviceBuffer<int64_t> b;
  b.upload(values.data(), values.size());
  return b;
}

TEST(CudaDeviceAffinity, RowsLiveOnTheCollectionsDeviceAndCallsRestoreTheCurrentOne) {
  const int64_t before = memory_cache_stats(Backend::kEmulated, 3).in_use_bytes;
  DeviceEmbeddingCollection dev = on_device(3);
  EXPECT_EQ(dev.device(), 3);
  std::vector<int64_t> keys(1000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<int64_t>(i) * 7919;
  std::vector<float> out(keys.size() * 4);
  dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), out.data(), true);
  EXPECT_GE(memory_cache_stats(Backend::kEmulated, 3).in_use_bytes - before, 1000 * 4 * 4);  // the weights at least
  EXPECT_EQ(emu::current_device(), 0);
}

TEST(CudaDeviceAffinity, TheCurrentDeviceIsTheDefault) {
  emulated::DeviceGuard on(6);
  EXPECT_EQ(on_device(-1).device(), 6);
}

TEST(CudaDeviceAffinity, DeviceArraysOfAnotherDeviceAreRefusedNamingBoth) {
  DeviceEmbeddingCollection dev = on_device(0);
  DeviceBuffer<int64_t> ids = array_on(1, {5, 6, 7}), offsets = array_on(1, {0, 3});
  GroupInput in{0, ids.data(), 3, offsets.data(), 1, nullptr};
  try {
    dev.prepare({in}, true, MemorySpace::kDevice);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("is on cuda:1"), std::string::npos) << what;
    EXPECT_NE(what.find("lives on cuda:0"), std::string::npos) << what;
  }
  std::vector<float> out(3 * 4);
  EXPECT_THROW(dev.lookup(0, ids.data(), 3, out.data(), true, MemorySpace::kDevice), InvalidArgument);
  EXPECT_EQ(dev.table_size(0), 0);
  // The same arrays on the collection's own device are fine.
  DeviceBuffer<int64_t> ids0 = array_on(0, {5, 6, 7}), offsets0 = array_on(0, {0, 3});
  GroupInput ok{0, ids0.data(), 3, offsets0.data(), 1, nullptr};
  EXPECT_NO_THROW(dev.prepare({ok}, true, MemorySpace::kDevice));
  EXPECT_EQ(dev.table_size(0), 3);
}

TEST(CudaDeviceAffinity, DevicesOutOfRangeAreRefused) {
  for (int device : {8, 100, -2}) EXPECT_THROW(on_device(device), InvalidArgument) << device;
  EXPECT_THROW(memory_cache_stats(Backend::kEmulated, 8), InvalidArgument);
}

TEST(CudaMemoryCache, KeepsWithinItsLimitAndFreesTheRest) {
  const int device = 5;
  set_memory_cache_limit(Backend::kEmulated, device, 64 << 10);
  const MemoryCacheStats start = memory_cache_stats(Backend::kEmulated, device);
  {
    emulated::DeviceGuard on(device);
    std::vector<DeviceBuffer<char>> blocks;
    for (int i = 0; i < 4; ++i) blocks.emplace_back(32 << 10);
  }  // four 32 KiB blocks freed: two fit under 64 KiB, two go back to the driver
  MemoryCacheStats s = memory_cache_stats(Backend::kEmulated, device);
  EXPECT_EQ(s.limit_bytes, 64 << 10);
  EXPECT_EQ(s.cached_bytes, 64 << 10);
  EXPECT_EQ(s.released_over_limit - start.released_over_limit, 2);
  EXPECT_EQ(s.in_use_bytes, start.in_use_bytes);
  {
    emulated::DeviceGuard on(device);
    DeviceBuffer<char> again(32 << 10);
    EXPECT_EQ(memory_cache_stats(Backend::kEmulated, device).hits - s.hits, 1);
  }
  set_memory_cache_limit(Backend::kEmulated, device, 0);  // frees what is cached
  EXPECT_EQ(memory_cache_stats(Backend::kEmulated, device).cached_bytes, 0);
  EXPECT_THROW(set_memory_cache_limit(Backend::kEmulated, device, -1), InvalidArgument);
  set_memory_cache_limit(Backend::kEmulated, device, emulated::DeviceMemoryCache::kDefaultLimitBytes);
  empty_memory_cache(Backend::kEmulated, device);
}

}  // namespace
}  // namespace sparsecore::cuda::testing
