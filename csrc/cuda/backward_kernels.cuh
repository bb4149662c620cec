// The backward of a step, table-batched (batch_kernels.cuh describes the layout): the
// gradient of each unique id summed over its occurrences in chunks of kGradientChunk
// (embedding_collection.h: the CPU engine's order, so the sums are its bits), and the fused
// update, one warp per unique row.
//
// Chunks: a unique id's occurrence list (ascending positions, its run in the sorted
// occurrences) is cut into chunks of kGradientChunk, each summed by its own threads, so an
// id seen 10,000 times in a batch is ~80 parallel sums, not one long serial loop. The first
// chunk's sum goes to the id's gradient row; a further chunk starting at group-local sorted
// position k to chunk row k / kGradientChunk of its group (two such chunks never share that
// row: a chunk that is not an id's first is preceded by a full chunk of the same id). The
// update adds the further chunks in chunk order before it applies the rule.
#pragma once

#include <type_traits>

#include "batch_row_kernels.cuh"
#include "device_float_ops.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

// grad_rows (per-id rows, GroupDesc::row_begin): the first chunk's sum of each unique id;
// chunk_sums (GroupDesc::sum_begin): the further chunks' sums. One thread per kGradWidth
// consecutive elements of each sorted occurrence k that starts a chunk (the others return
// at once). grads (GroupPointers): the output gradients, forward's shapes. num_items:
// BatchView::vec_begin[G].
__global__ void SC_LAUNCH_BOUNDS unique_grad_kernel(BatchView b, const int* __restrict__ occ_offsets,
                                                    const int* __restrict__ occ_positions,
                                                    const int* __restrict__ bag_of, const float* __restrict__ bag_scale,
                                                    GroupPointers<const float*> grads, int64_t num_items,
                                                    float* __restrict__ grad_rows, float* __restrict__ chunk_sums) {
  using Ops = DeviceFloatOps;
  for (int64_t e = global_thread(); e < num_items; e += grid_threads()) {
    const int g = find_group(b.vec_begin, b.num_groups, e);
    const GroupDesc& gd = b.groups[g];
    const int dim = gd.dim;
    const int per_row = (dim + kGradWidth - 1) / kGradWidth;
    const int64_t local = e - b.vec_begin[g];
    const int64_t kl = local / per_row;  // the group-local sorted occurrence
    const int64_t k = b.id_begin[g] + kl;
    const int64_t u = b.inverse[occ_positions[k]];
    const int first = occ_offsets[u], end = occ_offsets[u + 1];
    if ((k - first) % kGradientChunk != 0) continue;
    const int stop = end - k > kGradientChunk ? static_cast<int>(k) + kGradientChunk : end;
    const int d = static_cast<int>(local % per_row) * kGradWidth;
    const int width = dim - d < kGradWidth ? dim - d : kGradWidth;
    const float* grad = grads.get(g, gd.out_begin);
    const bool vector = dim % kGradWidth == 0 && aligned_to(grad, sizeof(float) * kGradWidth);
    const bool sequence = gd.pooling == Pooling::kNone;
    const float* bag_weights = b.weights[g];
    const int64_t lo = b.id_begin[g], first_bag = b.bag_begin[g];
    float acc[kGradWidth];
    SC_UNROLL
    for (int j = 0; j < kGradWidth; ++j) acc[j] = 0.0f;
    for (int i = static_cast<int>(k); i < stop; ++i) {
      const int pos = occ_positions[i];
      const int bag = bag_of[pos];
      float s = bag_scale[bag];
      if (bag_weights) s = Ops::mul(s, bag_weights[pos - lo]);
      const int64_t lb = bag - first_bag;
      const int64_t at = sequence ? (lb * gd.max_len + (pos - b.offsets[bag])) * dim + d : lb * dim + d;
      if (vector) {
        float x[kGradWidth];
        load_vector<kGradWidth>(grad + at, x);
        SC_UNROLL
        for (int j = 0; j < kGradWidth; ++j) acc[j] = Ops::add(acc[j], Ops::mul(s, x[j]));
      } else {
        for (int j = 0; j < width; ++j) acc[j] = Ops::add(acc[j], Ops::mul(s, grad[at + j]));
      }
    }
    float* out = k == first ? grad_rows + gd.row_begin + (u - b.unique_begin[g]) * dim + d
                            : chunk_sums + gd.sum_begin + (kl / kGradientChunk) * dim + d;
    if (vector)
      store_vector<kGradWidth>(out, acc);
    else
      for (int j = 0; j < width; ++j) out[j] = acc[j];
  }
}

