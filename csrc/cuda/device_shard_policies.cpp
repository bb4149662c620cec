// DeviceEmbeddingCollection: the decisions of a parameter-server shard (cuda/device_shard_rows.h)
// for a table with feature admission or a row capacity. A CPU shard sights ids and makes
// room at a training pull (EmbeddingTable::pull_weights) and picks the rows a push updates in
// apply_unique, with other keys kept and another refusal order than a training prepare; the
// device store takes the same decisions through the same engine rules (table/admission.h,
// table/expiry.h, make_room in device_capacity.cpp), so both servers keep, evict and admit the
// same ids.
#include <algorithm>
#include <numeric>

#include "device_collection_impl.h"
#include "sparsecore/core/error.h"
#include "sparsecore/cuda/device_embedding_collection.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore::cuda {

std::vector<unsigned char> DeviceEmbeddingCollection::held_in_call(int table, const int64_t* keys, int64_t n) const {
  return impl_->contains(table, keys, n);
}

std::unordered_map<int64_t, unsigned char> DeviceEmbeddingCollection::insert_rows_in_call(int table,
                                                                                          const int64_t* keys,
                                                                                          int64_t n) {
  std::unordered_map<int64_t, unsigned char> verdicts;
  std::vector<int64_t> insert;
  if (configs_[table].expiry.capacity > 0 &&
      make_room(table, keys, n, verdicts, /*admission=*/false, /*key_order=*/true)) {
    for (const auto& [key, verdict] : verdicts)
      if (verdict) insert.push_back(key);
  } else {
    verdicts.clear();
    insert.assign(keys, keys + n);  // a key held already stays as it is
  }
  std::sort(insert.begin(), insert.end());  // a deterministic insertion order
  insert.erase(std::unique(insert.begin(), insert.end()), insert.end());
  if (!insert.empty()) {
    std::vector<float> scratch(insert.size() * static_cast<size_t>(configs_[table].dim));
    impl_->lookup(table, insert.data(), static_cast<int64_t>(insert.size()), scratch.data(), true, MemorySpace::kHost);
  }
  // A key given a row again is no longer deleted (EmbeddingTable::init_row).
  for (int64_t key : insert) deleted_[table]->forget(key);
  return verdicts;
}

void DeviceEmbeddingCollection::shard_pull(int table, const int64_t* keys, int64_t n, float* out) {
  DeviceCall call(*impl_, {});
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || (keys && out)), "lookup: null keys or output for ", n, " keys");
  if (n == 0) return;
  Admission* admission = admissions_[table].get();
  if (admission) admission->tick();
  // The rows held are read before any eviction: the CPU pull reads the rows it found, even
  // one that its own inserts then evict. Keys without a row read the default row for now.
  const std::vector<unsigned char> held = held_in_call(table, keys, n);
  impl_->lookup(table, keys, n, out, /*insert=*/false, MemorySpace::kHost);
  // One sighting per occurrence without a row; only an occurrence admitted at its own
  // sighting reads the new row (EmbeddingTable::admit_missing).
  std::vector<int64_t> admitted;
  std::vector<int64_t> at;
  for (int64_t i = 0; i < n; ++i) {
    if (held[static_cast<size_t>(i)] || (admission && !admission->sight(keys[i]))) continue;
    admitted.push_back(keys[i]);
    at.push_back(i);
  }
  if (admitted.empty()) return;
  const auto verdicts = insert_rows_in_call(table, admitted.data(), static_cast<int64_t>(admitted.size()));
  std::vector<int64_t> made;
  std::vector<int64_t> made_at;
  for (size_t j = 0; j < admitted.size(); ++j) {
    auto it = verdicts.find(admitted[j]);
    if (!verdicts.empty() && (it == verdicts.end() || !it->second)) continue;  // refused: the default row
    made.push_back(admitted[j]);
    made_at.push_back(at[j]);
  }
  if (made.empty()) return;
  const auto dim = static_cast<size_t>(configs_[table].dim);
  std::vector<float> rows(made.size() * dim);
  impl_->lookup(table, made.data(), static_cast<int64_t>(made.size()), rows.data(), false, MemorySpace::kHost);
  for (size_t j = 0; j < made.size(); ++j)
    std::copy_n(rows.data() + j * dim, dim, out + static_cast<size_t>(made_at[j]) * dim);
}

std::vector<unsigned char> DeviceEmbeddingCollection::shard_update_rows(int table, const int64_t* keys, int64_t n) {
  DeviceCall call(*impl_, {});
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || keys), "update: null keys for ", n, " keys");
  std::vector<unsigned char> has(static_cast<size_t>(n), 1);
  if (n == 0) return has;
  if (Admission* admission = admissions_[table].get()) {
    // Only admitted ids have rows; the gradients of the others are dropped and counted.
    has = held_in_call(table, keys, n);
    admission->count_dropped(std::count(has.begin(), has.end(), 0));
    return has;
  }
  if (configs_[table].expiry.capacity <= 0) return has;
  const auto verdicts = insert_rows_in_call(table, keys, n);
  for (int64_t i = 0; i < n; ++i) {
    auto it = verdicts.find(keys[i]);
    has[static_cast<size_t>(i)] = it == verdicts.end() || it->second ? 1 : 0;
  }
  expiries_[table]->count_dropped(std::count(has.begin(), has.end(), 0));
  return has;
}

int64_t DeviceEmbeddingCollection::update_rows(int table, const int64_t* keys, int64_t n, const float* grads) {
  DeviceCall call(*impl_, {});
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || (keys && grads)), "update: null keys or gradients for ", n, " keys");
  SC_CHECK_ARG(kernels::all_finite(grads, n * configs_[table].dim), "gradients of table '", configs_[table].name,
               "' contain NaN or Inf; no row was updated");
  // One bag per key (none for an empty push, which still counts as an update): each key's
  // unique gradient is its bag's gradient times 1.
  std::vector<int64_t> offsets(static_cast<size_t>(n) + 1);
  std::iota(offsets.begin(), offsets.end(), int64_t{0});
  GroupInput in;
  in.table = table;
  in.ids = keys;
  in.num_ids = n;
  in.offsets = offsets.data();
  in.batch_size = n;
  const std::vector<GroupInput> inputs{in};
  const std::vector<std::vector<int64_t>> host_offsets = validate_inputs(inputs, MemorySpace::kHost);
  // Every key has a row: no admission hook, nothing is inserted.
  auto batch = impl_->prepare(inputs, host_offsets, /*train=*/true, MemorySpace::kHost, {});
  const float none = 0.0f;
  std::vector<int64_t> dropped;
  const int64_t step = impl_->backward(*batch, {n ? grads : &none}, MemorySpace::kHost, dropped);
  // An overflowed update shows in the rows' weights or state (the rules write them all).
  const int64_t bad = impl_->count_non_finite_rows(table, keys, n);
  if (bad == 0) after_step(step);
  return bad;
}

}  // namespace sparsecore::cuda
