// Row kernels of one table: initialisation, gather, moves and stores of rows, and the vector
// loads the batched row kernels (batch_row_kernels.cuh) share. The initial values are the
// CPU engine's own SC_HOST_DEVICE functions, so both backends compute the same thing.
#pragma once

#include <type_traits>

#include "device_float_ops.cuh"
#include "device_runtime.cuh"
#include "hash_table_kernels.cuh"
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

// Copies n elements from `from` to `to` by a team's lanes: float4 loads and stores where n
// and both pointers allow, one element per lane and step otherwise (fp16 rows, odd dims).
template <typename E>
__device__ __forceinline__ void copy_elements(const E* from, E* to, int n, int lane, int lanes) {
  if (std::is_same_v<E, float> && n % 4 == 0 && reinterpret_cast<uintptr_t>(from) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(to) % 16 == 0) {
    for (int v = lane; v < n / 4; v += lanes) {
      float x[4];
      load_vector<4>(reinterpret_cast<const float*>(from) + 4 * v, x);
      store_vector<4>(reinterpret_cast<float*>(to) + 4 * v, x);
    }
    return;
  }
  for (int d = lane; d < n; d += lanes) to[d] = from[d];
}

// Initial weight d of the row whose seed is rs, in fp32 (the CPU engine's initial_value).
__device__ __forceinline__ float initialize_element(const InitializerConfig& init, uint64_t rs, int d) {
  return initial_value<DeviceFloatOps>(init, rs, d);
}

// Initial row of `key` in slot s, written by a team of `lanes` lanes (lane: this thread's
// place in it): weights from the table's initializer (each element a function of the key
// and its index, rounded once with fp16 storage; fp32 rows of a dim divisible by 4 stored
// as float4, lane l writing elements 4l.., 4(l + lanes).., so consecutive lanes write
// consecutive addresses), optimizer state, no update yet and last_step = `stamp` (the CPU
// engine's stamp: the collection step + 1, the first step the row can take part in, so
// expiry and incremental export see the insert).
template <typename T>
__device__ __forceinline__ void init_row(const RowsView<T>& rows, int64_t s, int64_t key, const InitializerConfig& init,
                                         const OptimizerConfig& opt, uint64_t table_seed, int64_t stamp, int lane,
                                         int lanes) {
  const int dim = rows.dim;
  const uint64_t rs = row_seed(table_seed, key);
  T* w = rows.weights + s * dim;
  if (std::is_same_v<T, float> && dim % 4 == 0) {
    for (int v = lane; v < dim / 4; v += lanes) {
      float x[4];
      SC_UNROLL
      for (int k = 0; k < 4; ++k) x[k] = initialize_element(init, rs, 4 * v + k);
      store_vector<4>(reinterpret_cast<float*>(w) + 4 * v, x);
    }
  } else {
    for (int d = lane; d < dim; d += lanes) w[d] = from_float<T>(initialize_element(init, rs, d));
  }
  if (rows.state_dim) rules::init_state(opt, rows.state + s * rows.state_dim, dim, lane, lanes);
  if (lane == 0) {
    rows.update_count[s] = 0;
    rows.last_step[s] = stamp;
  }
}

// Fills the rows of newly inserted keys, a team of `lanes` lanes (a power of two <= 32) per
// key. keys, slots, inserted (n): device.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS init_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ keys,
                                                  const int64_t* __restrict__ slots, const int* __restrict__ inserted,
                                                  int64_t n, InitializerConfig init, OptimizerConfig opt,
                                                  uint64_t table_seed, int64_t stamp, int lanes) {
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t i = global_thread() / lanes; i < n; i += teams) {
    if (!inserted[i] || slots[i] < 0) continue;
    init_row(rows, slots[i], keys[i], init, opt, table_seed, stamp, lane, lanes);
  }
}

// out (n, dim) fp32: the row of slots[i], `absent` where slots[i] < 0.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS gather_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ slots, int64_t n,
                                                    float* __restrict__ out, float absent) {
  const int dim = rows.dim;
  const int64_t total = n * dim;
  for (int64_t e = global_thread(); e < total; e += grid_threads()) {
    const int64_t i = e / dim, d = e % dim;
    const int64_t s = slots[i];
    out[e] = s >= 0 ? to_float(rows.weights[s * dim + d]) : absent;
  }
}

// Copies rows of old slots to their new slots (after rehash_kernel). old_slots = capacity + 2.
// A team of `lanes` lanes (a power of two <= 32) per row, each lane moving every lanes-th
// element (float4 of fp32 weights and of state when the dim allows: row bases are 256-byte
// aligned): consecutive lanes touch consecutive addresses.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS move_rows_kernel(RowsView<T> from, RowsView<T> to,
                                                  const int64_t* __restrict__ new_slot_of, int64_t old_slots,
                                                  int lanes) {
  const int dim = from.dim, sd = from.state_dim;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t s = global_thread() / lanes; s < old_slots; s += teams) {
    const int64_t t = new_slot_of[s];
    if (t < 0) continue;
    copy_elements(from.weights + s * dim, to.weights + t * dim, dim, lane, lanes);
    copy_elements(from.state + s * sd, to.state + t * sd, sd, lane, lanes);
    if (lane == 0) {
      to.update_count[t] = from.update_count[s];
      to.last_step[t] = from.last_step[s];
    }
  }
}

