#include "sparsecore/ops/gathered_pooling.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/dedup_set.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore {

namespace {

void check_offsets(const int64_t* offsets, int64_t batch_size) {
  SC_CHECK_ARG(batch_size >= 0 && offsets[0] == 0, "offsets[0] must be 0");
  for (int64_t b = 0; b < batch_size; ++b)
    SC_CHECK_ARG(offsets[b + 1] >= offsets[b], "offsets must be non-decreasing (offsets[", b + 1, "] < offsets[", b,
                 "])");
  SC_CHECK_ARG(offsets[batch_size] <= INT32_MAX, "at most 2^31 - 1 ids per group, got ", offsets[batch_size]);
}

}  // namespace

void bag_gradient_scales(Pooling pooling, const int64_t* offsets, int64_t batch_size, const float* weights,
                         float* out) {
  check_offsets(offsets, batch_size);
  for (int64_t b = 0; b < batch_size; ++b) {
    if (pooling != Pooling::kMean) {
      out[b] = 1.0f;
      continue;
    }
    float denom = 0.0f;
    if (!weights) {
      denom = static_cast<float>(offsets[b + 1] - offsets[b]);
    } else {
      for (int64_t p = offsets[b]; p < offsets[b + 1]; ++p) denom += weights[p];
    }
    out[b] = denom != 0.0f ? 1.0f / denom : 0.0f;
  }
}

int64_t longest_bag(const int64_t* offsets, int64_t batch_size) {
  int64_t longest = 0;
  for (int64_t b = 0; b < batch_size; ++b) longest = std::max(longest, offsets[b + 1] - offsets[b]);
  return longest;
}

namespace {

// A prepared group over validated CSR bags, as the collection's prepare builds one, with the
// inverse sized (one entry per position) and left for the caller to fill.
PreparedGroup group_of_bags(int dim, const int64_t* offsets, int64_t batch_size, const float* weights,
                            Pooling pooling) {
  const int64_t n = offsets[batch_size];
  PreparedGroup g;
  g.dim = dim;
  g.pooling = pooling;
  g.num_ids = n;
  g.batch_size = batch_size;
  g.max_len = longest_bag(offsets, batch_size);
  g.offsets.assign(offsets, offsets + batch_size + 1);
  if (weights) g.weights.assign(weights, weights + n);
  g.inverse.resize(n);
  return g;
}

}  // namespace

void pool_gathered_rows(const float* rows, int dim, const int64_t* offsets, int64_t batch_size, const float* weights,
                        Pooling pooling, float* out) {
  SC_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  check_offsets(offsets, batch_size);
  const int64_t n = offsets[batch_size];
  // The collection's prepared group, with every position its own "unique" row.
  PreparedGroup g = group_of_bags(dim, offsets, batch_size, weights, pooling);
  std::iota(g.inverse.begin(), g.inverse.end(), 0);
  PodVector<const std::byte*> row_of(n);
  for (int64_t p = 0; p < n; ++p) row_of[p] = reinterpret_cast<const std::byte*>(rows + p * dim);
  std::vector<float> tmp(dim);
  kernels::pool_bags(g, RowStorage::kFloat32, row_of.data(), 0, batch_size, out, tmp.data());
}

void sum_gradients_by_id(const int64_t* ids, int dim, const int64_t* offsets, int64_t batch_size, const float* weights,
                         Pooling pooling, const float* grad, std::vector<int64_t>& unique_ids,
                         std::vector<float>& unique_grads) {
  SC_CHECK_ARG(dim >= 1, "dim must be >= 1, got ", dim);
  check_offsets(offsets, batch_size);
  const int64_t n = offsets[batch_size];
  // The collection's prepared group of these ids, as its prepare and backward build it.
  PreparedGroup g = group_of_bags(dim, offsets, batch_size, weights, pooling);
  unique_ids.clear();
  thread_local DedupSet tls_set;
  DedupSet& set = tls_set;
  set.reset(n);
  for (int64_t p = 0; p < n; ++p) {
    bool added = false;
    const int32_t u = set.find_or_add(ids[p], key_hash(ids[p]), static_cast<int32_t>(unique_ids.size()), &added);
    if (added) unique_ids.push_back(ids[p]);
    g.inverse[p] = u;
  }
  g.unique_keys.assign(unique_ids.begin(), unique_ids.end());
  build_occurrences(g);
  std::vector<float> scale(static_cast<size_t>(batch_size));
  bag_gradient_scales(pooling, offsets, batch_size, weights, scale.data());
  unique_grads.resize(unique_ids.size() * static_cast<size_t>(dim));
  kernels::sum_unique_gradients(g, grad, scale.data(), 0, g.num_unique(), unique_grads.data());
}

}  // namespace sparsecore
