#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/row_epochs.h"

namespace sparsecore {
namespace {

TEST(RowEpochs, OldestIsTheEarliestHolder) {
  RowEpochs epochs;
  EXPECT_EQ(epochs.oldest(), RowEpochs::now() + 1);
  const uint64_t a = epochs.enter();
  const uint64_t b = epochs.enter();
  EXPECT_LT(a, b);
  EXPECT_EQ(epochs.oldest(), a);
  epochs.leave(a);
  EXPECT_EQ(epochs.oldest(), b);
  EXPECT_EQ(epochs.holders(), 1u);
  epochs.leave(b);
  EXPECT_EQ(epochs.holders(), 0u);
  EXPECT_GT(epochs.oldest(), b);
}

TableConfig capped(int64_t capacity) {
  TableConfig c;
  c.name = "t";
  c.dim = 4;
  c.shard_bits = 0;
  c.expiry.capacity = capacity;
  c.expiry.eviction_headroom = 0.0;
  return c;
}

// Inserts keys one call each, so that a full table evicts one row per call.
void insert(EmbeddingTable& t, const std::vector<int64_t>& keys) {
  for (int64_t k : keys) {
    std::byte* row = nullptr;
    t.find_or_insert_rows(&k, 1, &row);
    ASSERT_NE(row, nullptr);
  }
}

TEST(RowEpochs, RowsRetiredWhileAHolderLivesWaitForIt) {
  EmbeddingTable t(capped(4), 1);
  RowEpochs epochs;
  insert(t, {1, 2, 3, 4});
  insert(t, {5});  // evicts one row before any holder
  EXPECT_EQ(t.retired_rows(), 1u);
  const uint64_t holder = epochs.enter();
  insert(t, {6, 7});  // two more, retired while the holder lives
  EXPECT_EQ(t.retired_rows(), 3u);
  const uint64_t generation = t.generation();
  EXPECT_EQ(t.release_retired_before(epochs.oldest()), 1u);
  EXPECT_EQ(t.retired_rows(), 2u);
  epochs.leave(holder);
  EXPECT_EQ(t.release_retired_before(epochs.oldest()), 2u);
  EXPECT_EQ(t.retired_rows(), 0u);
  EXPECT_EQ(t.generation(), generation);  // nobody looks rows up again
  EXPECT_EQ(t.size(), 4u);
}

TEST(RowEpochs, ReleasedRowsAreReusedByLaterInserts) {
  EmbeddingTable t(capped(2), 1);
  RowEpochs epochs;
  insert(t, {1, 2});
  size_t memory = 0;
  for (int64_t k = 3; k < 3000; ++k) {
    insert(t, {k});
    t.release_retired_before(epochs.oldest());
    if (k == 100) memory = t.memory_bytes();
  }
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.retired_rows(), 0u);
  EXPECT_EQ(t.memory_bytes(), memory);  // no arena growth: the same records go round
}

TEST(RowEpochs, ClearForgetsTheRetiredRows) {
  EmbeddingTable t(capped(2), 1);
  insert(t, {1, 2, 3});
  ASSERT_EQ(t.retired_rows(), 1u);
  t.clear();
  EXPECT_EQ(t.retired_rows(), 0u);
  insert(t, {4, 5});
  EXPECT_EQ(t.size(), 2u);
}

TEST(RowEpochs, CollectionKeepsRowsOfALiveBatch) {
  TableConfig c = capped(2);
  EmbeddingCollection coll({c}, 7);
  auto prepare = [&](std::vector<int64_t> ids) {
    std::vector<int64_t> offsets{0, static_cast<int64_t>(ids.size())};
    GroupInput in{0, ids.data(), static_cast<int64_t>(ids.size()), offsets.data(), 1, nullptr};
    return coll.prepare({in}, /*train=*/true);
  };
  auto held = prepare({1, 2});
  const std::byte* row1 = held->groups[0].unique_rows[0];
  ASSERT_NE(row1, nullptr);
  const uint64_t generation = coll.table(0).generation();
  { auto next = prepare({3, 4}); }  // evicts 1 and 2 (retired: `held` may still use them)
  EXPECT_EQ(coll.table(0).retired_rows(), 2u);
  { auto next = prepare({5, 6}); }  // evicts 3 and 4, releases nothing `held` could hold
  EXPECT_EQ(coll.table(0).retired_rows(), 4u);
  held.reset();
  coll.release_retired_rows(/*wait=*/false);
  EXPECT_EQ(coll.table(0).retired_rows(), 0u);
  EXPECT_EQ(coll.table(0).generation(), generation);
}

}  // namespace
}  // namespace sparsecore
