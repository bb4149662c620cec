#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/ops/compressed_batch.h"

namespace sparsecore {
namespace {

// A layout over fake core tables (components 0.., exact after them when `exact`).
CompressedLayout layout_of(const std::string& json, int dim, Pooling pooling, bool exact = false) {
  CompressedLayout l;
  l.name = "t";
  l.spec = CompressionSpec::from_json(Json::parse(json));
  l.base_seed = 11;
  const int count = l.spec.num_components();
  for (int c = 0; c < count; ++c) {
    l.components.push_back(c);
    l.component_pooling.push_back(Pooling::kSum);
  }
  l.exact = exact ? count : -1;
  l.dim = dim;
  l.component_dim = l.spec.combine == CompressionCombine::kConcat ? dim / count : dim;
  l.pooling = pooling;
  return l;
}

// The row of component key k (a fixed function of the component, key and element).
float row_value(int c, int64_t key, int d) { return 0.25f * static_cast<float>(c + 1) + 0.01f * key - 0.1f * d; }

// What the collection's forward gives for each core group: per bag (one per distinct id) the
// signed sum of its keys' rows.
std::vector<std::vector<float>> core_outputs(const CompressedGroupPlan& p, const std::vector<GroupInput>& core) {
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < core.size(); ++i) {
    const int dim = static_cast<int>(p.core_output_shape(static_cast<int>(i)).back());
    std::vector<float> o(core[i].batch_size * dim, 0.0f);
    for (int64_t b = 0; b < core[i].batch_size; ++b)
      for (int64_t j = core[i].offsets[b]; j < core[i].offsets[b + 1]; ++j)
        for (int d = 0; d < dim; ++d)
          o[b * dim + d] +=
              (core[i].weights ? core[i].weights[j] : 1.0f) * row_value(static_cast<int>(i), core[i].ids[j], d);
    out.push_back(o);
  }
  return out;
}

TEST(CompressedBatch, MulComposesPerIdThenPoolsAndSplitsByTheOtherRows) {
  const CompressedLayout l =
      layout_of(R"({"kind": "qr", "rows": 4, "quotient_rows": 4, "combine": "mul"})", 2, Pooling::kSum);
  const std::vector<int64_t> ids = {5, 9, 5, 2}, offsets = {0, 3, 3, 4};
  GroupInput in{0, ids.data(), 4, offsets.data(), 3, nullptr};
  CompressedGroupPlan p = plan_compressed_group(l, in);
  ASSERT_EQ(p.bags.num_unique(), 3);
  std::vector<GroupInput> core;
  append_core_inputs(p, core);
  ASSERT_EQ(core.size(), 2u);
  const auto outs = core_outputs(p, core);
  std::vector<float> out(3 * 2);
  compose_compressed_group(p, {outs[0].data(), outs[1].data()}, out.data());
  auto row = [&](int64_t id, int d) { return row_value(0, id % 4, d) * row_value(1, id / 4, d); };
  for (int d = 0; d < 2; ++d) {
    EXPECT_FLOAT_EQ(out[0 * 2 + d], row(5, d) + row(9, d) + row(5, d));
    EXPECT_FLOAT_EQ(out[1 * 2 + d], 0.0f);  // an empty bag
    EXPECT_FLOAT_EQ(out[2 * 2 + d], row(2, d));
  }
  const std::vector<float> grad = {1, 2, 3, 4, 5, 6};
  std::vector<float> g0(3 * 2), g1(3 * 2);
  split_compressed_gradient(p, grad.data(), {g0.data(), g1.data()});
  // Distinct ids in order of first position: 5, 9, 2; id 5 sits twice in bag 0.
  const int64_t distinct[] = {5, 9, 2};
  const float times[] = {2, 1, 1};
  const int bag[] = {0, 0, 2};
  for (int u = 0; u < 3; ++u)
    for (int d = 0; d < 2; ++d) {
      const float g = times[u] * grad[bag[u] * 2 + d];
      EXPECT_FLOAT_EQ(g0[u * 2 + d], g * row_value(1, distinct[u] / 4, d));
      EXPECT_FLOAT_EQ(g1[u * 2 + d], g * row_value(0, distinct[u] % 4, d));
    }
}

TEST(CompressedBatch, ConcatMapsEveryPositionWithTheMeanWeights) {
  // A linear combine pools each component over the table's bags: no per-id pass.
  CompressedLayout l =
      layout_of(R"({"kind": "multihash", "k": 2, "rows": 8, "combine": "concat"})", 4, Pooling::kMean, /*exact=*/true);
  const std::vector<int64_t> ids = {3, -7, 3}, offsets = {0, 3};
  const std::vector<float> weights = {1.0f, 2.0f, 1.0f};
  GroupInput in{0, ids.data(), 3, offsets.data(), 1, weights.data()};
  CompressedGroupPlan p = plan_compressed_group(l, in);
  std::vector<GroupInput> core;
  append_core_inputs(p, core);
  ASSERT_EQ(core.size(), 3u);
  for (int c = 0; c < 2; ++c) {
    EXPECT_EQ(core[c].num_ids, 3);
    EXPECT_EQ(core[c].batch_size, 1);
    ASSERT_NE(core[c].weights, nullptr);
    for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(core[c].weights[i], weights[i] / 4.0f);  // mean: over the weight sum
  }
  EXPECT_EQ(core[2].table, 2);  // the exact rows pool the table's own bags (mean, raw weights)
  EXPECT_EQ(core[2].ids, p.ids.data());
  EXPECT_EQ(core[2].weights[1], 2.0f);
  const std::vector<float> o0 = {1, 2}, o1 = {3, 4}, exact = {10, 20, 30, 40};
  std::vector<float> out(4);
  compose_compressed_group(p, {o0.data(), o1.data(), exact.data()}, out.data());
  EXPECT_EQ(out, (std::vector<float>{11, 22, 33, 44}));
  const std::vector<float> grad = {1, -1, 0.5f, 2};
  std::vector<float> g0(2), g1(2), ge(4);
  split_compressed_gradient(p, grad.data(), {g0.data(), g1.data(), ge.data()});
  EXPECT_EQ(g0, (std::vector<float>{1, -1}));
  EXPECT_EQ(g1, (std::vector<float>{0.5f, 2}));
  EXPECT_EQ(ge, grad);
}

TEST(CompressedBatch, NonFiniteGradientAndBadOffsetsAreRefused) {
  const CompressedLayout l = layout_of(R"({"kind": "random", "buckets": 16, "k": 2})", 3, Pooling::kSum);
  const std::vector<int64_t> ids = {1, 2}, bad = {0, 3};
  GroupInput wrong{0, ids.data(), 2, bad.data(), 1, nullptr};
  EXPECT_THROW(plan_compressed_group(l, wrong), InvalidArgument);
  const std::vector<int64_t> offsets = {0, 2};
  GroupInput in{0, ids.data(), 2, offsets.data(), 1, nullptr};
  CompressedGroupPlan p = plan_compressed_group(l, in);
  std::vector<GroupInput> core;
  append_core_inputs(p, core);
  ASSERT_EQ(core.size(), 1u);
  EXPECT_EQ(core[0].num_ids, 4);  // k keys per position, signed
  ASSERT_NE(core[0].weights, nullptr);
  const std::vector<float> grad = {1.0f, NAN, 0.0f};
  std::vector<float> g0(2 * 3);
  EXPECT_THROW(split_compressed_gradient(p, grad.data(), {g0.data()}), InvalidArgument);
}

TEST(CompressedBatch, LayoutsThatDisagreeAreRefused) {
  CompressedLayout l = layout_of(R"({"kind": "multihash", "k": 2, "rows": 8, "combine": "concat"})", 4, Pooling::kSum);
  l.component_dim = 4;
  EXPECT_THROW(l.validate(), InvalidArgument);
  l.component_dim = 2;
  l.components.pop_back();
  EXPECT_THROW(l.validate(), InvalidArgument);
}

}  // namespace
}  // namespace sparsecore
