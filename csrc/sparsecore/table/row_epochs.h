// RowEpochs: when a retired row may be reused without stopping anyone.
//
// Rows that eviction and incremental expiry remove while training runs are retired, not
// freed (hash_table.h): a call that looked them up before may still read and write them. A
// retirement is stamped with the process-wide clock now(), read after the row left its shard
// (under the shard's lock). Every holder of row pointers (a prepared batch for its lifetime,
// a call that looks rows up for its duration) enters before its first lookup, which advances
// the clock, and leaves when it holds no pointer any more. A row retired at stamp r can then
// be held only by a holder that entered at epoch e <= r: a holder with e > r advanced the
// clock after the stamp was read, so each of its lookups took the shard's lock after the row
// had left and could not find it. So the rows retired at a stamp < oldest() are held by no
// one and go back to their shards while training goes on, shard by shard, with no
// collection-wide wait and no change of the tables' generation (nobody must look rows up
// again).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace sparsecore {

class RowEpochs {
 public:
  // The stamp of a retirement made now (after the row left its shard).
  static uint64_t now() { return clock().load(std::memory_order_seq_cst); }
  // A holder of row pointers begins (before its first lookup); returns its epoch, for leave().
  uint64_t enter();
  void leave(uint64_t epoch);
  // Rows retired with a stamp < oldest() are held by none of this registry's holders.
  uint64_t oldest() const;
  // Holders registered now.
  size_t holders() const;

  // enter() / leave() for the scope of a call.
  class Hold {
   public:
    explicit Hold(RowEpochs& epochs) : epochs_(epochs), epoch_(epochs.enter()) {}
    ~Hold() { epochs_.leave(epoch_); }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    RowEpochs& epochs_;
    uint64_t epoch_;
  };

 private:
  static std::atomic<uint64_t>& clock();
  mutable std::mutex mutex_;
  std::vector<uint64_t> live_;  // epochs of the holders now (a few: the batches in flight)
};

}  // namespace sparsecore
