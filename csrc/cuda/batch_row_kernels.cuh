// Table-batched row kernels of a step: initialisation of new rows and pooling (forward),
// each one launch for every group of a batch (batch_kernels.cuh describes the layout; the
// backward's kernels are in backward_kernels.cuh). The update rules and initial values
// are the CPU engine's own SC_HOST_DEVICE functions, and float sums run in the CPU engine's
// order (positions ascending within a bag or a unique id's occurrence list), so results are
// bit-identical to the CPU engine whatever the grid or the block order.
#pragma once

#include <algorithm>
#include <type_traits>
#include <vector>

#include "batch_kernels.cuh"
#include "device_table.cuh"
#include "embedding_kernels.cuh"
#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// A table as the batched kernels see it; the collection keeps one per table on the device.
template <typename T>
struct TableDesc {
  TableView view;
  RowsView<T> rows;
  InitializerConfig init;
  OptimizerConfig opt;
  uint64_t seed = 0;
  unsigned long long* stats = nullptr;  // (2) device: live rows, tombstones
  // What an absent row reads in every weight: TableConfig::default_value as the rows store
  // it (rounded to half precision with fp16 storage), as the CPU engine's default row.
  float absent = 0.0f;
};

__device__ __forceinline__ bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// The rows of newly inserted unique ids (inserted[u] = 1), a team of `lanes` lanes (a power
// of two <= 32, batch_row_lanes) per id.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS batch_init_rows_kernel(const TableDesc<T>* __restrict__ tables, BatchView b,
                                                        const int64_t* __restrict__ slots,
                                                        const int* __restrict__ inserted, int64_t stamp, int lanes) {
  const int64_t total = b.unique_begin[b.num_groups];
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t u = global_thread() / lanes; u < total; u += teams) {
    if (!inserted[u] || slots[u] < 0) continue;
    const int g = find_group(b.unique_begin, b.num_groups, u);
    const TableDesc<T>& t = tables[b.groups[g].table];
    init_row(t.rows, slots[u], b.unique_keys[u], t.init, t.opt, t.seed, stamp, lane, lanes);
  }
}

// Lanes per row of the row kernels of a batch: enough for the widest group's row (4 elements
// a lane, row_lanes).
inline int batch_row_lanes(const std::vector<DeviceGroupInfo>& groups) {
  int widest = 1;
  for (const DeviceGroupInfo& g : groups) widest = std::max(widest, g.dim);
  return row_lanes(widest);
}

// Accumulators per lane of the pooling kernel (vectors of W elements = 4 / W of them), so a
// team of L lanes covers 4 * L dims per pass over the bag.
inline constexpr int kPoolElementsPerLane = 4;

// Sum / mean pooling of one bag into out (dim): W consecutive elements per load (coalesced;
// vector loads when W > 1), sums in position order.
template <typename T, int W>
__device__ __forceinline__ void pool_bag(const BatchView& b, int g, const GroupDesc& gd, int64_t bag,
                                         const int64_t* __restrict__ slots, const T* __restrict__ weights, float absent,
                                         float* out, int lane, int lanes) {
  constexpr int kVectors = kPoolElementsPerLane / W;
  const int dim = gd.dim;
  const int vectors = dim / W;
  const float* bag_weights = b.weights[g];
  const int64_t lo = b.id_begin[g];
  const int64_t start = b.offsets[bag], end = b.offsets[bag + 1];
  for (int v0 = 0; v0 < vectors; v0 += lanes * kVectors) {
    float acc[kVectors][W];
    SC_UNROLL
    for (int c = 0; c < kVectors; ++c) {
      SC_UNROLL
      for (int k = 0; k < W; ++k) acc[c][k] = 0.0f;
    }
    float weight_sum = 0.0f;
    for (int64_t p = start; p < end; ++p) {
      const float w = bag_weights ? bag_weights[p - lo] : 1.0f;
      weight_sum += w;
      const int64_t s = slots[b.inverse[p]];
      // An absent row adds nothing when the default row is zeros (the CPU engine skips it).
      if (s < 0 && absent == 0.0f) continue;
      const T* row = weights + (s >= 0 ? s : 0) * dim;
      SC_UNROLL
      for (int c = 0; c < kVectors; ++c) {
        const int v = v0 + lane + lanes * c;
        if (v >= vectors) break;
        float x[W];
        if (s >= 0) {
          load_vector<W>(row + v * W, x);
        } else {
          SC_UNROLL
          for (int k = 0; k < W; ++k) x[k] = absent;
        }
        SC_UNROLL
        for (int k = 0; k < W; ++k) acc[c][k] += w * x[k];
      }
    }
    float scale = 1.0f;
    if (gd.pooling == Pooling::kMean) {
      const float denom = bag_weights ? weight_sum : static_cast<float>(end - start);
      scale = denom != 0.0f ? 1.0f / denom : 0.0f;
    }
    SC_UNROLL
    for (int c = 0; c < kVectors; ++c) {
      const int v = v0 + lane + lanes * c;
      if (v >= vectors) break;
      SC_UNROLL
      for (int k = 0; k < W; ++k) acc[c][k] *= scale;
      store_vector<W>(out + v * W, acc[c]);
    }
  }
}

