// Whole-row transfers of one device table: rows gathered on the device into a compact copy
// (exports read only the live or changed rows, never the slot arrays whole), rows saved
// before a parameter-server push and put back when it overflows. Included by
// device_collection.cu only.
#pragma once

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "device_batch.cuh"
#include "device_collection_impl.h"
#include "device_table.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {

// n rows of a table's shape, compact (row i at index i), structure of arrays, device.
template <typename T>
struct RowCopies {
  int64_t n = 0;
  int dim = 0, state_dim = 0;
  DeviceBuffer<T> weights;
  DeviceBuffer<float> state;
  DeviceBuffer<uint32_t> update_count;
  DeviceBuffer<int64_t> last_step;

  RowCopies(int64_t rows, int d, int sd) : n(rows), dim(d), state_dim(sd) {
    weights.resize(std::max<int64_t>(n * dim, 1));
    state.resize(std::max<int64_t>(n * state_dim, 1));
    update_count.resize(std::max<int64_t>(n, 1));
    last_step.resize(std::max<int64_t>(n, 1));
  }
  RowsView<T> view() { return {weights.data(), state.data(), update_count.data(), last_step.data(), dim, state_dim}; }
};

// Rows from `from` to `to`, row i from slot from_slots[i] to slot to_slots[i] (null: i).
template <typename T>
void copy_rows(const LaunchShape& shape, RowsView<T> from, const int64_t* from_slots, RowsView<T> to,
               const int64_t* to_slots, int64_t n) {
  if (n == 0) return;
  const int lanes = row_lanes(std::max(from.dim, from.state_dim));
  SC_LAUNCH(shape.grid(n * lanes), shape.block(), 0, nullptr, copy_rows_kernel<T>)
  (from, from_slots, to, to_slots, n, lanes);
  SC_CHECK_LAUNCH();
}

// The rows of table t whose last_step > since (since < 0: every row), sorted by key: the live
// slots are collected and their rows gathered on the device, and only those rows come over.
// values=false: keys and metadata only (weights and state left empty), what capacity and
// incremental expiry rank and test.
template <typename T>
DeviceEmbeddingCollection::Export export_table_rows(const LaunchShape& shape, DeviceTable<T>& t, int64_t since,
                                                    bool values = true) {
  const int64_t total = t.capacity + kReservedSlots;
  DeviceBuffer<int64_t> slots(total), keys(total);
  DeviceBuffer<unsigned long long> count(1);
  count.fill_zero();
  SC_LAUNCH(shape.grid(total), shape.block(), 0, nullptr, collect_live_kernel)
  (t.view(), since >= 0 ? t.last_step.data() : nullptr, since, slots.data(), keys.data(), count.data());
  SC_CHECK_LAUNCH();
  unsigned long long found = 0;
  count.download(&found, 1);
  const auto n = static_cast<int64_t>(found);
  const int dim = values ? t.dim : 0, state_dim = values ? t.state_dim : 0;
  RowCopies<T> rows(n, dim, state_dim);
  RowsView<T> from = t.rows();
  from.dim = dim;  // copy_rows copies from.dim weights and from.state_dim state values a row
  from.state_dim = state_dim;
  copy_rows(shape, from, slots.data(), rows.view(), nullptr, n);
  std::vector<int64_t> k(n), last(n);
  std::vector<T> w(static_cast<size_t>(n) * dim);
  std::vector<float> st(static_cast<size_t>(n) * state_dim);
  std::vector<uint32_t> cnt(n);
  keys.download(k.data(), n);
  if (values) {
    rows.weights.download(w.data(), w.size());
    rows.state.download(st.data(), st.size());
  }
  rows.update_count.download(cnt.data(), n);
  rows.last_step.download(last.data(), n);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return k[a] < k[b]; });
  DeviceEmbeddingCollection::Export e;
  e.keys.reserve(n);
  e.weights.reserve(w.size());
  e.state.reserve(st.size());
  for (int64_t i : order) {
    e.keys.push_back(k[i]);
    for (int d = 0; d < dim; ++d) e.weights.push_back(to_float(w[i * dim + d]));
    e.state.insert(e.state.end(), st.begin() + i * state_dim, st.begin() + (i + 1) * state_dim);
    e.update_count.push_back(cnt[i]);
    e.last_step.push_back(last[i]);
  }
  return e;
}

