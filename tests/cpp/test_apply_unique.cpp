// EmbeddingCollection::apply_unique (a server's push of summed gradients): a bad push changes
// nothing, and synchronous workers' gradients are summed per row in worker order. That a
// worker's sums and the server's update equal the fused backward is tested end to end in
// test_remote_row_store.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"
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
