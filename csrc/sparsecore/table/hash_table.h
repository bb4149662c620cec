// HashTable: a concurrent map from int64 keys to fixed-size row records.
//
// Layout. The key space is split into 2^shard_bits shards by the top bits of fmix64(key)
// (the same hash keys route to buckets with, so a shard is a contiguous bucket range).
// Each shard is an open-addressing index (linear probing over 8-byte slots {fingerprint
// uint32, row id uint32}) in front of a RowArena whose records never move. A record is the
// key (int64, owned by the table) followed by the caller's row; callers see only the row.
// A slot's fingerprint is the high 32 bits of the key's hash, which pick neither the home
// slot (the low 32 bits: the high half of their product with the capacity) nor, beyond the
// top shard_bits, the shard. A probe compares fingerprints only and reads the key from the
// record it finds, the record the caller reads next anyway, so a present key costs one
// dependent miss once its slot was prefetched: the batched probes (find_batch,
// lookup_batch, the evaluation kernels) prefetch slots far ahead, start the record load on
// a fingerprint match (candidate) and compare the key when the record has arrived (confirm).
// The index has any capacity, not only powers of two; it grows by half when the load would
// pass 4/5, so the load stays in [0.53, 0.8] and the index costs 10-15 bytes a row. Growth
// rehashes from the keys in the records (rows never move).
//
// Keys. Every int64 is a legal key: a slot is empty when its row id is kNoRow (no record has
// that id), whatever its fingerprint.
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
#include <cstring>
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
  static constexpr uint32_t kNoRow = std::numeric_limits<uint32_t>::max();
  static constexpr int kMaxShardBits = kBucketBits;
  // Bytes of the key in front of each row in its record.
  static constexpr size_t kKeyBytes = sizeof(int64_t);

  // Called once for each newly inserted row, under the shard's lock: fill `row` (row_bytes).
  using RowInit = std::function<void(int64_t key, std::byte* row)>;

  class Shard {
   public:
    static constexpr size_t kSlotBytes = 8;

    // pool: record chunks (kKeyBytes + row_bytes a record), shared by the shards of one table.
    Shard(size_t row_bytes, std::shared_ptr<ChunkPool> pool);

    // All of these require the caller to hold the shard's lock (read_lock for find, write_lock
    // otherwise).
    // Inline: the hot loops of evaluation pooling probe one key at a time.
    std::byte* find(int64_t key, uint64_t hash) const {
      const uint32_t tag = fingerprint(hash);
      for (uint64_t slot = home(hash);; slot = next(slot)) {
        const Slot s = slots_[slot];
        if (s.row == kNoRow) return nullptr;
        if (s.tag == tag && key_of(s.row) == key) return row_of(s.row);
      }
    }
    // find in two stages, for loops that run many probes interleaved. candidate() reads only
    // the slots (prefetch() them first): the record of the first slot from the home of `hash`
    // with its fingerprint, or nullptr when an empty slot comes first (the key is absent).
    // The caller prefetches the record (the key, then the row: kKeyBytes + what it reads) and
    // later hands it to confirm(), which compares the key in it and returns the row (nullptr:
    // absent); after a fingerprint collision it probes again from the home slot.
    std::byte* candidate(uint64_t hash) const {
      const uint32_t tag = fingerprint(hash);
      for (uint64_t slot = home(hash);; slot = next(slot)) {
        const Slot s = slots_[slot];
        if (s.row == kNoRow) return nullptr;
        if (s.tag == tag) return arena_.row(s.row);
      }
    }
    std::byte* confirm(int64_t key, uint64_t hash, const std::byte* record) const {
      if (record == nullptr) return nullptr;
      if (load_key(record) == key) return const_cast<std::byte*>(record) + kKeyBytes;
      return find(key, hash);
    }
    // Returns the row and whether it was inserted (then `init` has run on it).
    std::byte* find_or_insert(int64_t key, uint64_t hash, const RowInit& init, bool* inserted);
    // Batched probes of `count` keys of this shard: rows (count) receives each key's row
    // (nullptr: absent). A key's slots are prefetched 2 * kProbeAhead keys before its
    // confirm and its record kProbeAhead keys before, so the cache misses of an index and
    // rows far larger than L2 overlap. Caller holds read_lock(). Returns how many keys are
    // absent.
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
    // Hint: the slots where a probe for `hash` starts (prefetch ahead of find/candidate/
    // find_or_insert). Both lines when the probe's first three slots cross one.
    void prefetch(uint64_t hash) const {
      const uintptr_t p = reinterpret_cast<uintptr_t>(slots_.data() + home(hash));
      __builtin_prefetch(reinterpret_cast<const void*>(p));
      __builtin_prefetch(reinterpret_cast<const void*>(p + 3 * sizeof(Slot) - 1));
    }
    // Visits every (key, row) of the shard in index order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
      for_each_in_slots(0, capacity_, fn);
    }

    // Slots of the index (entries move only when the shard grows or a key is erased).
    uint64_t slot_count() const { return capacity_; }
    bool slot_used(uint64_t slot) const { return slots_[slot].row != kNoRow; }
    // Visits the (key, row) of slots [begin, end) of the index, in slot order. The keys are
    // read from the records, kVisitAhead slots ahead of the visit.
    template <typename Fn>
    void for_each_in_slots(uint64_t begin, uint64_t end, Fn&& fn) const {
      end = end < capacity_ ? end : capacity_;
      for (uint64_t i = begin; i < end; ++i) {
        if (i + kVisitAhead < end && slots_[i + kVisitAhead].row != kNoRow)
          __builtin_prefetch(arena_.row(slots_[i + kVisitAhead].row));
        const uint32_t id = slots_[i].row;
        if (id != kNoRow) fn(key_of(id), row_of(id));
      }
    }

    // The shard's reader-writer lock: read_lock() (shared) for find and find_batch,
    // write_lock() (exclusive) for everything that changes the shard.
    [[nodiscard]] std::shared_lock<std::shared_mutex> read_lock() const { return std::shared_lock(mutex_); }
    [[nodiscard]] std::unique_lock<std::shared_mutex> write_lock() const { return std::unique_lock(mutex_); }

   private:
    friend class HashTable;  // SharedLockAll and the table-wide calls take every shard's lock
    mutable std::shared_mutex mutex_;
    static constexpr uint64_t kVisitAhead = 8;

    uint64_t home(uint64_t hash) const {
      return static_cast<uint64_t>((static_cast<unsigned __int128>(static_cast<uint32_t>(hash)) * capacity_) >> 32);
    }
    static uint32_t fingerprint(uint64_t hash) { return static_cast<uint32_t>(hash >> 32); }
    uint64_t next(uint64_t slot) const { return slot + 1 == capacity_ ? 0 : slot + 1; }
    static bool over_load(size_t rows, size_t capacity) { return rows * 5 > capacity * 4; }
    static int64_t load_key(const std::byte* record) {
      int64_t key;
      std::memcpy(&key, record, sizeof(key));
      return key;
    }
    int64_t key_of(uint32_t id) const { return load_key(arena_.row(id)); }
    std::byte* row_of(uint32_t id) const { return arena_.row(id) + kKeyBytes; }
    void grow(size_t new_capacity);
    uint32_t allocate_row(int64_t key, const RowInit& init);

    // 8 bytes a slot: a probe's first slots share one cache line; empty: row == kNoRow.
    struct Slot {
      uint32_t tag;  // fingerprint(hash of the key)
      uint32_t row;  // the record's id in arena_
    };
    static_assert(sizeof(Slot) == kSlotBytes);
    // Past 2 MiB the index lives on huge pages too (its probes are as random as the rows').
    std::vector<Slot, HugePageAllocator<Slot>> slots_;
    size_t size_ = 0;
    uint64_t capacity_ = 0;  // slots_.size(), < 2^32
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

  // row_bytes: size of one row (the caller's part of a record); shard_bits in [0, 16].
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
  // each found row are prefetched with its key, as soon as its slot is read, for a caller
  // that reads them next.
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
