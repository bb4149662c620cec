// The batch planner: what every row store's prepare shares. For each group it copies the bag
// layout, dedups the ids by shard with the one dedup primitive (table/sharded_dedup.h), and
// hands each shard's distinct ids to the store while they are in the cache. With at least as
// many groups as pool threads each group is one task (ShardedDedup::run_distinct_first: the
// ids deduplicated in position order, then the distinct ids grouped by shard); with fewer,
// the phases by shard spread one group's shards over the threads (hash once, group positions
// by shard, dedup per shard, inverse). Both give the same plan. The occurrence lists backward
// needs are built later, once, by build_occurrences.
//
// Thread-safety: plan_batch runs its phases on the thread pool; `resolve` is called
// concurrently for distinct (group, shard). Internal to the ops layer.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore {

// Called once per (group, shard) that holds ids: keys (count) the shard's distinct ids, rows
// (count) the matching entries of the group's unique_rows, to fill or leave.
using ResolveShard = std::function<void(int group, int shard, const int64_t* keys, int64_t count, std::byte** rows)>;

// Fills every group of `batch` (already sized to inputs.size(), with table, dim and pooling
// set) from validated `inputs`: offsets, weights, max_len, num_ids, batch_size, unique_keys
// (grouped by shard: shards[g] of them, core/hash.h shard_of_hash), unique_rows (as resolve
// left them) and inverse.
void plan_batch(const std::vector<GroupInput>& inputs, const std::vector<int>& shards, PreparedBatch& batch,
                const ResolveShard& resolve);

}  // namespace sparsecore
