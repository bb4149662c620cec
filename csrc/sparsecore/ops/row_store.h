// RowStore: where an EmbeddingCollection's rows live. The collection plans a batch (validate,
// dedup by shard, inverse, occurrence lists), pools and sums gradients itself; a store only
// reads and writes rows:
//   local  (ops/local_row_store.h)   the collection's own EmbeddingTables: rows resolved
//                                    (found, or inserted when training) at prepare, the fused
//                                    update applied in place at backward;
//   remote (ps/remote_row_store.h)   parameter servers: prepare only plans, the unique rows of
//                                    every group are pulled into the batch when its pooled
//                                    rows are first needed, backward pushes each unique id's
//                                    summed gradient.
// Pooling, the segment sum, mean scaling and sequence padding are the collection's, once, for
// every store: the stores give the same results bit for bit.
//
// Thread-safety: a store is called by its collection only, under the collection's rules
// (batch calls concurrently; see embedding_collection.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore {

struct PreparedBatch;

class RowStore {
 public:
  virtual ~RowStore() = default;

  // The number of shards (1 .. 2^16) a plan groups table `table`'s ids by
  // (core/hash.h shard_of_hash): the rows of one shard are resolved together.
  virtual int plan_shards(int table) const = 0;

  // Prepare, once per (group, shard) with distinct ids, possibly on several threads at once
  // for distinct (table, shard): keys (count) host, all of shard `shard`; rows (count)
  // receives each key's row, or nullptr when absent and !train or not admitted (such an id then
  // reads the table's default row when pooled). A store that reads rows only when they are
  // pooled leaves rows untouched.
  virtual void resolve_shard(int table, int shard, const int64_t* keys, int64_t count, std::byte** rows,
                             bool train) = 0;

  // Forward: the row of each unique id of each group (rows[g] has num_unique entries, valid
  // while `batch` lives) and their storage. `refreshed` is scratch owned by the caller that
  // may hold the pointers.
  virtual void rows_for_pooling(const PreparedBatch& batch, std::vector<const std::byte* const*>& rows,
                                std::vector<RowStorage>& storage, std::vector<PodVector<std::byte*>>& refreshed) = 0;

  // Backward, once every gradient was checked finite and the batch's occurrence lists are
  // built: applies the gradients of every group's unique ids (bag_scale[g] has one factor per
  // bag, see kernels::backward_update) and advances `step`. Returns the new step. All or
  // nothing where the store can undo (local); InvalidArgument names what was wrong.
  virtual int64_t apply_gradients(const PreparedBatch& batch, const std::vector<const float*>& grads,
                                  const std::vector<std::vector<float>>& bag_scale, std::atomic<int64_t>& step) = 0;
};

}  // namespace sparsecore
