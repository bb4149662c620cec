#include "sparsecore/table/hash_table.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>

#include "sparsecore/core/error.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {
namespace {

constexpr size_t kMinCapacity = 16;

// Every cache line of [p, p + bytes): a row at any offset spans one line more than its size
// suggests about as often as not.
inline void prefetch_lines(const std::byte* p, size_t bytes) {
  const uintptr_t last = reinterpret_cast<uintptr_t>(p) + bytes - 1;
  for (uintptr_t line = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; line <= last; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line));
}

// Probes keys[0, n) in order in three stages, each key's hash computed once: its slots are
// prefetched 2 * kAhead keys ahead, its candidate record read from them (and its first
// record_bytes prefetched) kAhead keys ahead, and done(i, row) gets the confirmed row (nullptr:
// absent). So of a present key's two misses (slot, record) only the record's is dependent,
// and both overlap with the probes of other keys. shard_of(hash) names the key's shard.
template <int64_t kAhead, class ShardOf, class Done>
inline void probe_pipelined(const int64_t* keys, int64_t n, ShardOf&& shard_of, size_t record_bytes, Done&& done) {
  constexpr int64_t kRing = 2 * kAhead;
  uint64_t hashes[kRing];
  std::byte* records[kRing];
  auto slots_ahead = [&](int64_t i) {
    const uint64_t h = key_hash(keys[i]);
    hashes[i % kRing] = h;
    shard_of(h).prefetch(h);
  };
  auto record_ahead = [&](int64_t i) {
    const uint64_t h = hashes[i % kRing];
    std::byte* r = shard_of(h).candidate(h);
    records[i % kRing] = r;
    if (r) prefetch_lines(r, record_bytes);
  };
  for (int64_t i = 0; i < std::min(n, kRing); ++i) slots_ahead(i);
  for (int64_t i = 0; i < std::min(n, kAhead); ++i) record_ahead(i);
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = hashes[i % kRing];
    done(i, shard_of(h).confirm(keys[i], h, records[i % kRing]));
    if (i + kAhead < n) record_ahead(i + kAhead);
    if (i + kRing < n) slots_ahead(i + kRing);
  }
}

}  // namespace

HashTable::Shard::Shard(size_t row_bytes, std::shared_ptr<ChunkPool> pool)
    : arena_(kKeyBytes + row_bytes, std::move(pool)) {
  grow(kMinCapacity);
}

void HashTable::Shard::grow(size_t new_capacity) {
  SC_CHECK(new_capacity < (uint64_t{1} << 32), Error, "hash index of one shard is full (2^32 slots)");
  std::vector<Slot, HugePageAllocator<Slot>> old(new_capacity, Slot{0, kNoRow});
  old.swap(slots_);
  capacity_ = new_capacity;
  // A slot keeps no bits of its key's home: each entry's key is read from its record, the
  // records prefetched a few entries ahead.
  constexpr size_t kAhead = 16;
  const size_t n = old.size();
  for (size_t i = 0; i < n; ++i) {
    if (i + kAhead < n && old[i + kAhead].row != kNoRow) __builtin_prefetch(arena_.row(old[i + kAhead].row));
    const Slot s = old[i];
    if (s.row == kNoRow) continue;
    uint64_t slot = home(key_hash(key_of(s.row)));
    while (slots_[slot].row != kNoRow) slot = next(slot);
    slots_[slot] = s;
  }
}

void HashTable::Shard::reserve(size_t rows) {
  size_t cap = slots_.size();
  while (over_load(rows, cap)) cap += cap / 2;
  if (cap != slots_.size()) grow(cap);
}

uint32_t HashTable::Shard::allocate_row(int64_t key, const RowInit& init) {
  uint32_t id = arena_.allocate();
  std::memcpy(arena_.row(id), &key, sizeof(key));
  try {
    init(key, row_of(id));
  } catch (...) {
    arena_.release(id);
    throw;
  }
  return id;
}

std::byte* HashTable::Shard::find_or_insert(int64_t key, uint64_t hash, const RowInit& init, bool* inserted) {
  *inserted = false;
  const uint32_t tag = fingerprint(hash);
  uint64_t slot = home(hash);
  for (;; slot = next(slot)) {
    const Slot s = slots_[slot];
    if (s.row == kNoRow) break;
    if (s.tag == tag && key_of(s.row) == key) return row_of(s.row);
  }
  if (over_load(size_ + 1, capacity_)) {
    grow(capacity_ + capacity_ / 2);
    slot = home(hash);
    while (slots_[slot].row != kNoRow) slot = next(slot);
  }
  const uint32_t id = allocate_row(key, init);
  slots_[slot] = Slot{tag, id};
  ++size_;
  *inserted = true;
  return row_of(id);
}

