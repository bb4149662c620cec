#include "sparsecore/ops/batch_planner.h"

#include <algorithm>

#include "sparsecore/core/thread_pool.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {

void plan_batch(const std::vector<GroupInput>& inputs, const std::vector<int>& shards, PreparedBatch& batch,
                const ResolveShard& resolve) {
  const int num_groups = static_cast<int>(inputs.size());
  // Reused by the next plan on this thread. The pool's threads reach it through the
  // reference (a thread_local named inside the lambdas would be each worker's own).
  thread_local std::vector<ShardedDedup> tls_dedup;
  std::vector<ShardedDedup>& dedup = tls_dedup;
  if (dedup.size() < static_cast<size_t>(num_groups)) dedup.resize(num_groups);

  // Phase 1, per group: copy the bag layout, hash the ids, group positions by shard.
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const GroupInput& in = inputs[gi];
      PreparedGroup& g = batch.groups[gi];
      g.num_ids = in.num_ids;
      g.batch_size = in.batch_size;
      g.max_len = 0;
      g.offsets.assign(in.offsets, in.offsets + in.batch_size + 1);
      if (in.weights)
        g.weights.assign(in.weights, in.weights + in.num_ids);
      else
        g.weights.clear();
      for (int64_t b = 0; b < in.batch_size; ++b) g.max_len = std::max(g.max_len, g.offsets[b + 1] - g.offsets[b]);
      dedup[gi].group(in.ids, in.num_ids, shards[gi]);
      g.unique_keys.resize(in.num_ids);  // compacted in phase 3; a shard's uniques fit in its positions
      g.unique_rows.resize(in.num_ids);
    }
  });

  // Phase 2, per (group, shard): dedup the shard's positions, then resolve their rows. Unique
  // ids of shard s are written at the shard's first position.
  struct Task {
    int group;
    int shard;
  };
  std::vector<Task> tasks;
  for (int gi = 0; gi < num_groups; ++gi) {
    const ShardedDedup& d = dedup[gi];
    for (int sh = 0; sh < d.num_shards(); ++sh)
      if (d.shard_end(sh) > d.shard_begin(sh)) tasks.push_back({gi, sh});
  }
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    thread_local DedupSet tls_set;
    DedupSet& set = tls_set;  // resolved once, not on every probe
    for (int64_t t = t0; t < t1; ++t) {
      const int gi = tasks[t].group, sh = tasks[t].shard;
      PreparedGroup& g = batch.groups[gi];
      ShardedDedup& d = dedup[gi];
      const int64_t count = d.dedup_shard(inputs[gi].ids, sh, set, g.unique_keys.data());
      const int64_t begin = d.shard_begin(sh);
      if (resolve) resolve(gi, sh, g.unique_keys.data() + begin, count, g.unique_rows.data() + begin);
    }
  });

  // Phase 3, per group: compact the per-shard uniques and resolve inverse indices (what
  // backward needs beyond that is built by its first call: build_occurrences).
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      PreparedGroup& g = batch.groups[gi];
      g.inverse.resize(g.num_ids);
      const int64_t u = dedup[gi].compact(g.unique_keys.data(), g.unique_rows.data(), g.inverse.data());
      g.unique_keys.resize(u);
      g.unique_rows.resize(u);
      const int shards = dedup[gi].num_shards();
      g.shard_starts.assign(static_cast<size_t>(shards) + 1, 0);
      for (int s = 0; s < shards; ++s) g.shard_starts[s + 1] = g.shard_starts[s] + dedup[gi].shard_unique(s);
    }
  });
}

void build_occurrences(const PreparedGroup& g) {
  const int64_t u_count = g.num_unique();
  g.occurrence_offsets.assign(u_count + 1, 0);
  for (int64_t pos = 0; pos < g.num_ids; ++pos) ++g.occurrence_offsets[g.inverse[pos] + 1];
  for (int64_t u = 0; u < u_count; ++u) g.occurrence_offsets[u + 1] += g.occurrence_offsets[u];
  std::vector<int32_t> cursor(g.occurrence_offsets.begin(), g.occurrence_offsets.end() - 1);
  g.occurrence_positions.resize(g.num_ids);
  for (int64_t pos = 0; pos < g.num_ids; ++pos)
    g.occurrence_positions[cursor[g.inverse[pos]]++] = static_cast<int32_t>(pos);
  g.bag_of_position.resize(g.num_ids);
  for (int64_t b = 0; b < g.batch_size; ++b)
    std::fill(g.bag_of_position.begin() + g.offsets[b], g.bag_of_position.begin() + g.offsets[b + 1],
              static_cast<int32_t>(b));
}

}  // namespace sparsecore
