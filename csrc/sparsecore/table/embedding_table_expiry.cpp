// EmbeddingTable: row removal, expiry and capacity (see table/expiry.h for the rules).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {

void EmbeddingTable::count_dropped(int64_t n) {
  if (n <= 0) return;
  if (admission_)
    admission_->count_dropped(n);
  else if (expiry_)
    expiry_->count_dropped(n);
}

void EmbeddingTable::set_step(int64_t step) {
  int64_t have = step_.load(std::memory_order_relaxed);
  while (step > have && !step_.compare_exchange_weak(have, step, std::memory_order_acq_rel)) {
  }
  if (expiry_) expiry_->note_step(step);
}

void EmbeddingTable::insert_missing_locked(int shard, const int64_t* keys, int64_t count, std::byte** rows,
                                           bool sight) {
  HashTable::Shard& sh = table_.shard(shard);
  thread_local std::vector<int64_t> want;
  thread_local std::vector<int64_t> at;
  want.clear();
  at.clear();
  for (int64_t i = 0; i < count; ++i) {
    if (rows[i]) continue;
    want.push_back(keys[i]);
    at.push_back(i);
  }
  if (sight && admission_ && !want.empty()) {
    // One lock of the filter for the shard's sightings, in key order as one by one.
    thread_local std::vector<unsigned char> admitted;
    admitted.resize(want.size());
    admission_->sight_all(want.data(), static_cast<int64_t>(want.size()), admitted.data());
    size_t kept = 0;
    for (size_t j = 0; j < want.size(); ++j) {
      if (!admitted[j]) continue;
      want[kept] = want[j];
      at[kept] = at[j];
      ++kept;
    }
    want.resize(kept);
    at.resize(kept);
  }
  if (want.empty()) return;
  size_t room = want.size();
  if (expiry_ && expiry_->capacity() > 0) {
    const int64_t cap = expiry_->shard_capacity(shard, table_.num_shards());
    const int64_t have = static_cast<int64_t>(sh.size());
    const int64_t need = static_cast<int64_t>(want.size());
    if (have + need > cap && expiry_->config().on_full == OnFull::kEvict) {
      // Room for this lookup and a batch of later ones, so the pass over the shard is amortised.
      const int64_t headroom =
          static_cast<int64_t>(std::ceil(expiry_->config().eviction_headroom * static_cast<double>(cap)));
      std::vector<int64_t> keep(keys, keys + count);
      std::sort(keep.begin(), keep.end());
      evict_locked(shard, std::min(have, have + need - cap + headroom), keep);
    }
    room = static_cast<size_t>(std::max<int64_t>(0, cap - static_cast<int64_t>(sh.size())));
    if (room < want.size()) {
      expiry_->count_refused(static_cast<int64_t>(want.size() - room));
      want.resize(room);
      at.resize(room);
    }
  }
  if (want.empty()) return;
  PodVector<std::byte*> made(want.size());
  for (auto& r : made) r = nullptr;
  sh.insert_absent(want.data(), static_cast<int64_t>(want.size()), made.data(), row_init_);
  for (size_t j = 0; j < want.size(); ++j) rows[at[j]] = made[j];
}

int64_t EmbeddingTable::remove_rows_locked(int shard, const int64_t* keys, int64_t count, Removal why) {
  // Each removed key goes into the deleted-keys log at the step after the current one (the
  // version a delta written later carries), under the shard lock held here.
  int64_t removed = 0;
  const int64_t stamp = step() + 1;
  if (dense_) {
    for (int64_t i = 0; i < count; ++i)
      if (dense_->unmark(keys[i])) {
        ++removed;
        deleted_.record(keys[i], stamp);
      }
  } else {
    HashTable::Shard& sh = table_.shard(shard);
    for (int64_t i = 0; i < count; ++i)
      if (sh.erase(keys[i], key_hash(keys[i]), /*retire=*/true)) {
        ++removed;
        deleted_.record(keys[i], stamp);
      }
    if (removed) {
      // Read after the rows left the shard (row_epochs.h).
      sh.seal_retired(RowEpochs::now());
      shard_retired_[static_cast<size_t>(shard)].fetch_add(static_cast<size_t>(removed), std::memory_order_relaxed);
      retired_.fetch_add(static_cast<size_t>(removed), std::memory_order_relaxed);
    }
  }
  if (expiry_ && why == Removal::kExpired) expiry_->count_expired(removed);
  if (expiry_ && why == Removal::kEvicted) expiry_->count_evicted(removed);
  return removed;
}

