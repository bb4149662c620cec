#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

#include "key_rows.h"
#include "sparsecore/table/chunk_pool.h"
#include "sparsecore/table/hash_table.h"
#include "sparsecore/table/huge_pages.h"

using namespace sparsecore;

using sparsecore::test_support::fill_key;
using sparsecore::test_support::row_key;

TEST(HashTable, MatchesUnorderedMapUnderRandomOperations) {
  for (int shard_bits : {0, 3, 6}) {
    HashTable table(sizeof(int64_t) * 2, shard_bits);
    std::unordered_map<int64_t, bool> model;
    std::mt19937_64 gen(1234 + shard_bits);
    std::vector<int64_t> universe = {0, -1, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()};
    for (int i = 0; i < 2000; ++i) universe.push_back(static_cast<int64_t>(gen()));
    for (int round = 0; round < 200; ++round) {
      std::vector<int64_t> keys(gen() % 300);
      for (auto& k : keys) k = universe[gen() % universe.size()];
      std::vector<std::byte*> rows(keys.size());
      // 0, 3: insert through find_or_insert / lookup_batch; 2, 4: find through find /
      // lookup_batch (a batch of up to 300 keys: shorter and longer than the probe window).
      int op = static_cast<int>(gen() % 5);
      const HashTable::RowInit init = fill_key;
      auto prefetch_bytes = [&] { return gen() % 2 ? size_t{0} : size_t{1 + gen() % 200}; };
      if (op == 0 || op == 3) {
        if (op == 0)
          table.find_or_insert(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), fill_key);
        else
          table.lookup_batch(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), &init, prefetch_bytes());
        for (size_t i = 0; i < keys.size(); ++i) {
          ASSERT_NE(rows[i], nullptr);
          ASSERT_EQ(row_key(rows[i]), keys[i]);
          model[keys[i]] = true;
        }
      } else if (op == 1) {
        int64_t expected = 0;
        std::unordered_map<int64_t, bool> distinct;
        for (int64_t k : keys) distinct[k] = true;
        for (auto& [k, _] : distinct) expected += model.erase(k);
        ASSERT_EQ(table.erase(keys.data(), static_cast<int64_t>(keys.size())), expected);
      } else {
        if (op == 2)
          table.find(keys.data(), static_cast<int64_t>(keys.size()), rows.data());
        else
          table.lookup_batch(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), nullptr, prefetch_bytes());
        for (size_t i = 0; i < keys.size(); ++i) {
          if (model.count(keys[i])) {
            ASSERT_NE(rows[i], nullptr);
            ASSERT_EQ(row_key(rows[i]), keys[i]);
          } else {
            ASSERT_EQ(rows[i], nullptr);
          }
        }
      }
      ASSERT_EQ(table.size(), model.size());
    }
  }
}

TEST(HashTable, RowPointersSurviveGrowth) {
  HashTable table(sizeof(int64_t), 0);
  int64_t first = 42;
  std::byte* row = nullptr;
  table.find_or_insert(&first, 1, &row, fill_key);
  std::vector<int64_t> keys(100000);
  for (size_t i = 0; i < keys.size(); ++i) keys[i] = static_cast<int64_t>(i) * 7919 + 1;
  std::vector<std::byte*> rows(keys.size());
  table.find_or_insert(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), fill_key);
  std::byte* again = nullptr;
  table.find(&first, 1, &again);
  EXPECT_EQ(row, again);
  EXPECT_EQ(row_key(row), 42);
}

