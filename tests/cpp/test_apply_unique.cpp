// EmbeddingCollection::apply_unique (a server's push of summed gradients) and
// sum_gradients_by_id (the worker's sums): together they update rows exactly as the fused
// backward does, and a bad push changes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ops/gathered_pooling.h"
#include "sparsecore/ps/ps_shard.h"

using namespace sparsecore;

namespace {

TableConfig adam_table(Pooling pooling) {
  TableConfig c;
  c.name = "t";
  c.dim = 3;
  c.pooling = pooling;
  c.optimizer.kind = OptimizerKind::kAdam;
  c.optimizer.lr = 0.01f;
  return c;
}

std::vector<float> rows_of(const EmbeddingTable& t, const std::vector<int64_t>& keys) {
  std::vector<float> out(keys.size() * static_cast<size_t>(t.row_floats()));
  for (size_t i = 0; i < keys.size(); ++i) {
    std::byte* row = nullptr;
    t.hash_table().find(&keys[i], 1, &row);
    EXPECT_NE(row, nullptr);
    if (row) t.read_row(row, out.data() + i * static_cast<size_t>(t.row_floats()));
  }
  return out;
}

}  // namespace

TEST(ApplyUnique, WorkerSumsThenServerUpdateEqualTheFusedBackwardBitForBit) {
  for (Pooling pooling : {Pooling::kSum, Pooling::kMean, Pooling::kNone}) {
    EmbeddingCollection fused({adam_table(pooling)}, 3), split({adam_table(pooling)}, 3);
    std::vector<int64_t> ids = {7, -1, 7, 9, -1, 7};
    std::vector<int64_t> offsets = {0, 2, 2, 6};
    std::vector<float> weights = {0.5f, 1.25f, 2.0f, 0.3f, 0.7f, 1.1f};
    const int64_t rows = pooling == Pooling::kNone ? 3 * 4 : 3;
    std::vector<float> grad(static_cast<size_t>(rows) * 3);
    for (size_t i = 0; i < grad.size(); ++i) grad[i] = 0.1f * static_cast<float>(i) - 0.77f;
    for (int step = 0; step < 3; ++step) {
      auto batch = fused.prepare({{0, ids.data(), 6, offsets.data(), 3, weights.data()}}, true);
      fused.backward(*batch, {grad.data()});
      std::vector<int64_t> unique_ids;
      std::vector<float> sums;
      sum_gradients_by_id(ids.data(), 3, offsets.data(), 3, weights.data(), pooling, grad.data(), unique_ids, sums);
      ASSERT_EQ(unique_ids, (std::vector<int64_t>{7, -1, 9}));
      EXPECT_EQ(split.apply_unique(0, unique_ids.data(), 3, sums.data()), step + 1);
    }
    EXPECT_EQ(rows_of(split.table(0), {7, -1, 9}), rows_of(fused.table(0), {7, -1, 9}));
  }
}

TEST(ApplyUnique, RepeatedIdsAndNonFiniteGradientsChangeNothing) {
  EmbeddingCollection emb({adam_table(Pooling::kSum)}, 3);
  std::vector<int64_t> ids = {1, 2, 1};
  std::vector<float> g(9, 1.0f);
  EXPECT_THROW(emb.apply_unique(0, ids.data(), 3, g.data()), InvalidArgument);
  EXPECT_EQ(emb.table(0).size(), 0u);  // refused before any row was inserted
  ids = {1, 2, 3};
  g[4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(emb.apply_unique(0, ids.data(), 3, g.data()), InvalidArgument);
  EXPECT_EQ(emb.table(0).size(), 0u);
  EXPECT_EQ(emb.step(), 0);
  EXPECT_THROW(emb.apply_unique(1, ids.data(), 3, g.data()), InvalidArgument);
}

TEST(ApplyUnique, SynchronousWorkersAreSummedPerRowInWorkerOrder) {
  ps::PsShard shard(ps::ShardLayout{0, 1});
  TableConfig c = adam_table(Pooling::kSum);
  c.optimizer.kind = OptimizerKind::kSGD;
  c.optimizer.lr = 1.0f;
  c.init.kind = InitKind::kConstant;
  c.init.a = 0.0f;
  shard.create_table(c, 1);
  std::vector<int64_t> a = {4, 5}, b = {5};
  std::vector<float> ga = {1, 2, 3, 0.1f, 0.2f, 0.3f}, gb = {10, 20, 30};
  EXPECT_FALSE(shard.push("t", b.data(), 1, gb.data(), 0, 1, 2).complete);  // worker 1 first
  EXPECT_TRUE(shard.push("t", a.data(), 2, ga.data(), 0, 0, 2).complete);
  std::vector<float> out(6);
  shard.pull("t", a.data(), 2, false, out.data());
  const float w5 = -(0.0f + 0.1f + 10.0f);  // worker 0's gradient first, then worker 1's
  EXPECT_EQ(out, (std::vector<float>{-1, -2, -3, w5, -(0.0f + 0.2f + 20.0f), -(0.0f + 0.3f + 30.0f)}));
}
