// The fused backward's CPU inner loops: each unique row's gradient summed over its
// occurrences, then the table's update rule applied once to its weights and state in place,
// with an undo log. Compiled once per ISA (SC_DISPATCH) and picked at load time. Internal to
// the ops layer (the local row store applies them; the remote one sums with them).
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::kernels {

// For unique rows [u_begin, u_end) of `g`: sums the gradient of each row over its occurrences
// (ascending position order), then applies the table's update rule once. Each record is
// copied to `undo` first; a row whose new weights or state are not finite (a finite but huge
// gradient overflowed) is put back at once. Returns false when any row was: the caller then
// puts every row of the call back with undo_rows.
//   grad       host, the group's pooled-output gradient (same shape as the forward output)
//   bag_scale  (batch_size) the factor of a bag's gradient: 1 for sum/none, 1/len or
//              1/sum(weights) for mean (0 for an empty bag)
//   rows       (num_unique) row pointers, all non-null
//   scratch    backward_scratch_floats(dim, table.state_dim()) floats
//   undo       (u_end - u_begin, undo_stride(table.row_bytes())) host bytes, 16-byte aligned
//   stream_undo  write the log with non-temporal stores (for a log larger than the caches)
bool backward_update(const PreparedGroup& g, const EmbeddingTable& table, std::byte* const* rows, const float* grad,
                     const float* bag_scale, int64_t u_begin, int64_t u_end, int64_t step, float* scratch,
                     std::byte* undo, bool stream_undo);
// backward_update's arithmetic in two halves, for rows whose gradients are summed on one
// machine and applied on another (parameter servers):
// sum_unique_gradients writes the summed gradient of each unique row [u_begin, u_end) of `g`
// (out: (num_unique, dim), rows indexed from 0) exactly as backward_update sums it;
// apply_row_gradients applies grads (row u at grads + u * dim) to rows [u_begin, u_end) as
// backward_update does once it has the sums, with the same undo log and return value.
void sum_unique_gradients(const PreparedGroup& g, const float* grad, const float* bag_scale, int64_t u_begin,
                          int64_t u_end, float* out);
bool apply_row_gradients(const EmbeddingTable& table, std::byte* const* rows, const float* grads, int64_t u_begin,
                         int64_t u_end, int64_t step, float* scratch, std::byte* undo, bool stream_undo);
constexpr size_t backward_scratch_floats(int dim, int state_dim) {
  return 3 * static_cast<size_t>(dim) + static_cast<size_t>(state_dim) + 1;
}
// Bytes of one record's slot in the undo log (row_bytes rounded up to 16).
constexpr size_t undo_stride(size_t row_bytes) { return (row_bytes + 15) & ~size_t{15}; }
// Copies rows [b_begin, b_end) of a float matrix with `dim` columns whose row b starts at
// src + b * src_stride (a column block of a wider matrix, src_stride >= dim) into dst, row b
// at dst + b * dim; returns false when any copied value is NaN or Inf. Host memory.
bool gather_rows(const float* src, int64_t src_stride, int dim, int64_t b_begin, int64_t b_end, float* dst);
// Copies the records saved by backward_update back into rows [u_begin, u_end).
void undo_rows(std::byte* const* rows, int64_t u_begin, int64_t u_end, size_t row_bytes, const std::byte* undo);

}  // namespace sparsecore::kernels
