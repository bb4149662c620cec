// HashTable: a concurrent map from int64 keys to fixed-size row records.
//
// Layout. The key space is split into 2^shard_bits shards by the top bits of fmix64(key)
// (the same hash keys route to buckets with, so a shard is a contiguous bucket range).
// Each shard is an open-addressing index (linear probing over packed {key int64, row id
// uint32} slots, 12 bytes each) in front of a RowArena whose rows never move. The index has
// any capacity, not only powers of two: a key's home slot is the high half of
// (low 32 bits of its hash) x capacity. It grows by half when the load would pass 4/5, so
// the load stays in [0.53, 0.8] and the index costs 15-23 bytes a row (a doubling index
// at <= 3/4 ranges over 16-32). Growth rehashes only (key, id) pairs.
//
// Keys. Every int64 is a legal key. The index marks empty slots with kEmptyKey; the one
// real key equal to it lives out of band in `Shard::special_row`.
//
// Erase uses backward-shift deletion, so the index never holds tombstones.
//
// Thread-safety. Each shard has a reader-writer lock. Batch calls are safe from many
// threads at once; a batch call takes each shard's lock once. Row *contents* are not
// protected: two threads updating the same row race (Hogwild-style), which the engine
// avoids within one call by updating each unique row from exactly one task.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "sparsecore/core/hash.h"
#include "sparsecore/table/huge_pages.h"
#include "sparsecore/table/row_arena.h"

namespace sparsecore {

class HashTable {
 public:
  static constexpr int64_t kEmptyKey = std::numeric_limits<int64_t>::min();
  static constexpr uint32_t kNoRow = std::numeric_limits<uint32_t>::max();
  static constexpr int kMaxShardBits = kBucketBits;

  // Called once for each newly inserted row, under the shard's lock: fill `row` (row_bytes).
  using RowInit = std::function<void(int64_t key, std::byte* row)>;

  class Shard {
   public:
    // pool: row chunks, shared by the shards of one table.
    Shard(size_t row_bytes, std::shared_ptr<ChunkPool> pool);

    // All of these require the caller to hold the shard's lock (read_lock for find, write_lock
    // otherwise).
    // Inline: the hot loops of evaluation pooling probe one key at a time.
    std::byte* find(int64_t key, uint64_t hash) const {
      if (key == kEmptyKey) return special_row_ == kNoRow ? nullptr : arena_.row(special_row_);
      uint64_t slot = home(hash);
      for (;;) {
        int64_t k = slots_[slot].key;
        if (k == key) return arena_.row(slots_[slot].row);
        if (k == kEmptyKey) return nullptr;
        slot = next(slot);
      }
    }
    // Returns the row and whether it was inserted (then `init` has run on it).
    std::byte* find_or_insert(int64_t key, uint64_t hash, const RowInit& init, bool* inserted);
    // Batched probes of `count` keys of this shard: rows (count) receives each key's row
    // (nullptr: absent). A key's home slot is prefetched kProbeAhead keys before its probe,
    // so the cache misses of an index far larger than L2 overlap. Caller holds read_lock().
    // Returns how many keys are absent.
    int64_t find_batch(const int64_t* keys, int64_t count, std::byte** rows) const;
    // Inserts the keys whose entry of `rows` is null (after find_batch) and fills those
    // entries; duplicates get one row. Caller holds write_lock().
    void insert_absent(const int64_t* keys, int64_t count, std::byte** rows, const RowInit& init);
    static constexpr int64_t kProbeAhead = 16;
    // Inserts or overwrites `key` with a copy of `row` (checkpoint restore).
    void upsert_copy(int64_t key, uint64_t hash, const std::byte* row);
    // retire: the row's record is kept (not reused) until release_retired(), so a caller
    // that still holds its pointer reads and writes memory no other key owns.
    bool erase(int64_t key, uint64_t hash, bool retire = false);
    // Stamps the rows retired since the last call (table/row_epochs.h); stamps never decrease.
    void seal_retired(uint64_t stamp);
    // Returns the records of the retired rows stamped < before (every retired row, stamped or
    // not, with the default) to the arena; returns how many.
    size_t release_retired(uint64_t before = std::numeric_limits<uint64_t>::max());
    size_t retired() const { return retired_.size(); }
    void clear();
    void reserve(size_t rows);
    size_t size() const { return size_; }
    size_t memory_bytes() const;
    // Hint: the slot where a probe for `hash` starts (prefetch ahead of find/find_or_insert).
    // Both lines when the probe's first slots cross one (a run of about three 12-byte slots
    // from the home slot, at load 0.5-0.8).
    void prefetch(uint64_t hash) const {
      const uintptr_t p = reinterpret_cast<uintptr_t>(slots_.data() + home(hash));
      __builtin_prefetch(reinterpret_cast<const void*>(p));
      __builtin_prefetch(reinterpret_cast<const void*>(p + 3 * sizeof(Slot) - 1));
    }
    // Visits every (key, row) of the shard in index order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
      if (special_row_ != kNoRow) fn(kEmptyKey, arena_.row(special_row_));
      for (const Slot& s : slots_)
        if (s.key != kEmptyKey) fn(s.key, arena_.row(s.row));
    }