TEST(HashTable, LookupBatchInsertsDuplicatesOnceAndFindsWhatOtherCallsInserted) {
  for (int shard_bits : {0, 2, 6}) {
    HashTable table(sizeof(int64_t), shard_bits);
    const HashTable::RowInit init = fill_key;
    // Duplicates, the out-of-band key and keys spread over every shard, in one batch.
    std::vector<int64_t> keys;
    for (int i = 0; i < 500; ++i) keys.push_back(static_cast<int64_t>(i % 200) * 1000003 - 77);
    keys.push_back(std::numeric_limits<int64_t>::min());
    keys.push_back(std::numeric_limits<int64_t>::min());
    std::vector<std::byte*> rows(keys.size());
    table.lookup_batch(keys.data(), 3, rows.data(), nullptr);  // absent, nothing inserted
    EXPECT_EQ(rows[0], nullptr);
    EXPECT_EQ(table.size(), 0u);
    table.lookup_batch(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), &init, 8);
    EXPECT_EQ(table.size(), 201u);
    for (size_t i = 0; i < keys.size(); ++i) {
      ASSERT_NE(rows[i], nullptr);
      EXPECT_EQ(row_key(rows[i]), keys[i]);
      if (i >= 200 && i < 500) EXPECT_EQ(rows[i], rows[i - 200]);
    }
    EXPECT_EQ(rows[500], rows[501]);
    std::vector<std::byte*> found(keys.size());
    table.find(keys.data(), static_cast<int64_t>(keys.size()), found.data());
    EXPECT_EQ(found, rows);
    // A key inserted by another call is found, and its row is not re-initialised.
    int64_t extra = 987654321;
    std::byte* extra_row = nullptr;
    table.find_or_insert(&extra, 1, &extra_row, [](int64_t, std::byte* r) { std::memset(r, 0x5a, 8); });
    std::byte* again = nullptr;
    table.lookup_batch(&extra, 1, &again, &init);
    EXPECT_EQ(again, extra_row);
    EXPECT_EQ(static_cast<unsigned char>(again[0]), 0x5a);
  }
}

TEST(HashTable, DuplicateKeysInOneBatchShareOneRow) {
  HashTable table(sizeof(int64_t), 2);
  std::vector<int64_t> keys = {5, 5, std::numeric_limits<int64_t>::min(), 5, std::numeric_limits<int64_t>::min()};
  std::vector<std::byte*> rows(keys.size());
  std::vector<uint8_t> inserted(keys.size());
  table.find_or_insert(keys.data(), 5, rows.data(), fill_key, inserted.data());
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(rows[0], rows[1]);
  EXPECT_EQ(rows[2], rows[4]);
  EXPECT_EQ(inserted[0] + inserted[1] + inserted[3], 1);
}

TEST(ChunkPool, ChunksAreDistinctAlignedWritableAndReusedAfterRelease) {
  ChunkPool pool(1000);  // rounded up to 1024; enough chunks to pass the huge-page slab size
  EXPECT_EQ(pool.chunk_bytes(), 1024u);
  std::vector<std::byte*> chunks;
  std::set<std::byte*> seen;
  for (int i = 0; i < 5000; ++i) {
    std::byte* c = pool.allocate();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(c) % 64, 0u);
    EXPECT_TRUE(seen.insert(c).second) << "chunk handed out twice";
    std::memset(c, i & 0xff, pool.chunk_bytes());
    chunks.push_back(c);
  }
  for (int i = 0; i < 5000; ++i) EXPECT_EQ(static_cast<int>(chunks[i][1023]), i & 0xff);  // no overlap
  EXPECT_GE(pool.reserved_bytes(), 5000u * 1024u);
  const size_t reserved = pool.reserved_bytes();
  pool.release(chunks[17]);
  EXPECT_EQ(pool.allocate(), chunks[17]);
  EXPECT_EQ(pool.reserved_bytes(), reserved);
}

TEST(HugePages, LargeRegionsAreHugePageAlignedAndSmallOnesComeFromTheHeap) {
  for (size_t bytes : {size_t{100}, kHugePageBytes - 8, kHugePageBytes, kHugePageBytes * 3 + 12345}) {
    std::byte* p = allocate_huge(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    if (bytes >= kHugePageBytes) EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kHugePageBytes, 0u);
    std::memset(p, 0x5a, bytes);  // every byte writable, including the last partial page
    EXPECT_EQ(static_cast<int>(p[bytes - 1]), 0x5a);
    free_huge(p, bytes);
  }
}
