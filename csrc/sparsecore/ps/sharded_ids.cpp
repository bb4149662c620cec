#include "sparsecore/ps/sharded_ids.h"

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/ps/ps_protocol.h"

namespace sparsecore::ps {

void ShardedIds::build(const int64_t* ids, int64_t n, int total_shards) {
  SC_CHECK_ARG(n >= 0 && n < (int64_t{1} << 31), "number of ids must be in [0, 2^31), got ", n);
  // Load at most 1/8 while the slots fit in L1 (32 KiB), else 1/4: the probe loop's cost is
  // its mispredicted exits, and halving the load halves the probes that run on (the KV
  // results in bench/results/kv.md were measured with these loads).
  size_t cap = 16;
  const size_t spread = static_cast<size_t>(n) <= 1024 ? 8 : 4;
  while (cap < static_cast<size_t>(n) * spread) cap <<= 1;
  const uint64_t mask = cap - 1;
  slots_.assign(cap, -1);
  unique.resize(static_cast<size_t>(n));
  shard_of_.resize(static_cast<size_t>(n));
  inverse.resize(static_cast<size_t>(n));
  starts.assign(static_cast<size_t>(total_shards) + 1, 0);
  int32_t* slots = slots_.data();
  int64_t* uniq = unique.data();
  int32_t num_unique = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = ids[i];
    const uint64_t h = key_hash(key);
    uint64_t slot = h & mask;
    int32_t u;
    while ((u = slots[slot]) >= 0 && uniq[u] != key) slot = (slot + 1) & mask;
    if (u < 0) {  // first sighting
      u = num_unique++;
      slots[slot] = u;
      uniq[u] = key;
      int g =
          total_shards == 1 ? 0 : global_shard_of_bucket(static_cast<uint32_t>(h >> (64 - kBucketBits)), total_shards);
      shard_of_[static_cast<size_t>(u)] = static_cast<uint16_t>(g);
      ++starts[static_cast<size_t>(g) + 1];
    }
    inverse[static_cast<size_t>(i)] = u;
  }
  unique.resize(static_cast<size_t>(num_unique));
  for (int g = 0; g < total_shards; ++g) starts[static_cast<size_t>(g) + 1] += starts[static_cast<size_t>(g)];
  grouped.clear();
  position.clear();
  if (total_shards == 1) return;  // one shard: unique order is the grouped order
  grouped.resize(unique.size());
  position.resize(unique.size());
  std::vector<int64_t> cursor(starts.begin(), starts.end() - 1);
  for (size_t u = 0; u < unique.size(); ++u) {
    int64_t at = cursor[shard_of_[u]]++;
    grouped[static_cast<size_t>(at)] = unique[u];
    position[u] = static_cast<int32_t>(at);
  }
}

}  // namespace sparsecore::ps
