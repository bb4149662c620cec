#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"

using namespace sparsecore;

namespace {
TableConfig sgd_table(const std::string& name, int dim, Pooling pooling) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.optimizer.kind = OptimizerKind::kSGD;
  c.optimizer.lr = 1.0f;
  c.init.kind = InitKind::kConstant;
  c.init.a = 0.5f;
  c.pooling = pooling;
  return c;
}
}  // namespace

TEST(EmbeddingCollection, SumAndMeanPoolingThenFusedSgd) {
  EmbeddingCollection emb({sgd_table("sum", 3, Pooling::kSum), sgd_table("mean", 2, Pooling::kMean)}, 7);
  std::vector<int64_t> ids = {1, 2, 2, std::numeric_limits<int64_t>::min()};
  std::vector<int64_t> offsets = {0, 3, 3, 4};
  auto batch = emb.prepare(
      {{0, ids.data(), 4, offsets.data(), 3, nullptr}, {1, ids.data(), 4, offsets.data(), 3, nullptr}}, true);
  std::vector<float> sum(9), mean(6);
  emb.forward(*batch, {sum.data(), mean.data()});
  EXPECT_FLOAT_EQ(sum[0], 1.5f);  // three rows of 0.5
  EXPECT_FLOAT_EQ(sum[3], 0.0f);  // empty bag
  EXPECT_FLOAT_EQ(sum[6], 0.5f);
  EXPECT_FLOAT_EQ(mean[0], 0.5f);
  EXPECT_EQ(emb.table(0).size(), 3u);

  std::vector<float> gsum(9, 1.0f), gmean(6, 3.0f);
  EXPECT_EQ(emb.backward(*batch, {gsum.data(), gmean.data()}), 1);
  std::vector<float> row(3);
  int64_t two = 2;
  emb.table(0).find_weights(&two, 1, row.data());
  EXPECT_FLOAT_EQ(row[0], 0.5f - 2.0f);  // id 2 appears twice in bag 0
  emb.table(1).find_weights(&two, 1, row.data());
  EXPECT_FLOAT_EQ(row[0], 0.5f - 2.0f);  // mean over 3: 2 * 3.0 / 3
}

TEST(EmbeddingCollection, RejectsBadOffsetsWithoutInserting) {
  EmbeddingCollection emb({sgd_table("t", 2, Pooling::kSum)}, 1);
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<int64_t> offsets = {0, 2, 1, 3};
  EXPECT_THROW(emb.prepare({{0, ids.data(), 3, offsets.data(), 3, nullptr}}, true), InvalidArgument);
  EXPECT_EQ(emb.table(0).size(), 0u);
}

TEST(EmbeddingCollection, NanGradientUpdatesNothing) {
  EmbeddingCollection emb({sgd_table("t", 2, Pooling::kSum)}, 1);
  std::vector<int64_t> ids = {1};
  std::vector<int64_t> offsets = {0, 1};
  auto batch = emb.prepare({{0, ids.data(), 1, offsets.data(), 1, nullptr}}, true);
  std::vector<float> g = {1.0f, std::nanf("")};
  EXPECT_THROW(emb.backward(*batch, {g.data()}), InvalidArgument);
  EXPECT_EQ(emb.step(), 0);
  std::vector<float> row(2);
  emb.table(0).find_weights(ids.data(), 1, row.data());
  EXPECT_FLOAT_EQ(row[0], 0.5f);
}

TEST(EmbeddingCollection, CheckpointRoundTrip) {
  auto dir = std::filesystem::temp_directory_path() / "sparsecore_cpp_ckpt";
  std::filesystem::remove_all(dir);
  EmbeddingCollection emb({sgd_table("t", 3, Pooling::kSum)}, 1);
  std::vector<int64_t> ids = {4, -4, std::numeric_limits<int64_t>::max()};
  std::vector<int64_t> offsets = {0, 3};
  auto batch = emb.prepare({{0, ids.data(), 3, offsets.data(), 1, nullptr}}, true);
  std::vector<float> g = {1, 2, 3};
  emb.backward(*batch, {g.data()});
  emb.save(dir.string());
  EXPECT_THROW(emb.save(dir.string()), InvalidArgument);
  auto back = EmbeddingCollection::load(dir.string());
  EXPECT_EQ(back->step(), 1);
  std::vector<float> a(9), b(9);
  emb.table(0).find_weights(ids.data(), 3, a.data());
  back->table(0).find_weights(ids.data(), 3, b.data());
  EXPECT_EQ(a, b);
  std::filesystem::remove_all(dir);
}
