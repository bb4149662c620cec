// Row kernels of the device collection: initialisation, gather, pooling (forward), the
// per-unique gradient sum and the fused update (backward). The initial values and the update
// rules are the CPU engine's own SC_HOST_DEVICE functions, so both backends compute the same
// thing; float sums run in the CPU engine's order (positions ascending within a bag or a
// unique id's occurrence list).
#pragma once

#include <type_traits>

#include "device_float_ops.cuh"
#include "device_runtime.cuh"
#include "sparsecore/optim/update_rules.h"
#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/initializer.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// A table's rows on the device, one entry per slot (capacity + 2 slots), structure of arrays.
template <typename T>
struct RowsView {
  T* weights = nullptr;              // (slots, dim); T = float or __half
  float* state = nullptr;            // (slots, state_dim)
  uint32_t* update_count = nullptr;  // (slots)
  int64_t* last_step = nullptr;      // (slots)
  int dim = 0;
  int state_dim = 0;
};

// Fills the rows of newly inserted keys. keys, slots, inserted (n): device. scratch
// (n, dim) fp32 device: used only with fp16 storage (the row is built in fp32, rounded once).
template <typename T>
__global__ void SC_LAUNCH_BOUNDS init_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ keys,
                                                  const int64_t* __restrict__ slots, const int* __restrict__ inserted,
                                                  int64_t n, InitializerConfig init, OptimizerConfig opt,
                                                  uint64_t table_seed, float* __restrict__ scratch) {
  const int dim = rows.dim;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    if (!inserted[i] || slots[i] < 0) continue;
    const int64_t s = slots[i];
    if constexpr (std::is_same_v<T, float>) {
      initialize_row<DeviceFloatOps>(init, table_seed, keys[i], rows.weights + s * dim, dim);
    } else {
      float* w = scratch + i * dim;
      initialize_row<DeviceFloatOps>(init, table_seed, keys[i], w, dim);
      for (int d = 0; d < dim; ++d) rows.weights[s * dim + d] = from_float<T>(w[d]);
    }
    if (rows.state_dim) rules::init_state(opt, rows.state + s * rows.state_dim, dim);
    rows.update_count[s] = 0;
    rows.last_step[s] = 0;
  }
}

// out (n, dim) fp32: the row of slots[i], zeros where slots[i] < 0.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS gather_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ slots, int64_t n,
                                                    float* __restrict__ out) {
  const int dim = rows.dim;
  const int64_t total = n * dim;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t i = e / dim, d = e % dim;
    const int64_t s = slots[i];
    out[e] = s >= 0 ? to_float(rows.weights[s * dim + d]) : 0.0f;
  }
}

// Copies rows of old slots to their new slots (after rehash_kernel). old_slots = capacity + 2.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS move_rows_kernel(RowsView<T> from, RowsView<T> to,
                                                  const int64_t* __restrict__ new_slot_of, int64_t old_slots) {
  const int dim = from.dim, sd = from.state_dim;
  for (int64_t s = global_thread(); s < old_slots; s += grid_threads()) {
    const int64_t t = new_slot_of[s];
    if (t < 0) continue;
    for (int d = 0; d < dim; ++d) to.weights[t * dim + d] = from.weights[s * dim + d];
    for (int d = 0; d < sd; ++d) to.state[t * sd + d] = from.state[s * sd + d];
    to.update_count[t] = from.update_count[s];
    to.last_step[t] = from.last_step[s];
  }
}

// Writes whole rows (checkpoint import): weights (n, dim) fp32, rounded once to T; state
// (n, state_dim); update_count, last_step (n). slots (n): the rows' slots. All device.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS store_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ slots, int64_t n,
                                                   const float* __restrict__ weights, const float* __restrict__ state,
                                                   const uint32_t* __restrict__ update_count,
                                                   const int64_t* __restrict__ last_step) {
  const int dim = rows.dim, sd = rows.state_dim;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t s = slots[i];
    for (int d = 0; d < dim; ++d) rows.weights[s * dim + d] = from_float<T>(weights[i * dim + d]);
    for (int d = 0; d < sd; ++d) rows.state[s * sd + d] = state[i * sd + d];
    rows.update_count[s] = update_count[i];
    rows.last_step[s] = last_step[i];
  }
}

// One group of a batch as the row kernels see it (all pointers device memory).
struct BagsView {
  const int64_t* offsets = nullptr;       // (batch_size + 1)
  const float* weights = nullptr;         // (num_ids) or nullptr
  const int* inverse = nullptr;           // (num_ids) index into the unique ids
  const int64_t* unique_slots = nullptr;  // (num_unique) table slot, -1: absent
  int64_t batch_size = 0;
  int64_t max_len = 0;
  int dim = 0;
  Pooling pooling = Pooling::kSum;
};

