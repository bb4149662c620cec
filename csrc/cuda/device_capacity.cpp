// DeviceEmbeddingCollection: row capacity (LRU / LFU eviction or refusal) and incremental
// expiry of the device store, decided on the host by the CPU engine's rules (table/expiry.h)
// over the scores the device keeps per slot (update count and last step, as HierarchicalKV
// keeps a score per slot), so both stores keep and evict the same ids.
#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "device_collection_impl.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda {

bool DeviceEmbeddingCollection::make_room(int table, const int64_t* ids, int64_t n,
                                          std::unordered_map<int64_t, unsigned char>& verdicts, bool admission,
                                          bool key_order) {
  Expiry& x = *expiries_[table];
  const TableConfig& c = configs_[table];
  const int shards = 1 << c.shard_bits;
  // The batch's distinct ids of this table, in first-occurrence order.
  std::vector<int64_t> distinct;
  {
    std::unordered_set<int64_t> seen;
    for (int64_t i = 0; i < n; ++i)
      if (seen.insert(ids[i]).second) distinct.push_back(ids[i]);
  }
  // No shard can pass its bound when the whole table plus every id of the batch fits the
  // smallest shard: the admission hook alone decides then, and nothing is read back.
  int64_t smallest = INT64_MAX;
  for (int s = 0; s < shards; ++s) smallest = std::min(smallest, x.shard_capacity(s, shards));
  if (impl_->table_size(table) + static_cast<int64_t>(distinct.size()) <= smallest) return false;

  const Export live = impl_->export_meta(table);
  auto shard_of = [&](int64_t key) {
    const uint64_t h = key_hash(key);
    return c.shard_bits == 0 ? 0 : static_cast<int>(h >> (64 - c.shard_bits));
  };
  std::unordered_set<int64_t> present(live.keys.begin(), live.keys.end());
  const std::unordered_set<int64_t> batch(distinct.begin(), distinct.end());
  // Per shard: its rows, and (score, key) of those the batch does not use (the candidates).
  std::vector<int64_t> have(static_cast<size_t>(shards), 0);
  std::vector<std::vector<std::pair<uint64_t, int64_t>>> candidates(static_cast<size_t>(shards));
  for (size_t i = 0; i < live.keys.size(); ++i) {
    const int s = shard_of(live.keys[i]);
    ++have[static_cast<size_t>(s)];
    if (batch.count(live.keys[i])) continue;
    const PackedRowMeta m =
        PackedRowMeta::pack(RowMeta{static_cast<uint32_t>(live.update_count[i]), 0, live.last_step[i]});
    candidates[static_cast<size_t>(s)].emplace_back(x.score(m.update_count, m.last_step), live.keys[i]);
  }
  // The ids that want a row: absent and admitted (one sighting each), per shard in order.
  std::vector<std::vector<int64_t>> want(static_cast<size_t>(shards));
  Admission* filter = admission ? admissions_[table].get() : nullptr;
  for (int64_t key : distinct) {
    if (present.count(key)) continue;
    const bool admitted = !filter || filter->sight(key);
    verdicts[key] = admitted ? 1 : 0;
    if (admitted) want[static_cast<size_t>(shard_of(key))].push_back(key);
  }
  std::vector<int64_t> victims;
  for (int s = 0; s < shards; ++s) {
    std::vector<int64_t>& w = want[static_cast<size_t>(s)];
    if (w.empty()) continue;
    if (key_order) std::sort(w.begin(), w.end());
    const int64_t cap = x.shard_capacity(s, shards);
    int64_t rows = have[static_cast<size_t>(s)];
    const auto need = static_cast<int64_t>(w.size());
    if (rows + need > cap && x.config().on_full == OnFull::kEvict) {
      // The CPU engine's pass (EmbeddingTable::evict_locked, exact ranking): room for the
      // batch and the headroom, the lowest (score, key) first.
      const auto headroom = static_cast<int64_t>(std::ceil(x.config().eviction_headroom * static_cast<double>(cap)));
      auto& cand = candidates[static_cast<size_t>(s)];
      const size_t k = std::min(static_cast<size_t>(std::min(rows, rows + need - cap + headroom)), cand.size());
      if (k < cand.size()) std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(k), cand.end());
      for (size_t i = 0; i < k; ++i) victims.push_back(cand[i].second);
      rows -= static_cast<int64_t>(k);
    }
    const int64_t room = std::max<int64_t>(0, cap - rows);
    if (room < need) {
      x.count_refused(need - room);
      for (size_t i = static_cast<size_t>(room); i < w.size(); ++i) verdicts[w[i]] = 0;
    }
  }
  if (!victims.empty())
    x.count_evicted(remove_in_call(table, victims.data(), static_cast<int64_t>(victims.size()), MemorySpace::kHost));
  return true;
}

int64_t DeviceEmbeddingCollection::expire_some(int table) {
  Expiry* x = expiries_[table].get();
  const ExpiryConfig& c = configs_[table].expiry;
  if (!x || c.scan_per_step <= 0 || !c.has_rules()) return 0;
  // The rows in ascending key order, a window of scan_per_step of them after the cursor's
  // key (wrapping round), so every row is examined once per round whatever its slot.
  const Export rows = c.min_l2_norm > 0 ? impl_->export_rows(table, -1) : impl_->export_meta(table);
  const auto n = static_cast<int64_t>(rows.keys.size());
  if (n == 0) return 0;
  int64_t at = 0;
  if (cursor_set_[table])
    at = std::upper_bound(rows.keys.begin(), rows.keys.end(), cursor_key_[table]) - rows.keys.begin();
  const Expiry::Cutoffs cut = x->cutoffs(impl_->step());
  const int dim = configs_[table].dim;
  std::vector<int64_t> gone;
  const int64_t count = std::min(n, c.scan_per_step);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = (at + j) % n;
    const RowMeta m =
        PackedRowMeta::pack(RowMeta{static_cast<uint32_t>(rows.update_count[i]), 0, rows.last_step[i]}).unpack();
    const float* w = rows.weights.empty() ? nullptr : rows.weights.data() + i * dim;
    if (x->expired(rows.keys[i], m, w, dim, cut)) gone.push_back(rows.keys[i]);
    cursor_key_[table] = rows.keys[i];
    cursor_set_[table] = 1;
  }
  const int64_t removed = remove_in_call(table, gone.data(), static_cast<int64_t>(gone.size()), MemorySpace::kHost);
  x->count_expired(removed);
  return removed;
}

}  // namespace sparsecore::cuda
