// Pooling and gradient scaling of rows that were gathered elsewhere (one row per id
// position, e.g. pulled from parameter servers), through the same compiled kernels the
// collection's forward and backward use, so a caller that holds rows instead of tables gets
// the collection's results bit for bit.
//
// Thread-safety: pure functions of their arguments. All pointers are host memory.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsecore/table/embedding_table.h"

namespace sparsecore {

// The factor of each bag's gradient in the fused backward: 1 for sum and none pooling; for
// mean, 1 / length (1 / sum of the bag's weights, summed in position order when weighted),
// and 0 for an empty bag or a zero weight sum.
//   offsets  (batch_size + 1), validated CSR offsets
//   weights  (offsets[batch_size]) or nullptr
//   out      (batch_size)
void bag_gradient_scales(Pooling pooling, const int64_t* offsets, int64_t batch_size, const float* weights, float* out);

// The longest bag of CSR `offsets` (the padded length of pooling "none").
int64_t longest_bag(const int64_t* offsets, int64_t batch_size);

// Pools `rows` (one fp32 row of `dim` per id position, in position order) into `out`:
// (batch_size, dim) for sum/mean, (batch_size, longest_bag, dim) zero-padded for none.
// Throws InvalidArgument when offsets are not valid CSR offsets or dim < 1.
//   rows     (offsets[batch_size], dim)
//   offsets  (batch_size + 1)
//   weights  (offsets[batch_size]) or nullptr
void pool_gathered_rows(const float* rows, int dim, const int64_t* offsets, int64_t batch_size, const float* weights,
                        Pooling pooling, float* out);

// The gradient a worker pushes for a group: its distinct ids (in order of first occurrence)
// and, for each, the pooled-output gradients of its positions times the bag's scale
// (bag_gradient_scales) and the id's weight, summed from zero in ascending position order:
// the sums the collection's fused backward forms before its update, bit for bit (one kernel
// computes both). Throws InvalidArgument when offsets are not valid CSR offsets of n ids or
// dim < 1.
//   ids      (offsets[batch_size])
//   weights  (offsets[batch_size]) or nullptr
//   grad     (batch_size, dim), or (batch_size, longest_bag, dim) for pooling none
//   unique_ids (num_unique), unique_grads (num_unique, dim): replaced
void sum_gradients_by_id(const int64_t* ids, int dim, const int64_t* offsets, int64_t batch_size, const float* weights,
                         Pooling pooling, const float* grad, std::vector<int64_t>& unique_ids,
                         std::vector<float>& unique_grads);

}  // namespace sparsecore
