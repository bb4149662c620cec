// Forward and backward through row-strided buffers: every group of a batch pooled straight
// into its column block of one (batch, sum of dims) matrix, and its gradient read from the
// column block of one gradient matrix, giving the same bits as a buffer per group.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"

using namespace sparsecore;

namespace {

TableConfig table(const std::string& name, int dim, Pooling pooling, OptimizerKind kind) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.optimizer.kind = kind;
  c.optimizer.lr = 0.05f;
  c.init.kind = InitKind::kNormal;
  c.init.b = 0.1f;
  c.pooling = pooling;
  return c;
}

std::vector<TableConfig> configs() {
  return {table("a", 3, Pooling::kSum, OptimizerKind::kAdam), table("b", 18, Pooling::kMean, OptimizerKind::kAdagrad),
          table("c", 1, Pooling::kSum, OptimizerKind::kSGD)};
}

struct Batch {
  std::vector<std::vector<int64_t>> ids, offsets;
  std::vector<GroupInput> inputs() const {
    std::vector<GroupInput> out;
    for (size_t g = 0; g < ids.size(); ++g)
      out.push_back({static_cast<int>(g), ids[g].data(), static_cast<int64_t>(ids[g].size()), offsets[g].data(),
                     static_cast<int64_t>(offsets[g].size()) - 1, nullptr});
    return out;
  }
};

Batch random_batch(std::mt19937_64& rng, int groups, int64_t bags) {
  Batch b;
  for (int g = 0; g < groups; ++g) {
    std::vector<int64_t> ids, offsets = {0};
    for (int64_t i = 0; i < bags; ++i) {
      const int len = static_cast<int>(rng() % 5);                                         // empty bags included
      for (int k = 0; k < len; ++k) ids.push_back(static_cast<int64_t>(rng() % 40) - 20);  // repeats, negatives
      offsets.push_back(static_cast<int64_t>(ids.size()));
    }
    b.ids.push_back(ids);
    b.offsets.push_back(offsets);
  }
  return b;
}

std::vector<float> weights(const EmbeddingCollection& c, int t, const std::vector<int64_t>& keys) {
  std::vector<float> out(keys.size() * c.config(t).dim);
  c.table(t).find_weights(keys.data(), static_cast<int64_t>(keys.size()), out.data());
  return out;
}

}  // namespace

TEST(StridedRows, ForwardAndBackwardThroughOneMatrixMatchBuffersPerGroup) {
  EmbeddingCollection per_group(configs(), 11), one_matrix(configs(), 11);
  const std::vector<int> dims = {3, 18, 1};
  const int64_t width = 3 + 18 + 1 + 2;  // two more columns, as dense features would take
  const std::vector<int64_t> starts = {0, 3, 21};
  std::mt19937_64 rng(5);
  for (int step = 0; step < 4; ++step) {
    const int64_t bags = 37;
    Batch b = random_batch(rng, 3, bags);
    auto p1 = per_group.prepare(b.inputs(), true);
    auto p2 = one_matrix.prepare(b.inputs(), true);
    std::vector<std::vector<float>> outs(3);
    std::vector<float*> ptrs;
    for (int g = 0; g < 3; ++g) {
      outs[g].assign(bags * dims[g], -1.0f);
      ptrs.push_back(outs[g].data());
    }
    per_group.forward(*p1, ptrs);
    std::vector<float> matrix(bags * width, 7.0f);
    one_matrix.forward(*p2, {matrix.data() + starts[0], matrix.data() + starts[1], matrix.data() + starts[2]},
                       {width, width, width});
    for (int g = 0; g < 3; ++g)
      for (int64_t r = 0; r < bags; ++r)
        for (int d = 0; d < dims[g]; ++d) ASSERT_EQ(matrix[r * width + starts[g] + d], outs[g][r * dims[g] + d]);
    for (int64_t r = 0; r < bags; ++r) {  // the columns of no group are left alone
      EXPECT_EQ(matrix[r * width + 22], 7.0f);
      EXPECT_EQ(matrix[r * width + 23], 7.0f);
    }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> grad(bags * width);
    for (float& x : grad) x = normal(rng);
    std::vector<std::vector<float>> grads(3);
    std::vector<const float*> gptrs;
    for (int g = 0; g < 3; ++g) {
      for (int64_t r = 0; r < bags; ++r)
        for (int d = 0; d < dims[g]; ++d) grads[g].push_back(grad[r * width + starts[g] + d]);
      gptrs.push_back(grads[g].data());
    }
    EXPECT_EQ(per_group.backward(*p1, gptrs), step + 1);
    EXPECT_EQ(one_matrix.backward(*p2, {grad.data() + starts[0], grad.data() + starts[1], grad.data() + starts[2]},
                                  {width, width, width}),
              step + 1);
  }
  for (int t = 0; t < 3; ++t) {
    std::vector<int64_t> keys;
    for (int64_t k = -20; k < 20; ++k) keys.push_back(k);
    EXPECT_EQ(weights(per_group, t, keys), weights(one_matrix, t, keys)) << "table " << t;
  }
}