int64_t HashTable::Shard::find_batch(const int64_t* keys, int64_t count, std::byte** rows) const {
  int64_t absent = 0;
  probe_pipelined<kProbeAhead>(
      keys, count, [this](uint64_t) -> const Shard& { return *this; }, kKeyBytes,
      [&](int64_t j, std::byte* row) {
        rows[j] = row;
        absent += row == nullptr;
      });
  return absent;
}

void HashTable::Shard::insert_absent(const int64_t* keys, int64_t count, std::byte** rows, const RowInit& init) {
  for (int64_t j = 0; j < count; ++j) {
    if (rows[j]) continue;
    bool inserted = false;
    rows[j] = find_or_insert(keys[j], key_hash(keys[j]), init, &inserted);
  }
}

void HashTable::Shard::upsert_copy(int64_t key, uint64_t hash, const std::byte* row) {
  bool inserted = false;
  std::byte* dst = find_or_insert(
      key, hash, [](int64_t, std::byte*) {}, &inserted);
  std::memcpy(dst, row, arena_.row_bytes() - kKeyBytes);
}

void HashTable::Shard::seal_retired(uint64_t stamp) {
  const size_t sealed = retired_stamps_.empty() ? 0 : retired_stamps_.back().first;
  if (retired_.size() == sealed) return;
  if (!retired_stamps_.empty() && retired_stamps_.back().second == stamp)
    retired_stamps_.back().first = retired_.size();
  else
    retired_stamps_.emplace_back(retired_.size(), stamp);
}

size_t HashTable::Shard::release_retired(uint64_t before) {
  size_t n = retired_.size();
  size_t groups = retired_stamps_.size();
  if (before != std::numeric_limits<uint64_t>::max()) {
    // The stamps ascend: the releasable rows are a prefix.
    groups = 0;
    while (groups < retired_stamps_.size() && retired_stamps_[groups].second < before) ++groups;
    n = groups == 0 ? 0 : retired_stamps_[groups - 1].first;
  }
  if (n == 0) return 0;
  for (size_t i = 0; i < n; ++i) arena_.release(retired_[i]);
  retired_.erase(retired_.begin(), retired_.begin() + static_cast<std::ptrdiff_t>(n));
  retired_stamps_.erase(retired_stamps_.begin(), retired_stamps_.begin() + static_cast<std::ptrdiff_t>(groups));
  for (auto& g : retired_stamps_) g.first -= n;
  return n;
}

bool HashTable::Shard::erase(int64_t key, uint64_t hash, bool retire) {
  const uint32_t tag = fingerprint(hash);
  uint64_t slot = home(hash);
  for (;; slot = next(slot)) {
    const Slot s = slots_[slot];
    if (s.row == kNoRow) return false;
    if (s.tag == tag && key_of(s.row) == key) break;
  }
  if (retire)
    retired_.push_back(slots_[slot].row);
  else
    arena_.release(slots_[slot].row);
  --size_;
  // Backward-shift deletion: pull later members of the probe run into the hole while their
  // home slot does not lie cyclically in (hole, j]. Their homes come from the keys in their
  // records (released records keep their bytes until reused, and nothing is allocated here).
  uint64_t hole = slot;
  uint64_t j = slot;
  for (;;) {
    j = next(j);
    const Slot s = slots_[j];
    if (s.row == kNoRow) break;
    const uint64_t h = home(key_hash(key_of(s.row)));
    const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
    if (stays) continue;
    slots_[hole] = s;
    hole = j;
  }
  slots_[hole] = Slot{0, kNoRow};
  return true;
}

void HashTable::Shard::clear() {
  slots_.assign(kMinCapacity, Slot{0, kNoRow});
  slots_.shrink_to_fit();
  capacity_ = kMinCapacity;
  size_ = 0;
  retired_.clear();
  retired_stamps_.clear();
  arena_.clear();
}

size_t HashTable::Shard::memory_bytes() const { return slots_.capacity() * sizeof(Slot) + arena_.memory_bytes(); }

HashTable::HashTable(size_t row_bytes, int shard_bits) : row_bytes_(row_bytes), shard_bits_(shard_bits) {
  SC_CHECK_ARG(shard_bits >= 0 && shard_bits <= kMaxShardBits, "shard_bits must be in [0, ", kMaxShardBits, "], got ",
               shard_bits);
  SC_CHECK_ARG(row_bytes > 0, "row size must be positive");
  pool_ = std::make_shared<ChunkPool>(RowArena::kChunkRows * (kKeyBytes + row_bytes));
  shards_.reserve(size_t{1} << shard_bits);
  for (int s = 0; s < (1 << shard_bits); ++s) shards_.push_back(std::make_unique<Shard>(row_bytes, pool_));
}

