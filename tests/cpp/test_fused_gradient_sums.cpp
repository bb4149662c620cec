// The fused backward's per-row gradient sums (kernels::sum_unique_gradients, the sums the
// fused update applies) against a plain scalar reference of the documented order: each
// chunk of kGradientChunk occurrences summed from zero in ascending position order, the chunk
// sums added in chunk order. Bit for bit, for the widths with a register kernel and others,
// sum and mean pooling, with and without per-id weights, lists shorter and longer than a chunk.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ops/fused_update.h"
#include "sparsecore/table/sharded_dedup.h"

using namespace sparsecore;

namespace {

std::vector<float> reference_sums(const PreparedGroup& g, const std::vector<float>& grad,
                                  const std::vector<float>& scale) {
  const int dim = g.dim;
  std::vector<float> out(static_cast<size_t>(g.num_unique()) * dim, 0.0f);
  std::vector<float> chunk(static_cast<size_t>(dim));
  for (int64_t u = 0; u < g.num_unique(); ++u) {
    std::vector<int32_t> positions;
    for (int64_t p = 0; p < g.num_ids; ++p)
      if (g.inverse[p] == u) positions.push_back(static_cast<int32_t>(p));
    float* row = out.data() + u * dim;
    for (size_t c = 0; c < positions.size(); c += kGradientChunk) {
      std::fill(chunk.begin(), chunk.end(), 0.0f);
      for (size_t k = c; k < positions.size() && k < c + kGradientChunk; ++k) {
        const int32_t pos = positions[k];
        int64_t b = 0;
        while (g.offsets[b + 1] <= pos) ++b;
        float s = scale[static_cast<size_t>(b)];
        if (!g.weights.empty()) s *= g.weights[pos];
        for (int d = 0; d < dim; ++d) chunk[static_cast<size_t>(d)] += s * grad[static_cast<size_t>(b * dim + d)];
      }
      if (c == 0)
        std::copy(chunk.begin(), chunk.end(), row);
      else
        for (int d = 0; d < dim; ++d) row[d] += chunk[static_cast<size_t>(d)];
    }
  }
  return out;
}

}  // namespace

TEST(FusedGradientSums, EqualTheScalarReferenceBitForBit) {
  std::mt19937_64 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int dim : {1, 4, 5, 8, 16, 18, 20, 32, 64})
    for (Pooling pooling : {Pooling::kSum, Pooling::kMean})
      for (bool weighted : {false, true}) {
        PreparedGroup g;
        g.dim = dim;
        g.pooling = pooling;
        g.batch_size = 300;
        std::vector<int64_t> offsets{0};
        for (int64_t b = 0; b < g.batch_size; ++b) offsets.push_back(offsets.back() + static_cast<int64_t>(rng() % 4));
        g.num_ids = offsets.back();
        g.offsets.assign(offsets.data(), offsets.data() + offsets.size());
        // A few hot ids (lists longer than a chunk) and a tail.
        std::vector<int64_t> ids(static_cast<size_t>(g.num_ids));
        for (auto& x : ids) x = rng() % 2 ? static_cast<int64_t>(rng() % 3) : static_cast<int64_t>(rng() % 200);
        std::vector<int64_t> unique, inverse;
        dedup_ids(ids.data(), g.num_ids, unique, inverse);
        g.unique_keys.assign(unique.data(), unique.data() + unique.size());
        g.inverse.resize(g.num_ids);
        for (int64_t i = 0; i < g.num_ids; ++i) g.inverse[i] = static_cast<int32_t>(inverse[static_cast<size_t>(i)]);
        if (weighted) {
          g.weights.resize(g.num_ids);
          for (int64_t i = 0; i < g.num_ids; ++i) g.weights[i] = 0.5f + static_cast<float>(rng() % 4);
        }
        build_occurrences(g);
        std::vector<float> grad(static_cast<size_t>(g.batch_size * dim));
        for (auto& x : grad) x = normal(rng);
        std::vector<float> scale(static_cast<size_t>(g.batch_size));
        bag_gradient_scales(pooling, g.offsets.data(), g.batch_size, weighted ? g.weights.data() : nullptr,
                            scale.data());
        std::vector<float> sums(static_cast<size_t>(g.num_unique()) * dim, -1.0f);
        kernels::sum_unique_gradients(g, grad.data(), scale.data(), 0, g.num_unique(), sums.data());
        const std::vector<float> want = reference_sums(g, grad, scale);
        ASSERT_EQ(std::memcmp(sums.data(), want.data(), want.size() * sizeof(float)), 0)
            << "dim " << dim << " pooling " << static_cast<int>(pooling) << " weighted " << weighted;
      }
}
