// The device hash table (through the collection's lookup / erase / export) against a
// std::map under random operation sequences: every int64 key legal, duplicates within a
// batch, growth, erase and re-insert.
#include <map>
#include <set>

#include "cuda_test_util.h"

namespace sparsecore::cuda::testing {
namespace {

class CudaHashTable : public ::testing::TestWithParam<Backend> {};

TableConfig table_config(int dim) {
  TableConfig c;
  c.name = "t";
  c.dim = dim;
  c.init.kind = InitKind::kUniform;
  c.init.a = -1.0f;
  c.init.b = 1.0f;
  return c;
}

TEST_P(CudaHashTable, MatchesAMapUnderRandomInsertFindErase) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  const int dim = 3;
  DeviceEmbeddingCollection dev({table_config(dim)}, 11, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  EmbeddingCollection cpu({table_config(dim)}, 11);
  std::set<int64_t> present;
  for (int round = 0; round < 12; ++round) {
    auto keys = random_ids(1 + static_cast<int64_t>(rng()() % 300), 400);
    const int op = static_cast<int>(rng()() % 3);
    std::vector<float> got(keys.size() * dim), want(keys.size() * dim);
    if (op == 0) {
      dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), got.data(), true);
      cpu.table(0).lookup_or_insert_weights(keys.data(), static_cast<int64_t>(keys.size()), want.data());
      present.insert(keys.begin(), keys.end());
    } else if (op == 1) {
      dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), got.data(), false);
      cpu.table(0).find_weights(keys.data(), static_cast<int64_t>(keys.size()), want.data());
    } else {
      int64_t expected = 0;
      std::set<int64_t> distinct(keys.begin(), keys.end());
      for (int64_t k : distinct) expected += present.erase(k);
      EXPECT_EQ(dev.erase(0, keys.data(), static_cast<int64_t>(keys.size())), expected);
      cpu.table(0).erase(keys.data(), static_cast<int64_t>(keys.size()));
      continue;
    }
    EXPECT_EQ(got, want) << "round " << round << " op " << op;
    EXPECT_EQ(dev.table_size(0), static_cast<int64_t>(present.size()));
  }
  auto exported = dev.export_rows(0);
  EXPECT_EQ(std::vector<int64_t>(present.begin(), present.end()), exported.keys);
}

TEST_P(CudaHashTable, DuplicateKeysInOneBatchGetOneRow) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  DeviceEmbeddingCollection dev({table_config(2)}, 5, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  std::vector<int64_t> keys(500);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<int64_t>(i % 7) - 3 + (i % 5 == 0 ? INT64_MIN : 0);
  std::vector<float> out(keys.size() * 2);
  dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), out.data(), true);
  std::set<int64_t> distinct(keys.begin(), keys.end());
  EXPECT_EQ(dev.table_size(0), static_cast<int64_t>(distinct.size()));
  for (size_t i = 0; i < keys.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (keys[i] == keys[j]) {
        EXPECT_EQ(out[2 * i], out[2 * j]);
        break;
      }
}

TEST_P(CudaHashTable, GrowsAndKeepsEveryRow) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  DeviceEmbeddingCollection dev({table_config(4)}, 3, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  std::vector<int64_t> all;
  std::vector<float> first;
  int64_t capacity = 0;
  int growths = 0;
  for (int round = 0; round < 8; ++round) {
    std::vector<int64_t> keys(200);
    for (auto& k : keys) k = static_cast<int64_t>(rng()());
    std::vector<float> out(keys.size() * 4);
    dev.lookup(0, keys.data(), static_cast<int64_t>(keys.size()), out.data(), true);
    all.insert(all.end(), keys.begin(), keys.end());
    first.insert(first.end(), out.begin(), out.end());
    growths += dev.table_capacity(0) != capacity;
    capacity = dev.table_capacity(0);
    EXPECT_LE(dev.table_size(0), 0.75 * static_cast<double>(capacity));
  }
  EXPECT_GE(growths, 3);
  std::vector<float> again(all.size() * 4);
  dev.lookup(0, all.data(), static_cast<int64_t>(all.size()), again.data(), false);
  EXPECT_EQ(again, first);
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaHashTable, ::testing::Values(Backend::kEmulated, Backend::kDevice),
                         backend_name);

}  // namespace
}  // namespace sparsecore::cuda::testing