void HashTable::find(const int64_t* keys, int64_t n, std::byte** rows) const {
  ShardedDedup grouped;  // its first phase only: each key hashed once, positions grouped by shard
  grouped.group(keys, n, num_shards());
  const int32_t* perm = grouped.perm();
  const uint64_t* hashes = grouped.hashes();
  parallel_for(num_shards(), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (grouped.shard_begin(s) == grouped.shard_end(s)) continue;
      const Shard& sh = *shards_[s];
      auto lock = sh.read_lock();
      for (int64_t p = grouped.shard_begin(s); p < grouped.shard_end(s); ++p) {
        int64_t i = perm[p];
        rows[i] = sh.find(keys[i], hashes[i]);
      }
    }
  });
}

void HashTable::find_or_insert(const int64_t* keys, int64_t n, std::byte** rows, const RowInit& init,
                               uint8_t* inserted) {
  ShardedDedup grouped;  // its first phase only: each key hashed once, positions grouped by shard
  grouped.group(keys, n, num_shards());
  const int32_t* perm = grouped.perm();
  const uint64_t* hashes = grouped.hashes();
  parallel_for(num_shards(), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (grouped.shard_begin(s) == grouped.shard_end(s)) continue;
      Shard& sh = *shards_[s];
      auto lock = sh.write_lock();
      for (int64_t p = grouped.shard_begin(s); p < grouped.shard_end(s); ++p) {
        int64_t i = perm[p];
        bool ins = false;
        rows[i] = sh.find_or_insert(keys[i], hashes[i], init, &ins);
        if (inserted) inserted[i] = ins ? 1 : 0;
      }
    }
  });
}

void HashTable::lookup_batch(const int64_t* keys, int64_t n, std::byte** rows, const RowInit* init,
                             size_t prefetch_bytes) {
  // One pass in the caller's order under every shard's shared lock, so that the prefetch
  // window runs across shards (a thousand keys over 64 shards is about 16 a shard, too few
  // to hide the misses one shard at a time) and nothing is regrouped.
  int64_t absent = 0;
  {
    SharedLockAll lock(*this);
    probe_pipelined<Shard::kProbeAhead>(
        keys, n, [this](uint64_t hash) -> const Shard& { return *shards_[shard_of_hash(hash)]; },
        kKeyBytes + prefetch_bytes,
        [&](int64_t i, std::byte* row) {
          rows[i] = row;
          absent += row == nullptr;
        });
  }
  if (!init || absent == 0) return;
  // Absent keys, inserted in the caller's order (duplicates get one row) under every
  // shard's unique lock, taken in shard order like SharedLockAll's.
  for (const auto& sh : shards_) sh->mutex_.lock();
  try {
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i]) continue;
      const uint64_t hash = key_hash(keys[i]);
      bool inserted = false;
      rows[i] = shards_[shard_of_hash(hash)]->find_or_insert(keys[i], hash, *init, &inserted);
    }
  } catch (...) {
    for (const auto& sh : shards_) sh->mutex_.unlock();
    throw;
  }
  for (const auto& sh : shards_) sh->mutex_.unlock();
}

int64_t HashTable::erase(const int64_t* keys, int64_t n) {
  ShardedDedup grouped;  // its first phase only: each key hashed once, positions grouped by shard
  grouped.group(keys, n, num_shards());
  const int32_t* perm = grouped.perm();
  const uint64_t* hashes = grouped.hashes();
  std::vector<int64_t> erased(num_shards(), 0);
  parallel_for(num_shards(), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      if (grouped.shard_begin(s) == grouped.shard_end(s)) continue;
      Shard& sh = *shards_[s];
      auto lock = sh.write_lock();
      for (int64_t p = grouped.shard_begin(s); p < grouped.shard_end(s); ++p) {
        int64_t i = perm[p];
        if (sh.erase(keys[i], hashes[i])) ++erased[s];
      }
    }
  });
  int64_t total = 0;
  for (int64_t e : erased) total += e;
  return total;
}

size_t HashTable::size() const {
  size_t total = 0;
  for (const auto& sh : shards_) {
    auto lock = sh->read_lock();
    total += sh->size();
  }
  return total;
}

size_t HashTable::memory_bytes() const {
  size_t total = 0;
  for (const auto& sh : shards_) {
    auto lock = sh->read_lock();
    total += sh->memory_bytes();
  }
  return total;
}

void HashTable::clear() {
  for (auto& sh : shards_) {
    auto lock = sh->write_lock();
    sh->clear();
  }
}

}  // namespace sparsecore