// Pooling "none" of one bag into out (max_len, dim), zero-padded.
template <typename T>
__device__ __forceinline__ void pool_sequence_bag(const BatchView& b, int g, const GroupDesc& gd, int64_t bag,
                                                  const int64_t* __restrict__ slots, const T* __restrict__ weights,
                                                  float absent, float* out, int lane, int lanes) {
  const int dim = gd.dim;
  const float* bag_weights = b.weights[g];
  const int64_t lo = b.id_begin[g];
  const int64_t start = b.offsets[bag], end = b.offsets[bag + 1];
  for (int64_t j = 0; j < gd.max_len; ++j) {
    const int64_t s = start + j < end ? slots[b.inverse[start + j]] : -1;
    const float w = start + j < end && bag_weights ? bag_weights[start + j - lo] : 1.0f;
    const bool in_bag = start + j < end;
    for (int d = lane; d < dim; d += lanes)
      out[j * dim + d] = s >= 0 ? w * to_float(weights[s * dim + d]) : in_bag && absent != 0.0f ? w * absent : 0.0f;
  }
}

// Lanes per bag of pool_kernel: enough for the widest group (a power of two <= 32).
template <typename T>
int pool_lanes(const std::vector<DeviceGroupInfo>& groups) {
  constexpr int kWidth = std::is_same_v<T, float> ? 4 : 2;
  int wanted = 1;
  for (const DeviceGroupInfo& g : groups) {
    if (g.pooling == Pooling::kNone) {
      wanted = std::max(wanted, g.dim);
      continue;
    }
    const int width = g.dim % kWidth == 0 ? kWidth : 1;
    const int per_lane = kPoolElementsPerLane / width;
    wanted = std::max(wanted, (g.dim / width + per_lane - 1) / per_lane);
  }
  int lanes = 1;
  while (lanes < wanted && lanes < 32) lanes *= 2;
  return lanes;
}

// Forward of every bag of the batch: a team of `lanes` lanes (a power of two <= 32) per bag,
// into each group's output (GroupPointers). Vector loads (float4 for fp32 rows, __half2 for fp16) where the dim allows
// and the group's output is aligned for them.
template <typename T>
__global__ void SC_LAUNCH_BOUNDS pool_kernel(const TableDesc<T>* __restrict__ tables, BatchView b,
                                             const int64_t* __restrict__ slots, GroupPointers<float*> outputs,
                                             int lanes) {
  constexpr int kWidth = std::is_same_v<T, float> ? 4 : 2;
  const int lane = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t teams = grid_threads() / lanes;
  for (int64_t bag = global_thread() / lanes; bag < b.num_bags; bag += teams) {
    const int g = find_group(b.bag_begin, b.num_groups, bag);
    const GroupDesc& gd = b.groups[g];
    const int64_t local = bag - b.bag_begin[g];
    float* out = outputs.get(g, gd.out_begin);
    const T* weights = tables[gd.table].rows.weights;
    const float absent = tables[gd.table].absent;
    if (gd.pooling == Pooling::kNone)
      pool_sequence_bag<T>(b, g, gd, bag, slots, weights, absent, out + local * gd.max_len * gd.dim, lane, lanes);
    else if (gd.dim % kWidth == 0 && aligned_to(out, sizeof(float) * kWidth))
      pool_bag<T, kWidth>(b, g, gd, bag, slots, weights, absent, out + local * gd.dim, lane, lanes);
    else
      pool_bag<T, 1>(b, g, gd, bag, slots, weights, absent, out + local * gd.dim, lane, lanes);
  }
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