// Vector access of W consecutive row elements as fp32: W = 4 (one float4) for fp32 rows,
// W = 2 (one __half2) for fp16 rows, W = 1 scalar. The caller guarantees the alignment
// (dim % W == 0 on rows whose base is 256-byte aligned).
template <int W>
__device__ __forceinline__ void load_vector(const float* p, float (&x)[W]) {
  if constexpr (W == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
  } else {
    SC_UNROLL
    for (int k = 0; k < W; ++k) x[k] = p[k];
  }
}
template <int W>
__device__ __forceinline__ void load_vector(const __half* p, float (&x)[W]) {
  if constexpr (W == 2) {
    const __half2 v = *reinterpret_cast<const __half2*>(p);
    x[0] = __low2float(v), x[1] = __high2float(v);
  } else {
    SC_UNROLL
    for (int k = 0; k < W; ++k) x[k] = to_float(p[k]);
  }
}
// Stores W fp32 values; a float4 store when W == 4 (16-byte aligned destination).
template <int W>
__device__ __forceinline__ void store_vector(float* p, const float (&x)[W]) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p) = float4{x[0], x[1], x[2], x[3]};
  } else {
    SC_UNROLL
    for (int k = 0; k < W; ++k) p[k] = x[k];
  }
}

// Accumulators per lane of the pooling kernel (vectors of W elements = 4 / W of them), so a
// group of L lanes covers 4 * L dims per pass over the bag.
inline constexpr int kPoolElementsPerLane = 4;

// Forward, sum / mean pooling into out (batch_size, dim): a group of `group_lanes` lanes (a
// power of two <= 32, sized to the dim) per bag, each lane loading W consecutive elements
// of a row at a time (coalesced; vector loads when W > 1), sums in position order.
template <typename T, int W>
__global__ void SC_LAUNCH_BOUNDS pool_kernel(BagsView g, RowsView<T> rows, float* __restrict__ out, int group_lanes) {
  constexpr int kVectors = kPoolElementsPerLane / W;
  const int lane = static_cast<int>(threadIdx.x) & (group_lanes - 1);
  const int64_t groups = grid_threads() / group_lanes;
  const int dim = g.dim;
  const int vectors = dim / W;
  for (int64_t b = global_thread() / group_lanes; b < g.batch_size; b += groups) {
    const int64_t start = g.offsets[b], end = g.offsets[b + 1];
    for (int v0 = 0; v0 < vectors; v0 += group_lanes * kVectors) {
      float acc[kVectors][W];
      SC_UNROLL
      for (int c = 0; c < kVectors; ++c) {
        SC_UNROLL
        for (int k = 0; k < W; ++k) acc[c][k] = 0.0f;
      }
      float weight_sum = 0.0f;
      for (int64_t p = start; p < end; ++p) {
        const float w = g.weights ? g.weights[p] : 1.0f;
        weight_sum += w;
        const int64_t s = g.unique_slots[g.inverse[p]];
        if (s < 0) continue;
        const T* row = rows.weights + s * dim;
        SC_UNROLL
        for (int c = 0; c < kVectors; ++c) {
          const int v = v0 + lane + group_lanes * c;
          if (v >= vectors) break;
          float x[W];
          load_vector<W>(row + v * W, x);
          SC_UNROLL
          for (int k = 0; k < W; ++k) acc[c][k] += w * x[k];
        }
      }
      float scale = 1.0f;
      if (g.pooling == Pooling::kMean) {
        const float denom = g.weights ? weight_sum : static_cast<float>(end - start);
        scale = denom != 0.0f ? 1.0f / denom : 0.0f;
      }
      SC_UNROLL
      for (int c = 0; c < kVectors; ++c) {
        const int v = v0 + lane + group_lanes * c;
        if (v >= vectors) break;
        SC_UNROLL
        for (int k = 0; k < W; ++k) acc[c][k] *= scale;
        store_vector<W>(out + b * dim + v * W, acc[c]);
      }
    }
  }
}

// Forward, pooling "none": out (batch_size, max_len, dim) zero-padded, one warp per bag.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS pool_sequence_kernel(BagsView g, RowsView<T> rows, float* __restrict__ out) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = grid_threads() / 32;
  const int dim = g.dim;
  for (int64_t b = global_thread() / 32; b < g.batch_size; b += warps) {
    const int64_t start = g.offsets[b], end = g.offsets[b + 1];
    float* o = out + b * g.max_len * dim;
    for (int64_t j = 0; j < g.max_len; ++j) {
      const int64_t s = start + j < end ? g.unique_slots[g.inverse[start + j]] : -1;
      const float w = start + j < end && g.weights ? g.weights[start + j] : 1.0f;
      for (int d = lane; d < dim; d += 32) o[j * dim + d] = s >= 0 ? w * to_float(rows.weights[s * dim + d]) : 0.0f;
    }
  }
}

