// DeletedKeysLog: the keys removed from one EmbeddingTable and the step stamp of each removal,
// so that an incremental export (serving/export.h) can tell consumers which keys to delete.
//
// Contract:
//  - record(key, stamp) is called by the one removal path (EmbeddingTable::erase) for every
//    key it removed; forget(key) by the one insert path (EmbeddingTable::init_row): a key that
//    is present again is no longer deleted (its row travels in the next delta instead).
//  - deleted_since(since) lists the keys whose removal is stamped > since. The log is bounded:
//    past its capacity the oldest half of the entries is dropped and floor() rises to the
//    newest stamp dropped; a query with since < floor() would miss removals and throws
//    InvalidArgument telling the caller to take a full export. reset(floor) empties the log
//    (a clear or a restore, whose removals were never recorded) with that floor.
//
// Thread-safety: every call may run concurrently with any other; entries live in stripes by
// key hash, each under its own mutex, so inserts on many threads do not contend. The common
// case (nothing deleted) costs one relaxed atomic load per insert.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "sparsecore/table/key_map.h"

namespace sparsecore {

class DeletedKeysLog {
 public:
  static constexpr size_t kDefaultCapacity = size_t{1} << 20;

  explicit DeletedKeysLog(size_t capacity = kDefaultCapacity);

  void record(int64_t key, int64_t stamp);
  void forget(int64_t key) {
    if (entries_.load(std::memory_order_relaxed) != 0) forget_slow(key);
  }
  // Keys removed with a stamp > since, ascending. `table` names the table in the error.
  std::vector<int64_t> deleted_since(int64_t since, const std::string& table) const;
  // Every (key, stamp) held, ascending by key: a copy of the log for another table that
  // takes this one's rows (the device store's CPU twin).
  std::vector<std::pair<int64_t, int64_t>> entries() const;
  // Removals stamped <= floor() may have been dropped.
  int64_t floor() const { return floor_.load(std::memory_order_acquire); }
  void reset(int64_t floor);
  // Entries kept at most (>= 1); shrinking compacts at the next record.
  void set_capacity(size_t capacity);
  size_t capacity() const { return capacity_.load(std::memory_order_relaxed); }
  size_t size() const { return entries_.load(std::memory_order_relaxed); }

 private:
  static constexpr int kStripes = 16;
  struct Stripe {
    std::mutex mutex;
    KeyMap<int64_t> stamps;  // key -> stamp of its removal
  };
  Stripe& stripe_of(int64_t key) const;
  void forget_slow(int64_t key);
  // Drops the older half of `s` (its mutex held) and raises the floor.
  void compact(Stripe& s);

  std::unique_ptr<Stripe[]> stripes_;
  std::atomic<size_t> entries_{0};
  std::atomic<size_t> capacity_;
  std::atomic<int64_t> floor_{0};
};

}  // namespace sparsecore
