#include "sparsecore/ps/remote_row_store.h"

#include <algorithm>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/fused_update.h"

namespace sparsecore::ps {
namespace {

constexpr int64_t kRowsPerTask = 256;

}  // namespace

RemoteRowStore::RemoteRowStore(PsClient& client, const std::vector<TableConfig>& tables) : client_(client) {
  for (const TableConfig& t : tables) names_.push_back(t.name);
  plan_shards_ = std::clamp(client.total_shards(), 1, static_cast<int>(kNumBuckets));
}

const int64_t* RemoteRowStore::grouped_by_shard(const PreparedGroup& g) const {
  // The plan split the group by the servers' shards: the client sends each run as it is.
  return g.shard_starts.size() == static_cast<size_t>(client_.total_shards()) + 1 ? g.shard_starts.data() : nullptr;
}

void RemoteRowStore::pull(const std::vector<TableSlice>& slices, bool train) {
  // Every table of the step in one request per server shard, all sent before the first
  // reply is awaited. The plan grouped each table's ids by shard, so the rows are read
  // straight into the slices.
  client_.pull_tables(slices, train).wait();
}

void RemoteRowStore::push(const std::vector<TableSlice>& slices, int64_t step) {
  // Every group goes, an empty one too: a synchronous step of a table completes once every
  // worker pushed it.
  client_.push_tables(slices, step);
}

void RemoteRowStore::rows_for_pooling(const PreparedBatch& batch, std::vector<const std::byte* const*>& rows,
                                      std::vector<RowStorage>& storage, std::vector<PodVector<std::byte*>>&) {
  const size_t num_groups = batch.groups.size();
  {
    std::lock_guard<std::mutex> lock(batch.rows_mutex);
    if (!batch.rows_fetched) {
      std::vector<size_t> start(num_groups + 1, 0);
      for (size_t gi = 0; gi < num_groups; ++gi) {
        const PreparedGroup& g = batch.groups[gi];
        start[gi + 1] = start[gi] + static_cast<size_t>(g.num_unique()) * static_cast<size_t>(g.dim);
      }
      batch.fetched_rows.resize(start[num_groups]);
      std::vector<TableSlice> slices;
      for (size_t gi = 0; gi < num_groups; ++gi) {
        const PreparedGroup& g = batch.groups[gi];
        slices.push_back({names_.at(g.table), g.unique_keys.data(), g.num_unique(),
                          batch.fetched_rows.data() + start[gi], nullptr, grouped_by_shard(g)});
      }
      pull(slices, batch.train);
      for (size_t gi = 0; gi < num_groups; ++gi) {
        const PreparedGroup& g = batch.groups[gi];
        float* base = batch.fetched_rows.data() + start[gi];
        g.unique_rows.resize(g.num_unique());
        for (int64_t u = 0; u < g.num_unique(); ++u) g.unique_rows[u] = reinterpret_cast<std::byte*>(base + u * g.dim);
      }
      batch.rows_fetched = true;
    }
  }
  rows.assign(num_groups, nullptr);
  storage.assign(num_groups, RowStorage::kFloat32);  // pulled as fp32 (an fp16 row widens exactly)
  for (size_t gi = 0; gi < num_groups; ++gi) rows[gi] = batch.groups[gi].unique_rows.data();
}

int64_t RemoteRowStore::apply_gradients(const PreparedBatch& batch, const std::vector<const float*>& grads,
                                        const std::vector<std::vector<float>>& bag_scale, std::atomic<int64_t>& step) {
  const int num_groups = static_cast<int>(batch.groups.size());
  std::vector<PodVector<float>> sums(num_groups);
  struct Task {
    int group;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    sums[gi].resize(static_cast<size_t>(g.num_unique()) * static_cast<size_t>(g.dim));
    for (int64_t b = 0; b < g.num_unique(); b += kRowsPerTask)
      tasks.push_back({gi, b, std::min(g.num_unique(), b + kRowsPerTask)});
  }
  // Each unique id's gradient summed exactly as the local fused backward sums it.
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Task& task = tasks[t];
      const PreparedGroup& g = batch.groups[task.group];
      kernels::sum_unique_gradients(g, grads[task.group], bag_scale[task.group].data(), task.begin, task.end,
                                    sums[task.group].data());
    }
  });
  std::vector<TableSlice> slices;
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    slices.push_back(
        {names_.at(g.table), g.unique_keys.data(), g.num_unique(), nullptr, sums[gi].data(), grouped_by_shard(g)});
  }
  // The step a push carries is the collection's step before it (synchronous workers agree on
  // it); the step advances once the push returned.
  push(slices, step.load(std::memory_order_acquire));
  return step.fetch_add(1, std::memory_order_acq_rel) + 1;
}

std::unique_ptr<EmbeddingCollection> remote_collection(std::vector<TableConfig> tables, uint64_t seed,
                                                       PsClient& client) {
  auto store = std::make_unique<RemoteRowStore>(client, tables);
  auto collection = std::make_unique<EmbeddingCollection>(tables, seed, std::move(store));  // validates
  for (const TableConfig& t : tables) client.create_table(t, seed);
  return collection;
}

}  // namespace sparsecore::ps
