// Updates that must change nothing when they cannot complete: an overflowing fused update,
// synchronous steps abandoned when the workers fall out of step, a bad dense learning rate,
// and config sizes that do not fit an int.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/ps_shard.h"

using namespace sparsecore;
using namespace sparsecore::ps;

namespace {

TableConfig table(const std::string& name, int dim, OptimizerKind kind) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.optimizer.kind = kind;
  c.optimizer.lr = 1.0f;
  c.init.kind = InitKind::kConstant;
  c.init.a = 0.5f;
  return c;
}

std::vector<float> rows_of(const EmbeddingTable& t, std::vector<int64_t> keys) {
  std::vector<float> out(keys.size() * static_cast<size_t>(t.row_floats()));
  std::vector<std::byte> record(t.row_bytes());
  for (size_t i = 0; i < keys.size(); ++i) {
    std::byte* row = nullptr;
    t.hash_table().find(&keys[i], 1, &row);
    EXPECT_NE(row, nullptr);
    t.read_row(row, out.data() + i * static_cast<size_t>(t.row_floats()));
  }
  return out;
}

}  // namespace

TEST(HardenedUpdates, OverflowingUpdatePutsEveryRowOfTheCallBack) {
  EmbeddingCollection emb({table("a", 3, OptimizerKind::kAdagrad), table("b", 2, OptimizerKind::kSGD)}, 1);
  std::vector<int64_t> ids = {1, 2, 3, 4};
  std::vector<int64_t> offsets = {0, 1, 2, 3, 4};
  auto batch = emb.prepare(
      {{0, ids.data(), 4, offsets.data(), 4, nullptr}, {1, ids.data(), 4, offsets.data(), 4, nullptr}}, true);
  std::vector<float> ga(12, 1.0f), gb(8, 1.0f);
  emb.backward(*batch, {ga.data(), gb.data()});
  std::vector<float> before_a = rows_of(emb.table(0), ids), before_b = rows_of(emb.table(1), ids);
  ga[0] = 1e20f;  // g^2 overflows the Adagrad state of row 1 of table a; table b's update is fine
  EXPECT_THROW(emb.backward(*batch, {ga.data(), gb.data()}), InvalidArgument);
  EXPECT_EQ(emb.step(), 1);
  EXPECT_EQ(rows_of(emb.table(0), ids), before_a);
  EXPECT_EQ(rows_of(emb.table(1), ids), before_b);
}

TEST(HardenedUpdates, SyncStepOfAnotherNumberAbandonsTheIncompleteOne) {
  PsShard shard(ShardLayout{0, 1});
  shard.create_table(table("t", 2, OptimizerKind::kSGD), 1);
  std::vector<int64_t> ids = {5};
  std::vector<float> g = {1.0f, 1.0f};
  EXPECT_FALSE(shard.push("t", ids.data(), 1, g.data(), 26, 0, 2).complete);
  EXPECT_TRUE(shard.step_pending("t"));
  PsShard::PushOutcome out = shard.push("t", ids.data(), 1, g.data(), 20, 1, 2);  // rank 1 restarted
  EXPECT_EQ(out.aborted_step, 26);
  EXPECT_FALSE(out.complete);  // step 20 began with rank 1's push
  out = shard.push("t", ids.data(), 1, g.data(), 20, 0, 2);
  EXPECT_TRUE(out.complete);
  EXPECT_EQ(out.aborted_step, -1);
  EXPECT_FALSE(shard.push("t", ids.data(), 1, g.data(), 21, 1, 2).complete);
  out = shard.push("t", ids.data(), 1, g.data(), 21, 1, 2);  // the same rank twice: it came back
  EXPECT_EQ(out.aborted_step, 21);
  auto aborted = shard.abort_steps();
  ASSERT_EQ(aborted.size(), 1u);
  EXPECT_EQ(aborted[0].first, "t");
  EXPECT_EQ(aborted[0].second, 21);
  EXPECT_FALSE(shard.step_pending("t"));
  EXPECT_TRUE(shard.abort_steps().empty());
}

TEST(HardenedUpdates, DensePushRefusesABadLearningRate) {
  PsShard shard(ShardLayout{0, 1});
  shard.dense("w", 3, 1.0f);
  std::vector<float> g = {1.0f, 1.0f, 1.0f};
  for (float lr : {std::nanf(""), std::numeric_limits<float>::infinity(), -1.0f})
    EXPECT_THROW(shard.dense_push("w", g.data(), 3, lr), InvalidArgument);
  EXPECT_EQ(shard.dense("w", 3, 0.0f), std::vector<float>(3, 1.0f));
  EXPECT_THROW(shard.dense("big", int64_t{1} << 40, 0.0f), InvalidArgument);
}

TEST(HardenedUpdates, ConfigSizesThatDoNotFitAnIntAreRefused) {
  Json j = table("t", 8, OptimizerKind::kSGD).to_json();
  j["dim"] = (int64_t{1} << 32) + 8;
  EXPECT_THROW(TableConfig::from_json(j), InvalidArgument);
  j["dim"] = 8;
  j["shard_bits"] = (int64_t{1} << 32) + 2;
  EXPECT_THROW(TableConfig::from_json(j), InvalidArgument);
}
