// ShardedIds: the ids of one call deduplicated (first-seen order) and grouped by the global
// shard that owns them (ps_protocol.h). The client uses it to send each id once to its shard;
// a shard uses it to check that an update names each id once.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsecore/core/pod_vector.h"

namespace sparsecore::ps {

// Ids of one call deduplicated (first-seen order) and grouped by owning shard (stable).
struct ShardedIds {
  PodVector<int64_t> unique;    // (num_unique)
  PodVector<int32_t> inverse;   // (n) index into unique
  PodVector<int64_t> grouped;   // (num_unique) unique ids ordered by shard; empty with one shard
  PodVector<int32_t> position;  // (num_unique) index of unique[u] in grouped
  std::vector<int64_t> starts;  // (total_shards + 1) shard g owns grouped[starts[g], starts[g+1])

  void build(const int64_t* ids, int64_t n, int total_shards);
  int64_t num_unique() const { return static_cast<int64_t>(unique.size()); }
  const int64_t* shard_ids(int g) const { return (grouped.empty() ? unique.data() : grouped.data()) + starts[g]; }
  int64_t shard_size(int g) const { return starts[g + 1] - starts[g]; }
  // Index of unique id u among the grouped rows.
  int32_t row_of(int32_t u) const { return grouped.empty() ? u : position[u]; }

 private:
  PodVector<int32_t> slots_;      // index into unique, -1 empty (power-of-two size >= 2n)
  PodVector<uint16_t> shard_of_;  // (num_unique)
};

}  // namespace sparsecore::ps