int64_t EmbeddingTable::remove_rows(const int64_t* keys, int64_t n, Removal why) {
  PodVector<int64_t> ids;
  if (dense_) {
    // Every id checked (or mapped) before any row goes.
    ids.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[i] = dense_id(keys[i]);
    keys = ids.data();
  }
  ShardedDedup grouped;
  grouped.group(keys, n, table_.num_shards());
  int64_t removed = 0;
  std::vector<int64_t> shard_keys;
  for (int s = 0; s < table_.num_shards(); ++s) {
    if (grouped.shard_begin(s) == grouped.shard_end(s)) continue;
    shard_keys.clear();
    for (int64_t p = grouped.shard_begin(s); p < grouped.shard_end(s); ++p)
      shard_keys.push_back(keys[grouped.perm()[p]]);
    auto lock = table_.shard(s).write_lock();
    removed += remove_rows_locked(s, shard_keys.data(), static_cast<int64_t>(shard_keys.size()), why);
  }
  return removed;
}

size_t EmbeddingTable::release_retired() {
  const size_t released = release_retired_before(std::numeric_limits<uint64_t>::max());
  if (released) bump_generation();
  return released;
}

size_t EmbeddingTable::release_retired_before(uint64_t before) {
  if (retired_.load(std::memory_order_acquire) == 0) return 0;
  size_t released = 0;
  for (int s = 0; s < table_.num_shards(); ++s) {
    std::atomic<size_t>& waiting = shard_retired_[static_cast<size_t>(s)];
    if (waiting.load(std::memory_order_relaxed) == 0) continue;
    HashTable::Shard& sh = table_.shard(s);
    auto lock = sh.write_lock();
    const size_t n = sh.release_retired(before);
    waiting.fetch_sub(n, std::memory_order_relaxed);
    released += n;
  }
  retired_.fetch_sub(released, std::memory_order_acq_rel);
  return released;
}

bool EmbeddingTable::expired(int64_t key, const std::byte* row, const Expiry::Cutoffs& cut) const {
  const RowMeta m = meta(const_cast<std::byte*>(row))->unpack();
  thread_local std::vector<float> w;
  if (cut.min_norm_sq > 0) {
    w.resize(static_cast<size_t>(config_.dim));
    read_weights(row, w.data());
  }
  return expiry_->expired(key, m, w.data(), config_.dim, cut);
}

void EmbeddingTable::collect_expired(int shard, uint64_t begin, uint64_t end, bool with_special,
                                     const Expiry::Cutoffs& cut, std::vector<int64_t>& out) const {
  table_.shard(shard).for_each_in_slots(begin, end, with_special, [&](int64_t key, const std::byte* row) {
    if (expired(key, row, cut)) out.push_back(key);
  });
}

int64_t EmbeddingTable::expire() {
  if (!expiry_ || dense_) return 0;
  const Expiry::Cutoffs cut = expiry_->cutoffs(step());
  // Every shard is examined before any row goes, so a predicate that throws removes nothing.
  // On the calling thread: a predicate may need the caller's interpreter.
  std::vector<std::vector<int64_t>> keys(static_cast<size_t>(table_.num_shards()));
  for (int s = 0; s < table_.num_shards(); ++s) {
    const HashTable::Shard& sh = table_.shard(s);
    auto lock = sh.read_lock();
    collect_expired(s, 0, sh.slot_count(), true, cut, keys[static_cast<size_t>(s)]);
  }
  int64_t removed = 0;
  for (int s = 0; s < table_.num_shards(); ++s) {
    const std::vector<int64_t>& k = keys[static_cast<size_t>(s)];
    if (k.empty()) continue;
    auto lock = table_.shard(s).write_lock();
    removed += remove_rows_locked(s, k.data(), static_cast<int64_t>(k.size()), Removal::kExpired);
  }
  return removed;
}