// bag_of (num_ids): the bag of each position; bag_scale (batch_size): 1/denominator for
// mean pooling (0 for an empty bag), 1 otherwise.
__global__ void SC_LAUNCH_BOUNDS bag_layout_kernel(BagsView g, int* __restrict__ bag_of,
                                                   float* __restrict__ bag_scale) {
  for (int64_t b = global_thread(); b < g.batch_size; b += grid_threads()) {
    const int64_t start = g.offsets[b], end = g.offsets[b + 1];
    float denom = 0.0f;
    for (int64_t p = start; p < end; ++p) {
      bag_of[p] = static_cast<int>(b);
      denom += g.weights ? g.weights[p] : 1.0f;
    }
    if (!g.weights) denom = static_cast<float>(end - start);
    bag_scale[b] = g.pooling != Pooling::kMean ? 1.0f : (denom != 0.0f ? 1.0f / denom : 0.0f);
  }
}

// grad_rows (num_unique, dim): the summed gradient of each unique id, one thread per W
// consecutive elements (float4 loads of the output gradient when W = 4: dim % 4 == 0 and
// grad 16-byte aligned), occurrences in ascending position order. grad: the output
// gradient, same shape as forward's.
template <int W>
__global__ void SC_LAUNCH_BOUNDS unique_grad_kernel(BagsView g, const int* __restrict__ occ_offsets,
                                                    const int* __restrict__ occ_positions,
                                                    const int* __restrict__ bag_of, const float* __restrict__ bag_scale,
                                                    const float* __restrict__ grad, int64_t num_unique,
                                                    float* __restrict__ grad_rows) {
  const int dim = g.dim;
  const int vectors = dim / W;
  const int64_t total = num_unique * vectors;
  const bool sequence = g.pooling == Pooling::kNone;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t u = e / vectors, d = (e % vectors) * W;
    float acc[W];
    SC_UNROLL
    for (int k = 0; k < W; ++k) acc[k] = 0.0f;
    for (int i = occ_offsets[u]; i < occ_offsets[u + 1]; ++i) {
      const int pos = occ_positions[i];
      const int b = bag_of[pos];
      float s = bag_scale[b];
      if (g.weights) s *= g.weights[pos];
      const int64_t at = sequence ? (b * g.max_len + (pos - g.offsets[b])) * dim + d : int64_t{b} * dim + d;
      float x[W];
      load_vector<W>(grad + at, x);
      SC_UNROLL
      for (int k = 0; k < W; ++k) acc[k] += s * x[k];
    }
    store_vector<W>(grad_rows + u * dim + d, acc);
  }
}

// The fused update, once per unique row: the CPU engine's rule (rules::apply) on the row in
// place (fp32 storage) or on an fp32 copy rounded back once (fp16). scratch (num_unique, dim)
// fp32 device, fp16 only.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS update_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ unique_slots,
                                                    int64_t num_unique, const float* __restrict__ grad_rows,
                                                    OptimizerConfig opt, int64_t step, float* __restrict__ scratch) {
  const int dim = rows.dim;
  for (int64_t u = global_thread(); u < num_unique; u += grid_threads()) {
    const int64_t s = unique_slots[u];
    if (s < 0) continue;
    uint32_t count = rows.update_count[s];
    if (count != 0xffffffffu) ++count;
    rows.update_count[s] = count;
    float* state = rows.state + s * rows.state_dim;
    if constexpr (std::is_same_v<T, float>) {
      rules::apply(opt, rows.weights + s * dim, state, grad_rows + u * dim, dim, step, count);
    } else {
      float* w = scratch + u * dim;
      for (int d = 0; d < dim; ++d) w[d] = to_float(rows.weights[s * dim + d]);
      rules::apply(opt, w, state, grad_rows + u * dim, dim, step, count);
      for (int d = 0; d < dim; ++d) rows.weights[s * dim + d] = from_float<T>(w[d]);
    }
    rows.last_step[s] = step;
  }
}

// *count += elements of values (n) that are NaN or Inf (validation of device inputs).
__global__ void SC_LAUNCH_BOUNDS count_non_finite_kernel(const float* __restrict__ values, int64_t n,
                                                         unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) local += !(fabsf(values[i]) <= 3.402823466e38f);
  if (local) atomicAdd(count, local);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