// Writes whole rows (checkpoint import), a team of `lanes` lanes per row: weights (n, dim)
// fp32, rounded once to T; state (n, state_dim); update_count, last_step (n). slots (n): the
// rows' slots. All device.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS store_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ slots, int64_t n,
                                                   const float* __restrict__ weights, const float* __restrict__ state,
                                                   const uint32_t* __restrict__ update_count,
                                                   const int64_t* __restrict__ last_step, int lanes) {
  const int dim = rows.dim, sd = rows.state_dim;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t i = global_thread() / lanes; i < n; i += teams) {
    const int64_t s = slots[i];
    if constexpr (std::is_same_v<T, float>) {
      copy_elements(weights + i * dim, rows.weights + s * dim, dim, lane, lanes);
    } else {
      for (int d = lane; d < dim; d += lanes) rows.weights[s * dim + d] = from_float<T>(weights[i * dim + d]);
    }
    copy_elements(state + i * sd, rows.state + s * sd, sd, lane, lanes);
    if (lane == 0) {
      rows.update_count[s] = update_count[i];
      rows.last_step[s] = last_step[i];
    }
  }
}

// Copies whole rows (weights, state, update count, last step) of the same table shape from
// `from` to `to`, a team of `lanes` lanes per row: row i goes from slot from_slots[i] to slot
// to_slots[i] (a null slot array: slot i; a negative slot: row i is skipped). Saves rows
// before a parameter-server push (and puts them back), and gathers the live rows of an export.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS copy_rows_kernel(RowsView<T> from, const int64_t* __restrict__ from_slots,
                                                  RowsView<T> to, const int64_t* __restrict__ to_slots, int64_t n,
                                                  int lanes) {
  const int dim = from.dim, sd = from.state_dim;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t i = global_thread() / lanes; i < n; i += teams) {
    const int64_t s = from_slots ? from_slots[i] : i, t = to_slots ? to_slots[i] : i;
    if (s < 0 || t < 0) continue;
    copy_elements(from.weights + s * dim, to.weights + t * dim, dim, lane, lanes);
    copy_elements(from.state + s * sd, to.state + t * sd, sd, lane, lanes);
    if (lane == 0) {
      to.update_count[t] = from.update_count[s];
      to.last_step[t] = from.last_step[s];
    }
  }
}

// *count += rows among slots (n) whose weights or optimizer state hold a NaN or an Inf (an
// update overflowed them). Negative slots are skipped.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS count_non_finite_rows_kernel(RowsView<T> rows, const int64_t* __restrict__ slots,
                                                              int64_t n, unsigned long long* count) {
  const int dim = rows.dim, sd = rows.state_dim;
  unsigned long long local = 0;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t s = slots[i];
    if (s < 0) continue;
    bool bad = false;
    for (int d = 0; d < dim; ++d) bad = bad || !(fabsf(to_float(rows.weights[s * dim + d])) <= 3.402823466e38f);
    for (int d = 0; d < sd; ++d) bad = bad || !(fabsf(rows.state[s * sd + d]) <= 3.402823466e38f);
    local += bad;
  }
  if (local) atomicAdd(count, local);
}

// One row out as fp32, W elements per load by a team's lanes (`absent` in every element of
// an absent row: the table's default row).
template <typename T, int W>
__device__ __forceinline__ void copy_row_out(const RowsView<T>& rows, int64_t s, float* out, int lane, int lanes,
                                             float absent) {
  const int vectors = rows.dim / W;
  for (int v = lane; v < vectors; v += lanes) {
    float x[W];
    if (s >= 0) {
      load_vector<W>(rows.weights + s * rows.dim + v * W, x);
    } else {
      SC_UNROLL
      for (int k = 0; k < W; ++k) x[k] = absent;
    }
    store_vector<W>(out + v * W, x);
  }
}

// Fused find: each key's slot and its row copied out in one launch, no slot array between
// them. A team of `lanes` lanes per key: every lane probes (the same addresses, so one
// memory transaction per probe for the team) and then copies its share of the row with
// vector loads (float4 for fp32 rows, __half2 for fp16) where the dim and out allow.
// keys (n), out (n, dim) fp32: device; keys that are absent read `absent` (the default row).
template <typename T>
__global__ void SC_LAUNCH_BOUNDS find_rows_kernel(TableView t, RowsView<T> rows, const int64_t* __restrict__ keys,
                                                  int64_t n, float* __restrict__ out, int lanes, float absent) {
  constexpr int kWidth = std::is_same_v<T, float> ? 4 : 2;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  const bool vector = rows.dim % kWidth == 0 && reinterpret_cast<uintptr_t>(out) % (sizeof(float) * kWidth) == 0;
  for (int64_t i = global_thread() / lanes; i < n; i += teams) {
    int created = 0;
    const int64_t s = probe_slot(t, keys[i], false, &created);
    float* o = out + i * rows.dim;
    if (vector)
      copy_row_out<T, kWidth>(rows, s, o, lane, lanes, absent);
    else
      copy_row_out<T, 1>(rows, s, o, lane, lanes, absent);
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