TEST(StridedRows, ZeroStrideIsTheGroupsOwnWidth) {
  EmbeddingCollection a(configs(), 3), b(configs(), 3);
  std::mt19937_64 rng(9);
  Batch batch = random_batch(rng, 3, 10);
  auto pa = a.prepare(batch.inputs(), true), pb = b.prepare(batch.inputs(), true);
  std::vector<float> x1(30), y1(180), z1(10), x2(30), y2(180), z2(10);
  a.forward(*pa, {x1.data(), y1.data(), z1.data()});
  b.forward(*pb, {x2.data(), y2.data(), z2.data()}, {0, 18, 0});
  EXPECT_EQ(x1, x2);
  EXPECT_EQ(y1, y2);
  EXPECT_EQ(z1, z2);
}

TEST(StridedRows, RefusesStridesNarrowerThanTheGroupAndStridedSequences) {
  std::vector<TableConfig> c = configs();
  c.push_back(table("seq", 2, Pooling::kNone, OptimizerKind::kSGD));
  EmbeddingCollection emb(c, 1);
  std::mt19937_64 rng(1);
  Batch batch = random_batch(rng, 4, 6);
  auto p = emb.prepare(batch.inputs(), true);
  std::vector<float> big(6 * 64 * 8, 0.0f);
  std::vector<float*> outs(4, big.data());
  EXPECT_THROW(emb.forward(*p, outs, {3, 17, 1, 0}), InvalidArgument);  // 17 < dim 18
  EXPECT_THROW(emb.forward(*p, outs, {3, 18, 1, 4}), InvalidArgument);  // a strided sequence group
  EXPECT_THROW(emb.forward(*p, outs, {3, 18}), InvalidArgument);        // one stride per group
  std::vector<const float*> grads(4, big.data());
  EXPECT_THROW(emb.backward(*p, grads, {2, 18, 1, 0}), InvalidArgument);
  EXPECT_EQ(emb.step(), 0);
}

TEST(StridedRows, NonFiniteValueInAStridedGradientChangesNothing) {
  EmbeddingCollection emb(configs(), 2);
  std::mt19937_64 rng(4);
  Batch batch = random_batch(rng, 3, 8);
  auto p = emb.prepare(batch.inputs(), true);
  const int64_t width = 30;
  std::vector<float> grad(8 * width, 0.25f);
  grad[5 * width + 3 + 17] = std::nanf("");  // last column of group b, row 5
  grad[5 * width + 29] = std::nanf("");      // a column of no group: never read
  std::vector<int64_t> keys;
  for (int64_t k = -20; k < 20; ++k) keys.push_back(k);
  const std::vector<float> before = weights(emb, 1, keys);
  EXPECT_THROW(emb.backward(*p, {grad.data(), grad.data() + 3, grad.data() + 21}, {width, width, width}),
               InvalidArgument);
  EXPECT_EQ(emb.step(), 0);
  EXPECT_EQ(weights(emb, 1, keys), before);
  grad[5 * width + 3 + 17] = 0.5f;
  EXPECT_EQ(emb.backward(*p, {grad.data(), grad.data() + 3, grad.data() + 21}, {width, width, width}), 1);
}

TEST(StridedRows, PlanBackwardBuildsTheOccurrencesOnce) {
  EmbeddingCollection emb(configs(), 2);
  std::mt19937_64 rng(8);
  Batch batch = random_batch(rng, 3, 8);
  auto p = emb.prepare(batch.inputs(), true);
  EXPECT_FALSE(p->occurrences_built);
  emb.plan_backward(*p);
  EXPECT_TRUE(p->occurrences_built);
  EXPECT_EQ(p->groups[0].occurrence_offsets.size(), static_cast<size_t>(p->groups[0].num_unique() + 1));
  auto eval = emb.prepare(batch.inputs(), false);
  emb.plan_backward(*eval);  // nothing to build for evaluation
  EXPECT_FALSE(eval->occurrences_built);
}
