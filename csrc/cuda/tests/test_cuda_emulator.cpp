// The emulator itself: barriers, shared memory, warp operations, atomics, fp16 conversion,
// and what it rejects (partial warp masks, divergent barriers, out-of-bounds accesses).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "device_runtime.cuh"

using namespace sparsecore::cuda::emulated;
namespace emu = sparsecore::cuda_emulation;

namespace {

__global__ void block_sum_kernel(const int* in, int* out) {
  SC_DYNAMIC_SHARED(int, s);
  const int t = static_cast<int>(threadIdx.x);
  s[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (int stride = static_cast<int>(blockDim.x) / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

__global__ void static_shared_kernel(int* out) {
  __shared__ int slot[64];
  slot[threadIdx.x] = static_cast<int>(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slot[blockDim.x - 1 - threadIdx.x];
}

__global__ void warp_ops_kernel(int* shfl_down, int* shfl_xor, unsigned* ballot, int* bcast) {
  const int t = static_cast<int>(threadIdx.x);
  int v = t * 3;
  int sum = v;
  for (int off = 16; off > 0; off /= 2) sum += __shfl_down_sync(0xffffffffu, sum, off);
  shfl_down[t] = sum;
  shfl_xor[t] = __shfl_xor_sync(0xffffffffu, v, 1);
  ballot[t] = __ballot_sync(0xffffffffu, t % 3 == 0);
  bcast[t] = __shfl_sync(0xffffffffu, v, 5);
}

__global__ void partial_mask_kernel(int* out) { out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1, 0); }

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void atomics_kernel(unsigned long long* counter, int* minimum, float* fsum, int n) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    atomicAdd(counter, 1ULL);
    atomicMin(minimum, static_cast<int>(n - i));
    atomicAdd(fsum, 0.5f);
  }
}

__global__ void write_index_kernel(int* out, int64_t index) { out[index] = 7; }

__global__ void record_block_kernel(unsigned* order, unsigned* cursor) {
  if (threadIdx.x == 0) order[atomicAdd(cursor, 1u)] = blockIdx.x + 100 * blockIdx.y;
}

// The blocks of one launch of a (8, 8) grid, in the order they ran (x + 100 y).
std::vector<unsigned> block_run_order() {
  std::vector<unsigned> order(64), cursor(1, 0);
  SC_LAUNCH(dim3(8, 8), dim3(32), 0, nullptr, record_block_kernel)(order.data(), cursor.data());
  return order;
}

std::vector<unsigned> grid_order() {
  std::vector<unsigned> order;
  for (unsigned y = 0; y < 8; ++y)
    for (unsigned x = 0; x < 8; ++x) order.push_back(x + 100 * y);
  return order;
}

}  // namespace

TEST(Emulator, BlocksRunInASeededRandomOrderFreshForEachLaunch) {
  const auto saved = emu::block_order_seed();
  emu::set_block_order_seed(42);
  const auto first = block_run_order(), second = block_run_order();
  emu::set_block_order_seed(42);
  EXPECT_EQ(block_run_order(), first);  // the seed reproduces the orders
  EXPECT_NE(first, second);             // each launch draws its own permutation
  EXPECT_NE(first, grid_order());
  auto sorted = first;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, grid_order());  // every block exactly once
  emu::set_block_order_seed(std::nullopt);
  EXPECT_EQ(block_run_order(), grid_order());
  emu::set_block_order_seed(saved);
}

