// One table of the device collection: its slot arrays and rows (structure of arrays, one
// entry per slot), and the host's view of its counts. Included by device_collection.cu only.
#pragma once

#include <algorithm>
#include <utility>
#include <vector>

#include "embedding_kernels.cuh"
#include "hash_table_kernels.cuh"
#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

template <typename T>
struct DeviceTable {
  TableConfig config;
  uint64_t seed = 0;
  int dim = 0;
  int state_dim = 0;
  int64_t capacity = 0;  // probed slots (a power of two); rows have capacity + 2 slots
  // Live rows and tombstones as last read from the device (the device counts them), and an
  // upper bound of the rows inserted since: growth decisions need no read while
  // size + pending + what a batch could add stays under the load limit.
  int64_t size = 0;
  int64_t tombstones = 0;
  int64_t pending = 0;
  uint64_t generation = 1;  // changes whenever slots move or rows are released
  // The weight an absent row reads (TableConfig::default_value as the rows store it).
  float absent = 0.0f;
  DeviceBuffer<int64_t> keys;
  DeviceBuffer<int> reserved;
  DeviceBuffer<T> weights;
  DeviceBuffer<float> state;
  DeviceBuffer<uint32_t> update_count;
  DeviceBuffer<int64_t> last_step;

  TableView view() { return {keys.data(), reserved.data(), capacity}; }
  RowsView<T> rows() { return {weights.data(), state.data(), update_count.data(), last_step.data(), dim, state_dim}; }
};

// Lanes per row of the team-per-row kernels: a power of two <= 32, about one lane per four
// elements.
inline int row_lanes(int elements) {
  int lanes = 1;
  while (lanes < 32 && lanes * 4 < elements) lanes *= 2;
  return lanes;
}

// The smallest power of two >= x (at least 16): a table capacity.
inline int64_t next_pow2(int64_t x) {
  int64_t p = 16;
  while (p < x) p *= 2;
  return p;
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