// The rows of some keys of one table as they were (every key had a row when they were
// saved), and the collection's step then, kept on the device.
template <typename T>
struct SavedTableRows final : DeviceSavedRows {
  SavedTableRows(int table_index, int64_t n, int dim, int state_dim, int64_t at_step)
      : table(table_index), step(at_step), rows(n, dim, state_dim) {}
  int table;
  int64_t step;
  DeviceBuffer<int64_t> keys;  // (n)
  RowCopies<T> rows;
};

// *count of rows among slots (n, device) whose weights or state are not finite, read back.
template <typename T>
int64_t count_non_finite_rows(const LaunchShape& shape, RowsView<T> rows, const int64_t* slots, int64_t n) {
  if (n == 0) return 0;
  DeviceBuffer<unsigned long long> count(1);
  count.fill_zero();
  SC_LAUNCH(shape.grid(n), shape.block(), 0, nullptr, count_non_finite_rows_kernel<T>)(rows, slots, n, count.data());
  SC_CHECK_LAUNCH();
  unsigned long long bad = 0;
  count.download(&bad, 1);
  return static_cast<int64_t>(bad);
}

// Writes whole rows (an import): e's weights, state and metadata into slots (n, device).
template <typename T>
void store_table_rows(const LaunchShape& shape, DeviceTable<T>& table, const int64_t* slots,
                      const DeviceEmbeddingCollection::Export& e) {
  const auto n = static_cast<int64_t>(e.keys.size());
  DeviceBuffer<float> weights, state;
  weights.upload(e.weights.data(), e.weights.size());
  state.upload(e.state.data(), e.state.size());
  std::vector<uint32_t> counts(e.update_count.begin(), e.update_count.end());
  DeviceBuffer<uint32_t> count;
  count.upload(counts.data(), n);
  DeviceBuffer<int64_t> last;
  last.upload(e.last_step.data(), n);
  const int lanes = row_lanes(std::max(table.dim, table.state_dim));
  SC_LAUNCH(shape.grid(n * lanes), shape.block(), 0, nullptr, store_rows_kernel<T>)
  (table.rows(), slots, n, weights.data(), state.data(), count.data(), last.data(), lanes);
  SC_CHECK_LAUNCH();
}

// DeviceCollectionImpl::read_back through `staging` (pinned, room for the counts and every
// copy): the NaN/Inf count of each array of `finite` and the copies, with one wait.
inline std::vector<int64_t> read_back_checked(const LaunchShape& shape,
                                              const std::vector<DeviceCollectionImpl::HostCopy>& copies,
                                              const std::vector<DeviceCollectionImpl::Floats>& finite,
                                              unsigned char* staging) {
  DeviceBuffer<unsigned long long> counts(finite.size());
  counts.fill_zero();
  for (size_t i = 0; i < finite.size(); ++i) {
    if (finite[i].n == 0) continue;
    SC_LAUNCH(shape.grid(finite[i].n), shape.block(), 0, nullptr, count_non_finite_kernel)
    (finite[i].values, finite[i].n, counts.data() + i);
    SC_CHECK_LAUNCH();
  }
  copy_to_host_async(staging, counts.data(), finite.size() * sizeof(unsigned long long));
  size_t at = finite.size() * sizeof(unsigned long long);
  for (const auto& c : copies) {
    copy_to_host_async(staging + at, c.src, c.bytes);
    at += c.bytes;
  }
  synchronize();
  std::vector<unsigned long long> bad(finite.size());
  if (!bad.empty()) std::memcpy(bad.data(), staging, bad.size() * sizeof(unsigned long long));
  at = finite.size() * sizeof(unsigned long long);
  for (const auto& c : copies) {
    if (c.bytes) std::memcpy(c.dst, staging + at, c.bytes);
    at += c.bytes;
  }
  return {bad.begin(), bad.end()};
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