TEST(Emulator, CountsLaunchesHostSyncsAndBytesByDirection) {
  DeviceBuffer<int> buf(64);
  std::vector<int> host(64, 1);
  emu::reset_counters();
  buf.upload(host.data(), 64);
  SC_LAUNCH(dim3(3), dim3(32), 0, nullptr, write_index_kernel)(buf.data(), 5);
  SC_LAUNCH(dim3(2), dim3(32), 0, nullptr, write_index_kernel)(buf.data(), 6);
  buf.download(host.data(), 64);
  synchronize();
  buf.fill_zero();
  const emu::Counters c = emu::counters();
  EXPECT_EQ(c.launches, 2u);
  EXPECT_EQ(c.kernels.at("write_index_kernel").launches, 2u);
  EXPECT_EQ(c.kernels.at("write_index_kernel").blocks, 5u);
  EXPECT_EQ(c.h2d_copies, 1u);
  EXPECT_EQ(c.h2d_bytes, 256u);
  EXPECT_EQ(c.d2h_copies, 1u);
  EXPECT_EQ(c.d2h_bytes, 256u);
  EXPECT_EQ(c.host_syncs, 2u);  // the blocking download and the synchronize
  EXPECT_EQ(c.memsets, 1u);
  EXPECT_EQ(c.memset_bytes, 256u);
  emu::reset_counters();
  EXPECT_EQ(emu::counters().launches, 0u);
}

TEST(Emulator, BarrierAndDynamicSharedMemoryReduceEachBlock) {
  const int threads = 64, blocks = 5;
  std::vector<int> in(threads * blocks), out(blocks);
  std::mt19937 rng(std::random_device{}());
  for (auto& x : in) x = static_cast<int>(rng() % 1000);
  SC_LAUNCH(dim3(blocks), dim3(threads), threads * sizeof(int), nullptr, block_sum_kernel)(in.data(), out.data());
  for (int b = 0; b < blocks; ++b)
    EXPECT_EQ(out[b], std::accumulate(in.begin() + b * threads, in.begin() + (b + 1) * threads, 0));
}

TEST(Emulator, StaticSharedMemoryIsPerBlock) {
  const int threads = 64, blocks = 3;
  std::vector<int> out(threads * blocks);
  SC_LAUNCH(dim3(blocks), dim3(threads), 0, nullptr, static_shared_kernel)(out.data());
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < threads; ++t) EXPECT_EQ(out[b * threads + t], b * 1000 + threads - 1 - t);
}

TEST(Emulator, WarpShufflesAndBallotFollowCudaSemantics) {
  std::vector<int> down(32), xr(32), bc(32);
  std::vector<unsigned> ballot(32);
  SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, warp_ops_kernel)(down.data(), xr.data(), ballot.data(), bc.data());
  EXPECT_EQ(down[0], 3 * (31 * 32 / 2));  // lane 0 holds the warp's sum
  unsigned expected_ballot = 0;
  for (int t = 0; t < 32; ++t) {
    EXPECT_EQ(xr[t], (t ^ 1) * 3);
    EXPECT_EQ(bc[t], 15);
    if (t % 3 == 0) expected_ballot |= 1u << t;
  }
  for (int t = 0; t < 32; ++t) EXPECT_EQ(ballot[t], expected_ballot);
}

TEST(Emulator, RejectsPartialWarpMasks) {
  std::vector<int> out(32);
  EXPECT_THROW(SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, partial_mask_kernel)(out.data()), emu::EmulationError);
}

TEST(Emulator, RejectsBarrierReachedByPartOfTheBlock) {
  std::vector<int> out(64);
  EXPECT_THROW(SC_LAUNCH(dim3(2), dim3(32), 0, nullptr, divergent_barrier_kernel)(out.data()), emu::EmulationError);
}

TEST(Emulator, RejectsInvalidLaunchConfigurations) {
  std::vector<int> out(2048);
  EXPECT_THROW(SC_LAUNCH(dim3(1), dim3(2048), 0, nullptr, write_index_kernel)(out.data(), 0), emu::EmulationError);
  EXPECT_THROW(SC_LAUNCH(dim3(0), dim3(32), 0, nullptr, write_index_kernel)(out.data(), 0), emu::EmulationError);
  // Past CUDA's grid limits (y and z at most 65535), as a device refuses them.
  EXPECT_THROW(SC_LAUNCH(dim3(1, 65536), dim3(32), 0, nullptr, write_index_kernel)(out.data(), 0), emu::EmulationError);
  EXPECT_THROW(SC_LAUNCH(dim3(1, 1, 65536), dim3(32), 0, nullptr, write_index_kernel)(out.data(), 0),
               emu::EmulationError);
}

