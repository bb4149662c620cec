#include "sparsecore/ps/sharded_ids.h"

#include "sparsecore/core/error.h"

namespace sparsecore::ps {

void ShardedIds::build(const int64_t* ids, int64_t n, int total_shards) {
  SC_CHECK_ARG(n >= 0 && n < (int64_t{1} << 31), "number of ids must be in [0, 2^31), got ", n);
  unique.resize(static_cast<size_t>(n));
  inverse.resize(static_cast<size_t>(n));
  // The primitive's shard rule, (bucket * shards) >> 16, is global_shard_of_bucket.
  const int64_t u = dedup_.run(ids, n, total_shards, unique.data(), inverse.data());
  unique.resize(static_cast<size_t>(u));
  starts.assign(static_cast<size_t>(total_shards) + 1, 0);
  for (int g = 0; g < total_shards; ++g)
    starts[static_cast<size_t>(g) + 1] = starts[static_cast<size_t>(g)] + dedup_.shard_unique(g);
}

void ShardedIds::adopt(const int64_t* shard_starts, int total_shards) {
  unique.clear();
  inverse.clear();
  starts.assign(shard_starts, shard_starts + total_shards + 1);
}

bool ShardedIds::in_given_order(int64_t n) const {
  if (num_unique() != n) return false;
  for (int64_t i = 0; i < n; ++i)
    if (inverse[static_cast<size_t>(i)] != i) return false;
  return true;
}

}  // namespace sparsecore::ps