    // Slots of the index (entries move only when the shard grows or a key is erased).
    uint64_t slot_count() const { return capacity_; }
    bool slot_used(uint64_t slot) const { return slots_[slot].key != kEmptyKey; }
    // Visits the (key, row) of slots [begin, end) of the index, and the out-of-band key
    // first when with_special.
    template <typename Fn>
    void for_each_in_slots(uint64_t begin, uint64_t end, bool with_special, Fn&& fn) const {
      if (with_special && special_row_ != kNoRow) fn(kEmptyKey, arena_.row(special_row_));
      for (uint64_t i = begin; i < end && i < capacity_; ++i)
        if (slots_[i].key != kEmptyKey) fn(slots_[i].key, arena_.row(slots_[i].row));
    }

    // The shard's reader-writer lock: read_lock() (shared) for find and find_batch,
    // write_lock() (exclusive) for everything that changes the shard.
    [[nodiscard]] std::shared_lock<std::shared_mutex> read_lock() const { return std::shared_lock(mutex_); }
    [[nodiscard]] std::unique_lock<std::shared_mutex> write_lock() const { return std::unique_lock(mutex_); }

   private:
    friend class HashTable;  // SharedLockAll and the table-wide calls take every shard's lock
    mutable std::shared_mutex mutex_;

    uint64_t home(uint64_t hash) const {
      return static_cast<uint64_t>((static_cast<unsigned __int128>(static_cast<uint32_t>(hash)) * capacity_) >> 32);
    }
    uint64_t next(uint64_t slot) const { return slot + 1 == capacity_ ? 0 : slot + 1; }
    static bool over_load(size_t rows, size_t capacity) { return rows * 5 > capacity * 4; }
    void grow(size_t new_capacity);
    uint32_t allocate_row(int64_t key, const RowInit& init);

    // 12 bytes a slot, key and row id together: a probe touches one cache line.
    struct __attribute__((packed)) Slot {
      int64_t key;
      uint32_t row;
    };
    // Past 2 MiB the index lives on huge pages too (its probes are as random as the rows').
    std::vector<Slot, HugePageAllocator<Slot>> slots_;
    size_t size_ = 0;        // including the out-of-band key
    uint64_t capacity_ = 0;  // slots_.size(), < 2^32
    uint32_t special_row_ = kNoRow;
    RowArena arena_;
    std::vector<uint32_t> retired_;  // erased with retire, not yet back in the arena
    // (end in retired_, stamp): retired_[previous end, end) carry `stamp`, ascending.
    std::vector<std::pair<size_t, uint64_t>> retired_stamps_;
  };

  // Holds every shard's lock shared (taken in shard order; writers hold one shard at a time,
  // so this cannot deadlock). For loops that probe keys of all shards interleaved.
  class SharedLockAll {
   public:
    explicit SharedLockAll(const HashTable& t) : table_(t) {
      for (const auto& sh : t.shards_) sh->mutex_.lock_shared();
    }
    ~SharedLockAll() {
      for (const auto& sh : table_.shards_) sh->mutex_.unlock_shared();
    }
    SharedLockAll(const SharedLockAll&) = delete;
    SharedLockAll& operator=(const SharedLockAll&) = delete;

   private:
    const HashTable& table_;
  };

  // row_bytes: size of one row record; shard_bits in [0, 16].
  HashTable(size_t row_bytes, int shard_bits);

  size_t row_bytes() const { return row_bytes_; }
  int shard_bits() const { return shard_bits_; }
  int num_shards() const { return 1 << shard_bits_; }
  int shard_of_hash(uint64_t hash) const { return shard_bits_ == 0 ? 0 : static_cast<int>(hash >> (64 - shard_bits_)); }
  Shard& shard(int s) { return *shards_[s]; }
  const Shard& shard(int s) const { return *shards_[s]; }

  // Batch calls: keys (n < 2^31) host; rows (n) host, receives row pointers (nullptr:
  // absent). Duplicate keys within a batch map to one row. Parallel over shards.
  void find(const int64_t* keys, int64_t n, std::byte** rows) const;
  // `inserted` (n, optional) receives 1 where the key was inserted by this call.
  void find_or_insert(const int64_t* keys, int64_t n, std::byte** rows, const RowInit& init,
                      uint8_t* inserted = nullptr);
  // find (init null) or find_or_insert (init set) on the calling thread alone: no pool task
  // and, once warm, no allocation. For a thread that owns its table's traffic (a
  // parameter-server shard answering batches of about a thousand keys), where a pool
  // hand-off costs more than the probes. `prefetch_bytes` > 0: the first prefetch_bytes of
  // each found row are prefetched as soon as its slot is read, for a caller that reads them
  // next.
  void lookup_batch(const int64_t* keys, int64_t n, std::byte** rows, const RowInit* init, size_t prefetch_bytes = 0);
  // Returns the number of keys that were present.
  int64_t erase(const int64_t* keys, int64_t n);

  size_t size() const;
  size_t memory_bytes() const;
  void clear();

 private:
  size_t row_bytes_;
  int shard_bits_;
  std::shared_ptr<ChunkPool> pool_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace sparsecore