TEST(Emulator, AtomicsAreExactUnderContention) {
  const int n = 5000;
  DeviceBuffer<unsigned long long> counter(1);
  DeviceBuffer<int> minimum(1);
  DeviceBuffer<float> fsum(1);
  counter.fill_zero();
  fsum.fill_zero();
  int big = 1 << 30;
  minimum.upload(&big, 1);
  SC_LAUNCH(dim3(3), dim3(64), 0, nullptr, atomics_kernel)(counter.data(), minimum.data(), fsum.data(), n);
  unsigned long long c;
  int m;
  float f;
  counter.download(&c, 1);
  minimum.download(&m, 1);
  fsum.download(&f, 1);
  EXPECT_EQ(c, static_cast<unsigned long long>(n));
  EXPECT_EQ(m, 1);
  EXPECT_EQ(f, 0.5f * n);
}

TEST(Emulator, HalfConversionRoundsToNearestEven) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> dist(-70000.0f, 70000.0f);
  // Every half value converts to float and back unchanged.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    __half h;
    h.bits = static_cast<uint16_t>(bits);
    float f = __half2float(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(__float2half(f).bits, h.bits) << bits;
  }
  // A float rounds to the nearer of its two neighbouring halves.
  for (int i = 0; i < 20000; ++i) {
    float f = dist(rng) * (i % 2 ? 1e-4f : 1.0f);
    float r = __half2float(__float2half(f));
    if (std::isinf(r)) {
      EXPECT_GE(std::fabs(f), 65504.0f);
      continue;
    }
    __half up = __float2half(r);
    up.bits = static_cast<uint16_t>(up.bits + 1);
    EXPECT_LE(std::fabs(f - r), std::fabs(__half2float(up) - r) + 1e-30f) << f;
  }
  EXPECT_EQ(__half2float(__float2half(1.0f + 1.0f / 2048)), 1.0f);        // ties to even
  EXPECT_EQ(__half2float(__float2half(5.9604645e-08f)), 5.9604645e-08f);  // smallest subnormal
}

TEST(EmulatorDeathTest, OutOfBoundsDeviceIndexStopsWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  DeviceBuffer<int> buf(256);  // 1 KiB: the guard page starts right after it
  SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, write_index_kernel)(buf.data(), 255);  // in bounds: fine
  EXPECT_DEATH(SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, write_index_kernel)(buf.data(), 256),
               "out-of-bounds device memory access");
}

TEST(DeviceMemoryCache, ReusesFreedBlocksOfTheSameClassAndTrims) {
  DeviceMemoryCache& cache = DeviceMemoryCache::instance();
  cache.trim();
  void* first = nullptr;
  {
    DeviceBuffer<float> a(1000);
    first = a.data();
  }
  EXPECT_EQ(cache.cached_bytes(), static_cast<int64_t>(DeviceMemoryCache::size_class(4000)));
  DeviceBuffer<float> same(1000);
  EXPECT_EQ(same.data(), first);  // reused, not a fresh allocation
  EXPECT_EQ(cache.cached_bytes(), 0);
  DeviceBuffer<float> other(5000);
  EXPECT_NE(other.data(), first);
  cache.trim();
  EXPECT_EQ(cache.cached_bytes(), 0);
}

TEST(EmulatorDeathTest, OutOfBoundsIndexIsCaughtInAReusedBlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  { DeviceBuffer<int> warm(256); }  // freed into the cache
  DeviceBuffer<int> buf(256);       // the same block again, still against its guard page
  EXPECT_DEATH(SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, write_index_kernel)(buf.data(), 256),
               "out-of-bounds device memory access");
}