int64_t EmbeddingTable::expire_some(int64_t slots) {
  if (!expiry_ || dense_ || slots <= 0 || !config_.expiry.has_rules()) return 0;
  // One pass at a time; a training thread that finds another one running goes on.
  std::unique_lock<std::mutex> guard(cursor_mutex_, std::try_to_lock);
  if (!guard.owns_lock()) return 0;
  const Expiry::Cutoffs cut = expiry_->cutoffs(step());
  int64_t left = slots;
  int64_t removed = 0;
  std::vector<int64_t> keys;
  for (int visited = 0; left > 0 && visited <= table_.num_shards();) {
    const int s = expiry_->cursor_shard;
    HashTable::Shard& sh = table_.shard(s);
    auto lock = sh.write_lock();
    const uint64_t cap = sh.slot_count();
    // A shard that grew was rehashed: its round starts again.
    if (expiry_->cursor_slots != cap) {
      expiry_->cursor_slots = cap;
      expiry_->cursor_slot = 0;
    }
    const uint64_t a = expiry_->cursor_slot;
    uint64_t end = std::min<uint64_t>(cap, a + static_cast<uint64_t>(left));
    // To the end of the probe run: erasing shifts entries back only within their run, so no
    // entry of a later window moves into one already examined (a run that wraps is followed
    // into the shard's first slots).
    while (end < a + cap && sh.slot_used(end % cap)) ++end;
    keys.clear();
    collect_expired(s, a, std::min(end, cap), a == 0, cut, keys);
    if (end > cap) collect_expired(s, 0, end - cap, false, cut, keys);
    removed += remove_rows_locked(s, keys.data(), static_cast<int64_t>(keys.size()), Removal::kExpired);
    left -= std::max<int64_t>(1, static_cast<int64_t>(end - a));
    if (end >= cap) {
      expiry_->cursor_shard = (s + 1) % table_.num_shards();
      expiry_->cursor_slot = 0;
      expiry_->cursor_slots = 0;
      ++visited;
    } else {
      expiry_->cursor_slot = end;
    }
  }
  return removed;
}

int64_t EmbeddingTable::evict_locked(int shard, int64_t count, const std::vector<int64_t>& keep) {
  if (count <= 0) return 0;
  struct Candidate {
    uint64_t score;
    int64_t key;
    bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : key < o.key; }
  };
  thread_local std::vector<Candidate> candidates;
  candidates.clear();
  const HashTable::Shard& sh = table_.shard(shard);
  auto consider = [&](int64_t key, const std::byte* row) {
    if (std::binary_search(keep.begin(), keep.end(), key)) return;
    const PackedRowMeta* m = meta(const_cast<std::byte*>(row));
    candidates.push_back({expiry_->score(m->update_count, m->last_step), key});
  };
  const int64_t sample = std::max(Expiry::kMinEvictionSample, count * Expiry::kSamplesPerEviction);
  const uint64_t slots = sh.slot_count();
  if (expiry_->config().eviction == EvictionMode::kSampled && static_cast<int64_t>(sh.size()) > sample + count &&
      slots > 0) {
    // The window's first slot: a hash of what this pass is (not of the thread running it).
    uint64_t mix = seed_ ^ (static_cast<uint64_t>(shard) << 40) ^ sh.size();
    for (int64_t k : keep) mix = fmix64(mix ^ static_cast<uint64_t>(k));
    uint64_t a = fmix64(mix + 0x9e3779b97f4a7c15ull) % slots;
    // Back to the start of its probe run (the load stays below 4/5: an empty slot exists), so
    // the window holds whole runs and its key set does not depend on the insertion order.
    for (uint64_t back = 0; back < slots && sh.slot_used(a == 0 ? slots - 1 : a - 1); ++back)
      a = a == 0 ? slots - 1 : a - 1;
    // Forward until the sample, not counting the lookup's own rows, is reached, then to the end
    // of the run it is in.
    uint64_t i = a;
    for (uint64_t seen = 0; seen < slots; ++seen, i = i + 1 == slots ? 0 : i + 1) {
      const bool used = sh.slot_used(i);
      if (!used && static_cast<int64_t>(candidates.size()) >= sample) break;
      if (used) sh.for_each_in_slots(i, i + 1, false, consider);
    }
    sh.for_each_in_slots(0, 0, /*with_special=*/true, consider);
  } else {
    sh.for_each(consider);
  }
  const size_t k = std::min(static_cast<size_t>(count), candidates.size());
  if (k < candidates.size()) std::nth_element(candidates.begin(), candidates.begin() + k, candidates.end());
  std::vector<int64_t> keys(k);
  for (size_t i = 0; i < k; ++i) keys[i] = candidates[i].key;
  return remove_rows_locked(shard, keys.data(), static_cast<int64_t>(k), Removal::kEvicted);
}

int64_t EmbeddingTable::enforce_capacity() {
  if (!expiry_ || dense_ || expiry_->capacity() <= 0) return 0;
  int64_t evicted = 0;
  for (int s = 0; s < table_.num_shards(); ++s) {
    HashTable::Shard& sh = table_.shard(s);
    auto lock = sh.write_lock();
    const int64_t over = static_cast<int64_t>(sh.size()) - expiry_->shard_capacity(s, table_.num_shards());
    if (over > 0) evicted += evict_locked(s, over, {});
  }
  return evicted;
}

}  // namespace sparsecore
