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

// Visits keys[0, n) in order, prefetch(hash) running kAhead keys ahead of visit(i, hash).
// Each key is hashed once: its hash waits in a ring between the two.
template <int64_t kAhead, class Prefetch, class Visit>
inline void hashed_ahead(const int64_t* keys, int64_t n, Prefetch&& prefetch, Visit&& visit) {
  uint64_t ring[kAhead];
  const int64_t head = std::min(n, kAhead);
  for (int64_t i = 0; i < head; ++i) {
    ring[i] = key_hash(keys[i]);
    prefetch(ring[i]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t hash = ring[i % kAhead];
    if (i + kAhead < n) {
      const uint64_t ahead = key_hash(keys[i + kAhead]);
      ring[i % kAhead] = ahead;
      prefetch(ahead);
    }
    visit(i, hash);
  }
}

}  // namespace

HashTable::Shard::Shard(size_t row_bytes, std::shared_ptr<ChunkPool> pool) : arena_(row_bytes, std::move(pool)) {
  grow(kMinCapacity);
}

void HashTable::Shard::grow(size_t new_capacity) {
  std::vector<Slot, HugePageAllocator<Slot>> old(new_capacity, Slot{kEmptyKey, kNoRow});
  SC_CHECK(new_capacity < (uint64_t{1} << 32), Error, "hash index of one shard is full (2^32 slots)");
  old.swap(slots_);
  capacity_ = new_capacity;
  for (const Slot& s : old) {
    if (s.key == kEmptyKey) continue;
    uint64_t slot = home(key_hash(s.key));
    while (slots_[slot].key != kEmptyKey) slot = next(slot);
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
  try {
    init(key, arena_.row(id));
  } catch (...) {
    arena_.release(id);
    throw;
  }
  return id;
}

std::byte* HashTable::Shard::find_or_insert(int64_t key, uint64_t hash, const RowInit& init, bool* inserted) {
  *inserted = false;
  if (key == kEmptyKey) {
    if (special_row_ == kNoRow) {
      special_row_ = allocate_row(key, init);
      ++size_;
      *inserted = true;
    }
    return arena_.row(special_row_);
  }
  uint64_t slot = home(hash);
  for (;;) {
    int64_t k = slots_[slot].key;
    if (k == key) return arena_.row(slots_[slot].row);
    if (k == kEmptyKey) break;
    slot = next(slot);
  }
  if (over_load(size_ + 1, capacity_)) {
    grow(capacity_ + capacity_ / 2);
    slot = home(hash);
    while (slots_[slot].key != kEmptyKey) slot = next(slot);
  }
  uint32_t id = allocate_row(key, init);
  slots_[slot].key = key;
  slots_[slot].row = id;
  ++size_;
  *inserted = true;
  return arena_.row(id);
}

int64_t HashTable::Shard::find_batch(const int64_t* keys, int64_t count, std::byte** rows) const {
  int64_t absent = 0;
  hashed_ahead<kProbeAhead>(
      keys, count, [&](uint64_t hash) { prefetch(hash); },
      [&](int64_t j, uint64_t hash) {
        rows[j] = find(keys[j], hash);
        absent += rows[j] == nullptr;
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
  std::memcpy(dst, row, arena_.row_bytes());
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
  auto release = [&](uint32_t id) {
    if (retire)
      retired_.push_back(id);
    else
      arena_.release(id);
  };
  if (key == kEmptyKey) {
    if (special_row_ == kNoRow) return false;
    release(special_row_);
    special_row_ = kNoRow;
    --size_;
    return true;
  }
  uint64_t slot = home(hash);
  for (;;) {
    int64_t k = slots_[slot].key;
    if (k == kEmptyKey) return false;
    if (k == key) break;
    slot = next(slot);
  }
  release(slots_[slot].row);
  --size_;
  // Backward-shift deletion: pull later members of the probe run into the hole while their
  // home slot does not lie cyclically in (hole, j].
  uint64_t hole = slot;
  uint64_t j = slot;
  for (;;) {
    j = next(j);
    int64_t kj = slots_[j].key;
    if (kj == kEmptyKey) break;
    uint64_t h = home(key_hash(kj));
    bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
    if (stays) continue;
    slots_[hole].key = kj;
    slots_[hole].row = slots_[j].row;
    hole = j;
  }
  slots_[hole].key = kEmptyKey;
  slots_[hole].row = kNoRow;
  return true;
}

void HashTable::Shard::clear() {
  slots_.assign(kMinCapacity, Slot{kEmptyKey, kNoRow});
  slots_.shrink_to_fit();
  capacity_ = kMinCapacity;
  special_row_ = kNoRow;
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
  pool_ = std::make_shared<ChunkPool>(RowArena::kChunkRows * row_bytes);
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
    hashed_ahead<Shard::kProbeAhead>(
        keys, n, [&](uint64_t hash) { shards_[shard_of_hash(hash)]->prefetch(hash); },
        [&](int64_t i, uint64_t hash) {
          std::byte* row = shards_[shard_of_hash(hash)]->find(keys[i], hash);
          rows[i] = row;
          if (row == nullptr)
            ++absent;
          else if (prefetch_bytes)
            prefetch_lines(row, prefetch_bytes);
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
