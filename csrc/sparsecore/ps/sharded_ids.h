// ShardedIds: the ids of one call deduplicated and grouped by the global shard that owns them
// (ps_protocol.h), through the library's one dedup primitive (table/sharded_dedup.h). The
// client uses it to send each id once to its shard.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore::ps {

struct ShardedIds {
  PodVector<int64_t> unique;    // (num_unique) grouped by shard, first-seen order within a shard
  PodVector<int32_t> inverse;   // (n) index into unique
  std::vector<int64_t> starts;  // (total_shards + 1) shard g owns unique[starts[g], starts[g+1])

  // ids (n, n < 2^31) any values, duplicates allowed.
  void build(const int64_t* ids, int64_t n, int total_shards);
  int64_t num_unique() const { return static_cast<int64_t>(unique.size()); }
  const int64_t* shard_ids(int g) const { return unique.data() + starts[g]; }
  int64_t shard_size(int g) const { return starts[g + 1] - starts[g]; }
  // Whether the n ids given to build were distinct and already grouped by shard (then
  // unique equals them and shard g's part is ids[starts[g], starts[g + 1])).
  bool in_given_order(int64_t n) const;
  // Takes the shard starts of ids that the caller grouped already (no hashing, no copy):
  // unique stays empty and the ids are read from the caller's array.
  void adopt(const int64_t* shard_starts, int total_shards);

 private:
  ShardedDedup dedup_;
};

}  // namespace sparsecore::ps