// Lanes of the update kernel: a warp per row (its barriers are the whole warp's).
inline constexpr int kUpdateLanes = 32;

// f(weight, state0, state1, gradient) on each element of one row that `lane` owns: W
// consecutive elements per vector (one float4 when W = 4), vectors lane, lane + 32, ...;
// each element's weight, gradient and state in registers only while it is updated. s0, s1:
// the rule's state arrays (nullptr: none).
template <int W, typename F>
__device__ __forceinline__ void for_each_element(float* __restrict__ w, float* __restrict__ s0, float* __restrict__ s1,
                                                 const float* __restrict__ g, int dim, int lane, F f) {
  for (int v = lane; v < dim / W; v += kUpdateLanes) {
    const int at = v * W;
    float x[W], gr[W], a[W] = {}, b[W] = {};
    load_vector<W>(w + at, x);
    load_vector<W>(g + at, gr);
    if (s0) load_vector<W>(s0 + at, a);
    if (s1) load_vector<W>(s1 + at, b);
    SC_UNROLL
    for (int j = 0; j < W; ++j) f(x[j], a[j], b[j], gr[j]);
    store_vector<W>(w + at, x);
    if (s0) store_vector<W>(s0 + at, a);
    if (s1) store_vector<W>(s1 + at, b);
  }
}

// The element-wise rules (and Group Lasso's Adagrad step) on the elements `lane` owns, each
// rule with only its own coefficients live. t: Adam's bias-correction step.
template <int W>
__device__ __forceinline__ void update_elements(const OptimizerConfig& c, float* __restrict__ w,
                                                float* __restrict__ state, const float* __restrict__ g, int dim,
                                                int64_t t, uint32_t count, int lane) {
  switch (c.kind) {
    case OptimizerKind::kSGD: {
      const float lr = c.lr, wd = c.weight_decay;
      for_each_element<W>(w, nullptr, nullptr, g, dim, lane,
                          [&](float& x, float&, float&, float gi) { rules::sgd_element(x, gi, lr, wd); });
      break;
    }
    case OptimizerKind::kMomentum: {
      const float lr = c.lr, mu = c.momentum, wd = c.weight_decay;
      const bool nesterov = c.nesterov;
      for_each_element<W>(w, state, nullptr, g, dim, lane, [&](float& x, float& m, float&, float gi) {
        rules::momentum_element(x, m, gi, lr, mu, nesterov, wd);
      });
      break;
    }
    case OptimizerKind::kAdam: {
      const rules::AdamStep a = rules::adam_step(c.lr, c.beta1, c.beta2, c.weight_decay, c.decoupled_weight_decay, t);
      const float b1 = c.beta1, b2 = c.beta2, eps = c.eps;
      for_each_element<W>(w, state, state + dim, g, dim, lane, [&](float& x, float& m, float& v, float gi) {
        rules::adam_element(x, m, v, gi, b1, b2, eps, a);
      });
      break;
    }
    case OptimizerKind::kFtrl: {
      const float l1 = rules::frequency_scaled_l1(c.l1, c.l1_reference_count, count);
      const float alpha = c.lr, beta = c.ftrl_beta, l2 = c.l2, power = c.lr_power, wd = c.weight_decay;
      for_each_element<W>(w, state, state + dim, g, dim, lane, [&](float& x, float& z, float& n, float gi) {
        rules::ftrl_element(x, z, n, gi, alpha, beta, l1, l2, power, wd);
      });
      break;
    }
    default: {  // Adagrad, and Group Lasso's Adagrad step
      const float lr = c.lr, eps = c.eps, wd = c.weight_decay;
      for_each_element<W>(w, state, nullptr, g, dim, lane,
                          [&](float& x, float& s, float&, float gi) { rules::adagrad_element(x, s, gi, lr, eps, wd); });
      break;
    }
  }
}

