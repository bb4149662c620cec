// Sizes that must hold at any scale, checked at small ones: table growth follows the keys
// that are missing (not the length of a lookup) and stages nothing of the table's size on
// the host; the dedup set's slot indices keep their value past 2^31; groups too large for
// the device's int32 positions and blocks past the kernels' launch bounds are refused; the
// shift GEMM's grid stays within CUDA's limits for any batch.
#include <sys/mman.h>

#include <algorithm>
#include <set>

#include "batch_kernels.cuh"
#include "cuda_test_util.h"
#include "shift_matmul.cuh"

namespace sparsecore::cuda::testing {
namespace {

namespace emu = ::sparsecore::cuda_emulation;

TableConfig small_table() {
  TableConfig c;
  c.name = "t";
  c.dim = 3;
  return c;
}

std::vector<int64_t> distinct_keys(size_t n) {
  std::set<int64_t> s;
  while (s.size() < n) s.insert(static_cast<int64_t>(rng()()));
  return {s.begin(), s.end()};
}

class CudaGrowth : public ::testing::TestWithParam<Backend> {};

TEST_P(CudaGrowth, LookupsOfKnownKeysNeverGrowTheTable) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  DeviceEmbeddingCollection dev({small_table()}, 4, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  std::vector<int64_t> keys = distinct_keys(380);
  std::vector<float> first(keys.size() * 3);
  dev.lookup(0, keys.data(), 180, first.data(), true);
  dev.lookup(0, keys.data() + 180, 200, first.data() + 180 * 3, true);
  const int64_t capacity = dev.table_capacity(0);
  ASSERT_EQ(dev.table_size(0), 380);
  // Every key four times in one lookup: 1520 ids, none of them new, more than the table holds.
  std::vector<int64_t> repeated;
  for (int r = 0; r < 4; ++r) repeated.insert(repeated.end(), keys.begin(), keys.end());
  ASSERT_GT(static_cast<double>(repeated.size()), 0.75 * static_cast<double>(capacity));
  std::vector<float> again(repeated.size() * 3);
  dev.lookup(0, repeated.data(), static_cast<int64_t>(repeated.size()), again.data(), true);
  EXPECT_EQ(dev.table_capacity(0), capacity);
  EXPECT_EQ(dev.table_size(0), 380);
  for (size_t i = 0; i < repeated.size() * 3; ++i) ASSERT_EQ(again[i], first[i % first.size()]) << i;
}

TEST_P(CudaGrowth, GrowthCountsOnlyTheMissingKeys) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  DeviceEmbeddingCollection dev({small_table()}, 4, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  std::vector<int64_t> keys = distinct_keys(4000);
  std::vector<float> out(keys.size() * 3);
  dev.lookup(0, keys.data(), 180, out.data(), true);
  const int64_t capacity = dev.table_capacity(0);
  const auto limit = static_cast<int64_t>(0.75 * static_cast<double>(capacity));
  ASSERT_LT(limit + 1, static_cast<int64_t>(keys.size()));
  // The known keys and enough new ones to fill the 0.75 limit exactly: no growth.
  dev.lookup(0, keys.data(), limit, out.data(), true);
  EXPECT_EQ(dev.table_capacity(0), capacity);
  EXPECT_EQ(dev.table_size(0), limit);
  // One more new key passes the limit.
  dev.lookup(0, keys.data(), limit + 1, out.data(), true);
  EXPECT_GT(dev.table_capacity(0), capacity);
  EXPECT_EQ(dev.table_size(0), limit + 1);
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaGrowth, ::testing::Values(Backend::kEmulated, Backend::kDevice), backend_name);

TEST(CudaGrowthWitness, GrowthWritesEmptyMarkersOnTheDeviceNotThroughTheHost) {
  DeviceEmbeddingCollection dev({small_table()}, 4, RowStorage::kFloat32, Backend::kEmulated,
                                test_limits(Backend::kEmulated));
  std::vector<int64_t> keys = distinct_keys(5000);
  std::vector<float> out(keys.size() * 3);
  emu::reset_counters();
  dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), out.data(), true);
  const emu::Counters c = emu::counters();
  ASSERT_GE(dev.table_capacity(0), 8192);
  // Uploaded: the keys, nothing proportional to the capacity (8 B per slot would be 64 KiB+).
  EXPECT_LE(c.h2d_bytes, keys.size() * sizeof(int64_t) + 256);
  EXPECT_GE(c.kernels.count("fill_keys_kernel"), 1u);
}

