#include "sparsecore/ops/batch_planner.h"

#include <algorithm>
#include <memory>
#include <mutex>

#include "sparsecore/core/thread_pool.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {
namespace {

// A plan's scratch: each group's dedup state and set. Kept for the next plan in a process-wide
// free list rather than per thread: a training pipeline plans on a producer thread of its
// own, started anew by each fit(), and per-thread scratch would be allocated again (and its
// pages faulted in) every time. Plans running at once each take their own.
struct PlanScratch {
  std::vector<ShardedDedup> dedup;
  std::vector<DedupSet> sets;
};

class ScratchLease {
 public:
  ScratchLease() {
    std::lock_guard<std::mutex> lock(mutex());
    if (!free().empty()) {
      scratch_ = std::move(free().back());
      free().pop_back();
    } else {
      scratch_ = std::make_unique<PlanScratch>();
    }
  }
  ~ScratchLease() {
    std::lock_guard<std::mutex> lock(mutex());
    if (free().size() < kKept) free().push_back(std::move(scratch_));
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  PlanScratch& operator*() { return *scratch_; }

 private:
  static constexpr size_t kKept = 4;
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<PlanScratch>>& free() {
    static auto* list = new std::vector<std::unique_ptr<PlanScratch>>();  // outlives threads planning at exit
    return *list;
  }
  std::unique_ptr<PlanScratch> scratch_;
};

}  // namespace

void plan_batch(const std::vector<GroupInput>& inputs, const std::vector<int>& shards, PreparedBatch& batch,
                const ResolveShard& resolve) {
  const int num_groups = static_cast<int>(inputs.size());
  ScratchLease lease;
  std::vector<ShardedDedup>& dedup = (*lease).dedup;
  if (dedup.size() < static_cast<size_t>(num_groups)) dedup.resize(num_groups);

  auto copy_layout = [&](int64_t gi) {
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
    g.unique_keys.resize(in.num_ids);  // a shard's uniques fit in its positions
    g.unique_rows.resize(in.num_ids);
    g.inverse.resize(in.num_ids);
  };
  auto set_shard_starts = [&](PreparedGroup& g, const ShardedDedup& d) {
    const int n = d.num_shards();
    g.shard_starts.assign(static_cast<size_t>(n) + 1, 0);
    for (int s = 0; s < n; ++s) g.shard_starts[s + 1] = g.shard_starts[s] + d.shard_unique(s);
  };

  // With a group per thread or more, each group is planned whole by one task: its ids
  // deduplicated in position order, then only the distinct ids grouped by shard and resolved
  // (a batch's ids repeat, so this touches each position once instead of in three passes).
  // The result is the same either way.
  if (num_groups >= ThreadPool::global().num_threads()) {
    std::vector<DedupSet>& sets = (*lease).sets;
    if (sets.size() < static_cast<size_t>(num_groups)) sets.resize(num_groups);
    parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t gi = g0; gi < g1; ++gi) {
        copy_layout(gi);
        PreparedGroup& g = batch.groups[gi];
        ShardedDedup& d = dedup[gi];
        const int64_t u = d.run_distinct_first(inputs[gi].ids, g.num_ids, shards[gi], sets[gi], g.unique_keys.data(),
                                               g.inverse.data());
        g.unique_keys.resize(u);
        g.unique_rows.resize(u);
        set_shard_starts(g, d);
        if (!resolve) continue;
        for (int sh = 0; sh < d.num_shards(); ++sh) {
          const int64_t begin = g.shard_starts[sh], count = g.shard_starts[sh + 1] - begin;
          if (count > 0)
            resolve(static_cast<int>(gi), sh, g.unique_keys.data() + begin, count, g.unique_rows.data() + begin);
        }
      }
    });
    return;
  }

  // Phase 1, per group: copy the bag layout, hash the ids, group positions by shard.
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      copy_layout(gi);
      dedup[gi].group(inputs[gi].ids, inputs[gi].num_ids, shards[gi]);
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
      const int64_t u = dedup[gi].compact(g.unique_keys.data(), g.unique_rows.data(), g.inverse.data());
      g.unique_keys.resize(u);
      g.unique_rows.resize(u);
      set_shard_starts(g, dedup[gi]);
    }
  });
}

// Two halves of the positions are counted and placed side by side: in a skewed batch
// consecutive positions often share an id, and one pass would wait on each store to that
// id's counter before the next increment; the halves' chains overlap. The result is the
// one-pass result: each id's positions of the first half precede those of the second.
// bag_of_position[pos] is the number of bags b >= 1 with offsets[b] <= pos (offsets[0] is 0
// and offsets never decrease): the starts are marked, then summed in the same pass.
void build_occurrences(const PreparedGroup& g) {
  const int64_t u_count = g.num_unique();
  const int64_t n = g.num_ids;
  const int32_t* inverse = g.inverse.data();
  g.bag_of_position.resize(n);
  int32_t* bag = g.bag_of_position.data();
  std::fill(bag, bag + n, 0);
  for (int64_t b = 1; b < g.batch_size; ++b)
    if (g.offsets[b] < n) ++bag[g.offsets[b]];
  const int64_t mid = n / 2;  // halves [0, mid) and [mid, n): the second one position longer when n is odd
  thread_local PodVector<int32_t> tls_counts;
  PodVector<int32_t>& counts = tls_counts;
  counts.resize(2 * static_cast<size_t>(u_count));
  int32_t* first = counts.data();
  int32_t* second = first + u_count;
  std::fill(first, first + 2 * u_count, 0);
  for (int64_t i = 0; i < mid; ++i) {
    ++first[inverse[i]];
    ++second[inverse[mid + i]];
  }
  if (n > 2 * mid) ++second[inverse[n - 1]];
  g.occurrence_offsets.resize(u_count + 1);
  int32_t* offsets = g.occurrence_offsets.data();
  offsets[0] = 0;
  for (int64_t u = 0; u < u_count; ++u) {  // the counts become each half's cursor
    const int32_t a = first[u], b = second[u];
    first[u] = offsets[u];
    second[u] = offsets[u] + a;
    offsets[u + 1] = offsets[u] + a + b;
  }
  g.occurrence_positions.resize(n);
  int32_t* positions = g.occurrence_positions.data();
  // The second half's running bag starts at the bag of position mid - 1.
  const int64_t* starts = g.offsets.data();
  int32_t bag_a = 0;
  int32_t bag_b = g.batch_size > 1
                      ? static_cast<int32_t>(std::lower_bound(starts + 1, starts + g.batch_size, mid) - (starts + 1))
                      : 0;
  for (int64_t i = 0; i < mid; ++i) {
    const int64_t a = i, b = mid + i;
    bag_a += bag[a];
    bag_b += bag[b];
    bag[a] = bag_a;
    bag[b] = bag_b;
    positions[first[inverse[a]]++] = static_cast<int32_t>(a);
    positions[second[inverse[b]]++] = static_cast<int32_t>(b);
  }
  if (n > 2 * mid) {
    bag_b += bag[n - 1];
    bag[n - 1] = bag_b;
    positions[second[inverse[n - 1]]++] = static_cast<int32_t>(n - 1);
  }
}

}  // namespace sparsecore