// rules::apply on one fp32 row split over the lanes of a warp, the same bits as the
// single-thread loop: element-wise rules per lane; the whole-row sums (rowwise Adagrad's
// mean, Group Lasso's norm) computed by every lane in element order, between warp barriers.
// W: elements per vector (4 when dim % 4 == 0 and the rows are 16-byte aligned).
template <int W>
__device__ __forceinline__ void update_row(const OptimizerConfig& c, float* __restrict__ w, float* __restrict__ state,
                                           const float* __restrict__ g, int dim, int64_t step, uint32_t count,
                                           int lane) {
  const int64_t t = c.use_global_step ? step : static_cast<int64_t>(count);
  if (c.kind == OptimizerKind::kRowwiseAdagrad) {
    const float s = rules::rowwise_state(state[0], rules::rowwise_sum_sq(w, g, dim, c.weight_decay), dim);
    const float row_step = rules::rowwise_step(s, c.lr, c.eps);
    __syncwarp();  // every lane read the row and s before any writes
    if (lane == 0) state[0] = s;
    for (int d = lane; d < dim; d += kUpdateLanes) rules::rowwise_element(w[d], g[d], row_step, c.weight_decay);
    return;
  }
  update_elements<W>(c, w, state, g, dim, t, count, lane);
  if (c.kind != OptimizerKind::kGroupLasso) return;
  const float lambda = rules::frequency_scaled_l1(c.group_lambda, c.l1_reference_count, count);
  if (lambda == 0.0f) return;
  __syncwarp();  // the whole row's Adagrad step is written
  const float scale = rules::group_lasso_scale(w, dim, c.lr, lambda);
  __syncwarp();  // every lane read the row before any scales it
  for (int d = lane; d < dim; d += kUpdateLanes) w[d] *= scale;
}

// The fused update, once per unique row, a warp per row: the further chunk sums of a long
// occurrence list added to the gradient row in chunk order, then the CPU engine's rule
// (update_row) on the row in place (fp32 storage) or on an fp32 copy in scratch (fp16;
// laid out as grad_rows), rounded back once.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS_WIDE update_rows_kernel(const TableDesc<T>* __restrict__ tables, BatchView b,
                                                         const int64_t* __restrict__ slots,
                                                         const int* __restrict__ occ_offsets,
                                                         float* __restrict__ grad_rows,
                                                         const float* __restrict__ chunk_sums, int64_t step,
                                                         float* __restrict__ scratch) {
  const int64_t total = b.unique_begin[b.num_groups];
  const int lane = lane_index();
  for (int64_t u = warp_base() / kUpdateLanes; u < total; u += grid_threads() / kUpdateLanes) {
    const int64_t s = slots[u];
    if (s < 0) continue;  // warp-uniform: every lane has the same u
    const int g = find_group(b.unique_begin, b.num_groups, u);
    const GroupDesc& gd = b.groups[g];
    const TableDesc<T>& t = tables[gd.table];
    const RowsView<T> rows = t.rows;
    const int dim = rows.dim;
    const int64_t row = gd.row_begin + (u - b.unique_begin[g]) * dim;
    float* grad = grad_rows + row;
    const int first = occ_offsets[u], end = occ_offsets[u + 1];
    if (end - first > kGradientChunk) {
      for (int d = lane; d < dim; d += kUpdateLanes) {
        float x = grad[d];
        for (int k = first + kGradientChunk; k < end; k += kGradientChunk)
          x = DeviceFloatOps::add(x, chunk_sums[gd.sum_begin + (k - b.id_begin[g]) / kGradientChunk * dim + d]);
        grad[d] = x;
      }
    }
    uint32_t count = rows.update_count[s];
    if (count != 0xffffffffu) ++count;
    float* w = std::is_same_v<T, float> ? reinterpret_cast<float*>(rows.weights + s * dim) : scratch + row;
    if constexpr (!std::is_same_v<T, float>)
      for (int d = lane; d < dim; d += kUpdateLanes) w[d] = to_float(rows.weights[s * dim + d]);
    __syncwarp();  // the whole gradient (and fp32 copy) is there, and every lane read the count
    if (lane == 0) {
      rows.update_count[s] = count;
      rows.last_step[s] = step;
    }
    float* state = rows.state + s * rows.state_dim;
    if (dim % 4 == 0)  // rows, state, gradient and scratch rows are 16-byte aligned then
      update_row<4>(t.opt, w, state, grad, dim, step, count, lane);
    else
      update_row<1>(t.opt, w, state, grad, dim, step, count, lane);
    if constexpr (!std::is_same_v<T, float>) {
      __syncwarp();
      for (int d = lane; d < dim; d += kUpdateLanes) rows.weights[s * dim + d] = from_float<T>(w[d]);
    }
    __syncwarp();  // the next row's lanes start together
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