// The dedup set of a group with more than 2^30 ids has more than 2^31 slots. Its slot
// indices are checked where they live, in a set of 2^32 slots whose untouched pages the
// kernel never reads (a zeroed set is empty, so a lazily mapped one is too).
TEST(CudaDedup, SetSlotsPast2To31KeepTheirValue) {
  const uint64_t slots = uint64_t{1} << 32;
  const size_t bytes = slots * sizeof(int);
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) GTEST_SKIP() << "cannot reserve 16 GiB of address space here";
  int* set = static_cast<int*>(mem);
  const uint64_t mask = slots - 1;
  // Two keys whose home slots lie past 2^31, one of them twice (one group: its home slot is
  // the key's hash mixed with the group's).
  auto home = [mask](int64_t k) { return (key_hash(k) ^ splitmix64(0)) & mask; };
  std::vector<int64_t> high;
  for (int64_t k = 0; high.size() < 2; ++k)
    if (home(k) > (uint64_t{1} << 31) + 1000 && (high.empty() || home(k) != home(high[0]))) high.push_back(k);
  const std::vector<int64_t> ids = {high[0], high[1], high[0]};
  std::vector<int64_t> slot_of(3, -1);
  std::vector<int> is_first(3, -1);
  const int64_t id_begin[] = {0, 3};
  const int64_t* id_ptrs[] = {ids.data()};
  emulated::BatchView view;
  view.num_groups = 1;
  view.num_ids = 3;
  view.id_begin = id_begin;
  view.ids = id_ptrs;
  SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, emulated::batch_dedup_insert_kernel)(view, set, mask, slot_of.data());
  SC_LAUNCH(dim3(1), dim3(32), 0, nullptr, emulated::mark_first_kernel)(set, slot_of.data(), 3, is_first.data());
  EXPECT_EQ(static_cast<uint64_t>(slot_of[0]), home(high[0]));
  EXPECT_EQ(static_cast<uint64_t>(slot_of[1]), home(high[1]));
  EXPECT_EQ(slot_of[2], slot_of[0]);
  EXPECT_EQ(is_first, (std::vector<int>{1, 1, 0}));
  EXPECT_EQ(set[slot_of[0]], 1);  // 1 + the first position of the key
  munmap(mem, bytes);
}

TEST(CudaLimits, GroupsPastTheDeviceIdLimitAreRefusedBeforeAnything) {
  DeviceEmbeddingCollection dev({small_table()}, 4, RowStorage::kFloat32, Backend::kEmulated,
                                test_limits(Backend::kEmulated));
  const int64_t n = DeviceEmbeddingCollection::kMaxGroupIds + 1;
  const int64_t offsets[] = {0, n};
  const int64_t one_id = 7;
  GroupInput in{0, &one_id, n, offsets, 1, nullptr};  // never read: the size alone is refused
  try {
    dev.prepare({in}, true);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("at most 2147483646"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dev.table_size(0), 0);
}

TEST(CudaLimits, BlocksPastTheKernelsLaunchBoundsAreRefused) {
  for (int threads : {LaunchLimits::kMaxBlockThreads + 32, 1024}) {
    EXPECT_THROW(DeviceEmbeddingCollection({small_table()}, 4, RowStorage::kFloat32, Backend::kEmulated,
                                           LaunchLimits{threads, 0}),
                 InvalidArgument)
        << threads;
  }
  EXPECT_NO_THROW(DeviceEmbeddingCollection({small_table()}, 4, RowStorage::kFloat32, Backend::kEmulated,
                                            LaunchLimits{LaunchLimits::kMaxBlockThreads, 0}));
}

// Which batch tiles of 64 the blocks of a shift_gemm_grid visit (the kernel's stride loop).
std::vector<int> tile_visits(dim3 grid, int64_t batch) {
  std::vector<int> visits((batch + emulated::kShiftTile - 1) / emulated::kShiftTile, 0);
  for (int64_t by = 0; by < grid.y; ++by)
    for (int64_t b0 = by * emulated::kShiftTile; b0 < batch; b0 += int64_t{grid.y} * emulated::kShiftTile)
      ++visits[b0 / emulated::kShiftTile];
  return visits;
}

TEST(CudaShiftGemmGrid, GridYStaysWithinCudaLimitsAndEveryBatchTileRunsOnce) {
  for (int64_t batch : {int64_t{1}, int64_t{4194240}, int64_t{4194241}, int64_t{9000000}}) {
    const dim3 g = emulated::shift_gemm_grid(130, batch);
    EXPECT_EQ(g.x, 3u);
    EXPECT_LE(g.y, 65535u) << "batch " << batch;
    const std::vector<int> visits = tile_visits(g, batch);
    EXPECT_TRUE(std::all_of(visits.begin(), visits.end(), [](int v) { return v == 1; })) << "batch " << batch;
  }
  EXPECT_LE(emulated::shift_gemm_grid(1, int64_t{1} << 40).y, 65535u);
  EXPECT_EQ(emulated::shift_gemm_grid(1, 1000, 4).y, 4u);  // the launch limits cap it further
}

}  // namespace
}  // namespace sparsecore::cuda::testing
