#include "sparsecore/ops/embedding_collection.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/dedup_set.h"
#include "sparsecore/ops/gathered_pooling.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore {
namespace {

constexpr int64_t kMaxIdsPerGroup = (int64_t{1} << 31) - 1;  // positions are int32
constexpr int64_t kBagsPerTask = 256;
constexpr int64_t kRowsPerTask = 256;
// Evaluation tasks take every shard lock of their table once, so they are larger.
constexpr int64_t kEvalBagsPerTask = 1024;

// Per-group scratch of prepare(): positions grouped by table shard.
struct GroupScratch {
  PodVector<uint64_t> hashes;         // (n)
  PodVector<int32_t> perm;            // (n) positions, grouped by shard, ascending within
  std::vector<int64_t> shard_start;   // (shards + 1)
  PodVector<int32_t> local_index;     // (n) index of a position's id within its shard
  std::vector<int64_t> shard_unique;  // (shards) unique ids per shard
};

constexpr size_t kCachedBatches = 4;

}  // namespace

EmbeddingCollection::EmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed) : seed_(seed) {
  SC_CHECK_ARG(!tables.empty(), "an EmbeddingCollection needs at least one table");
  std::set<std::string> names;
  for (const auto& c : tables) {
    c.validate();
    SC_CHECK_ARG(names.insert(c.name).second, "duplicate table name '", c.name, "'");
  }
  for (auto& c : tables) {
    uint64_t ts = table_seed(seed, c.name);
    tables_.push_back(std::make_unique<EmbeddingTable>(std::move(c), ts));
  }
}

EmbeddingCollection::EmbeddingCollection(std::vector<std::unique_ptr<EmbeddingTable>> tables, uint64_t seed,
                                         int64_t step)
    : seed_(seed), tables_(std::move(tables)), step_(step) {}

int EmbeddingCollection::table_index(const std::string& name) const {
  for (size_t i = 0; i < tables_.size(); ++i)
    if (tables_[i]->name() == name) return static_cast<int>(i);
  std::string known;
  for (const auto& t : tables_) known += (known.empty() ? "" : ", ") + t->name();
  throw NotFound("unknown table '" + name + "' (tables: " + known + ")");
}

size_t EmbeddingCollection::memory_bytes() const {
  std::shared_lock lock(swap_mutex_);
  size_t total = 0;
  for (const auto& t : tables_) total += t->memory_bytes();
  return total;
}

void validate_group_inputs(const std::vector<GroupInput>& inputs, int num_tables,
                           const std::function<const std::string&(int)>& table_name) {
  std::vector<char> seen(static_cast<size_t>(std::max(num_tables, 0)), 0);
  for (size_t g = 0; g < inputs.size(); ++g) {
    const GroupInput& in = inputs[g];
    SC_CHECK_ARG(in.table >= 0 && in.table < num_tables, "group ", g, ": table index ", in.table, " out of range [0, ",
                 num_tables, ")");
    const std::string& name = table_name(in.table);
    SC_CHECK_ARG(!seen[in.table], "table '", name, "' appears in more than one group of the batch");
    seen[in.table] = 1;
    SC_CHECK_ARG(in.num_ids >= 0 && in.num_ids <= kMaxIdsPerGroup, "group '", name, "': ids has ", in.num_ids,
                 " elements; at most 2^31 - 1 per group");
    SC_CHECK_ARG(in.batch_size >= 0, "group '", name, "': batch size must be >= 0, got ", in.batch_size);
    SC_CHECK_ARG(in.num_ids == 0 || in.ids != nullptr, "group '", name, "': ids is null");
    SC_CHECK_ARG(in.offsets != nullptr, "group '", name, "': offsets is null");
    const int64_t* off = in.offsets;
    SC_CHECK_ARG(off[0] == 0, "group '", name, "': offsets[0] must be 0, got ", off[0]);
    for (int64_t b = 0; b < in.batch_size; ++b) {
      SC_CHECK_ARG(off[b + 1] >= off[b], "group '", name, "': offsets must be non-decreasing, but offsets[", b,
                   "] = ", off[b], " > offsets[", b + 1, "] = ", off[b + 1]);
    }
    SC_CHECK_ARG(off[in.batch_size] == in.num_ids, "group '", name, "': offsets[", in.batch_size,
                 "] = ", off[in.batch_size], " must equal the number of ids (", in.num_ids, ")");
    if (in.weights) {
      SC_CHECK_ARG(kernels::all_finite(in.weights, in.num_ids), "group '", name, "': weights contain NaN or Inf");
    }
  }
}

void EmbeddingCollection::validate_inputs(const std::vector<GroupInput>& inputs) const {
  validate_group_inputs(inputs, num_tables(), [this](int t) -> const std::string& { return tables_[t]->name(); });
}

std::shared_ptr<PreparedBatch> EmbeddingCollection::prepare(const std::vector<GroupInput>& inputs, bool train) {
  std::shared_lock swap_lock(swap_mutex_);
  validate_inputs(inputs);

  const int num_groups = static_cast<int>(inputs.size());
  std::unique_ptr<PreparedBatch> recycled;
  {
    std::lock_guard<std::mutex> lock(batch_cache_->mutex);
    if (!batch_cache_->free.empty()) {
      recycled = std::move(batch_cache_->free.back());
      batch_cache_->free.pop_back();
    }
  }
  if (!recycled) recycled = std::make_unique<PreparedBatch>();
  std::shared_ptr<PreparedBatch> batch(recycled.release(), [cache = batch_cache_](PreparedBatch* b) {
    std::unique_ptr<PreparedBatch> owned(b);
    std::lock_guard<std::mutex> lock(cache->mutex);
    if (cache->free.size() < kCachedBatches) cache->free.push_back(std::move(owned));
  });
  batch->train = train;
  batch->occurrences_built = false;
  batch->groups.resize(num_groups);
  // Reused by the next prepare on this thread. The pool's threads reach it through the
  // reference (a thread_local named inside the lambdas would be each worker's own).
  thread_local std::vector<GroupScratch> tls_scratch;
  std::vector<GroupScratch>& scratch = tls_scratch;
  if (scratch.size() < static_cast<size_t>(num_groups)) scratch.resize(num_groups);

  // Phase 1, per group: copy the bag layout, hash the ids, group positions by table shard.
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const GroupInput& in = inputs[gi];
      EmbeddingTable& table = *tables_[in.table];
      PreparedGroup& g = batch->groups[gi];
      GroupScratch& s = scratch[gi];
      g.table = in.table;
      g.dim = table.dim();
      g.pooling = table.config().pooling;
      g.num_ids = in.num_ids;
      g.batch_size = in.batch_size;
      g.table_generation = table.generation();
      g.max_len = 0;
      g.offsets.assign(in.offsets, in.offsets + in.batch_size + 1);
      if (in.weights)
        g.weights.assign(in.weights, in.weights + in.num_ids);
      else
        g.weights.clear();
      for (int64_t b = 0; b < in.batch_size; ++b) g.max_len = std::max(g.max_len, g.offsets[b + 1] - g.offsets[b]);

      const HashTable& ht = table.hash_table();
      const int shards = ht.num_shards();
      const int64_t n = in.num_ids;
      s.hashes.resize(n);
      s.shard_start.assign(shards + 1, 0);
      for (int64_t i = 0; i < n; ++i) {
        uint64_t h = key_hash(in.ids[i]);
        s.hashes[i] = h;
        ++s.shard_start[ht.shard_of_hash(h) + 1];
      }
      for (int sh = 0; sh < shards; ++sh) s.shard_start[sh + 1] += s.shard_start[sh];
      std::vector<int64_t> cursor(s.shard_start.begin(), s.shard_start.end() - 1);
      s.perm.resize(n);
      for (int64_t i = 0; i < n; ++i) s.perm[cursor[ht.shard_of_hash(s.hashes[i])]++] = static_cast<int32_t>(i);
      s.local_index.resize(n);
      s.shard_unique.assign(shards, 0);
      g.unique_keys.resize(n);  // compacted in phase 3; a shard's uniques fit in its positions
      g.unique_rows.resize(n);
    }
  });

  // Phase 2, per (group, shard): dedup the shard's positions, then pull their rows under one
  // lock of the table shard. Unique ids of shard s are written at the shard's first position.
  struct Task {
    int group;
    int shard;
  };
  std::vector<Task> tasks;
  for (int gi = 0; gi < num_groups; ++gi) {
    const GroupScratch& s = scratch[gi];
    for (int sh = 0; sh + 1 < static_cast<int>(s.shard_start.size()); ++sh)
      if (s.shard_start[sh + 1] > s.shard_start[sh]) tasks.push_back({gi, sh});
  }
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    thread_local DedupSet tls_set;
    DedupSet& set = tls_set;  // resolved once, not on every probe
    for (int64_t t = t0; t < t1; ++t) {
      const int gi = tasks[t].group, sh = tasks[t].shard;
      const GroupInput& in = inputs[gi];
      PreparedGroup& g = batch->groups[gi];
      GroupScratch& s = scratch[gi];
      EmbeddingTable& table = *tables_[in.table];
      const int64_t begin = s.shard_start[sh], end = s.shard_start[sh + 1];
      set.reset(end - begin);
      int32_t count = 0;
      int64_t* ukeys = g.unique_keys.data() + begin;
      for (int64_t p = begin; p < end; ++p) {
        const int32_t pos = s.perm[p];
        bool added = false;
        int32_t idx = set.find_or_add(in.ids[pos], s.hashes[pos], count, &added);
        if (added) ukeys[count++] = in.ids[pos];
        s.local_index[pos] = idx;
      }
      s.shard_unique[sh] = count;

      std::byte** urows = g.unique_rows.data() + begin;
      HashTable::Shard& shard = table.hash_table().shard(sh);
      int64_t missing = 0;
      {
        std::shared_lock lock(shard.mutex);
        missing = shard.find_batch(ukeys, count, urows);
      }
      if (train && missing > 0) {
        std::unique_lock lock(shard.mutex);
        shard.insert_absent(ukeys, count, urows, table.row_init());
      }
    }
  });

  // Phase 3, per group: compact the per-shard uniques and resolve inverse indices (what
  // backward needs beyond that is built by its first call: build_occurrences).
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      PreparedGroup& g = batch->groups[gi];
      GroupScratch& s = scratch[gi];
      const int shards = static_cast<int>(s.shard_unique.size());
      int64_t base = 0;
      g.inverse.resize(g.num_ids);
      for (int sh = 0; sh < shards; ++sh) {
        const int64_t begin = s.shard_start[sh], count = s.shard_unique[sh];
        if (base != begin && count > 0) {  // base <= begin: moving down never overwrites unread data
          std::copy(g.unique_keys.begin() + begin, g.unique_keys.begin() + begin + count, g.unique_keys.begin() + base);
          std::copy(g.unique_rows.begin() + begin, g.unique_rows.begin() + begin + count, g.unique_rows.begin() + base);
        }
        for (int64_t p = begin; p < s.shard_start[sh + 1]; ++p) {
          const int32_t pos = s.perm[p];
          g.inverse[pos] = static_cast<int32_t>(base + s.local_index[pos]);
        }
        base += count;
      }
      g.unique_keys.resize(base);
      g.unique_rows.resize(base);
    }
  });
  return batch;
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

void EmbeddingCollection::forward(const PreparedBatch& batch, const std::vector<float*>& outputs) const {
  std::shared_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(outputs.size() == batch.groups.size(), "forward: ", outputs.size(), " output buffers for ",
               batch.groups.size(), " groups");
  // If a table changed since prepare (erase, restore), rows are looked up again by key.
  std::vector<PodVector<std::byte*>> refreshed(batch.groups.size());
  struct Task {
    int group;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  for (size_t gi = 0; gi < batch.groups.size(); ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    SC_CHECK_ARG(g.table >= 0 && g.table < num_tables() && tables_[g.table]->dim() == g.dim,
                 "forward: the prepared batch does not belong to this collection");
    SC_CHECK_ARG(outputs[gi] != nullptr || g.output_size() == 0, "forward: output ", gi, " is null");
    const EmbeddingTable& table = *tables_[g.table];
    if (table.generation() != g.table_generation) {
      refreshed[gi].resize(g.unique_keys.size());
      table.hash_table().find(g.unique_keys.data(), g.num_unique(), refreshed[gi].data());
    }
    for (int64_t b = 0; b < g.batch_size; b += kBagsPerTask)
      tasks.push_back({static_cast<int>(gi), b, std::min(g.batch_size, b + kBagsPerTask)});
  }
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    PodVector<float> tmp;
    for (int64_t t = t0; t < t1; ++t) {
      const PreparedGroup& g = batch.groups[tasks[t].group];
      const auto& rows = refreshed[tasks[t].group].empty() ? g.unique_rows : refreshed[tasks[t].group];
      tmp.resize(g.dim);
      kernels::pool_bags(g, tables_[g.table]->storage(), rows.data(), tasks[t].begin, tasks[t].end,
                         outputs[tasks[t].group], tmp.data());
    }
  });
}

int64_t EmbeddingCollection::erase(int table, const int64_t* keys, int64_t n) {
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range for ", num_tables(),
               " tables");
  SC_CHECK_ARG(n >= 0, "number of keys must be >= 0, got ", n);
  std::unique_lock swap_lock(swap_mutex_);  // no batch call holds a row pointer meanwhile
  return tables_[table]->erase(keys, n);
}

int64_t EmbeddingCollection::max_bag_length(const GroupInput& in) {
  int64_t longest = 0;
  for (int64_t b = 0; b < in.batch_size; ++b) longest = std::max(longest, in.offsets[b + 1] - in.offsets[b]);
  return longest;
}

void EmbeddingCollection::evaluate(const std::vector<GroupInput>& inputs, const std::vector<float*>& outputs) const {
  std::shared_lock swap_lock(swap_mutex_);
  validate_inputs(inputs);
  SC_CHECK_ARG(outputs.size() == inputs.size(), "evaluate: ", outputs.size(), " output buffers for ", inputs.size(),
               " groups");
  struct Task {
    int group;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  std::vector<int64_t> max_len(inputs.size(), 0);
  for (size_t gi = 0; gi < inputs.size(); ++gi) {
    const GroupInput& in = inputs[gi];
    SC_CHECK_ARG(outputs[gi] != nullptr || in.batch_size == 0, "evaluate: output ", gi, " is null");
    if (tables_[in.table]->config().pooling == Pooling::kNone) max_len[gi] = max_bag_length(in);
    for (int64_t b = 0; b < in.batch_size; b += kEvalBagsPerTask)
      tasks.push_back({static_cast<int>(gi), b, std::min(in.batch_size, b + kEvalBagsPerTask)});
  }
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    PodVector<uint64_t> hashes;
    PodVector<const std::byte*> rows;
    PodVector<float> tmp;
    for (int64_t t = t0; t < t1; ++t) {
      const Task& task = tasks[t];
      const GroupInput& in = inputs[task.group];
      const EmbeddingTable& table = *tables_[in.table];
      const int64_t n = in.offsets[task.end] - in.offsets[task.begin];
      hashes.resize(n);
      rows.resize(n);
      tmp.resize(table.dim());
      HashTable::SharedLockAll lock(table.hash_table());
      kernels::pool_bags_from_ids(table.hash_table(), table.dim(), table.config().pooling, table.storage(), in,
                                  max_len[task.group], task.begin, task.end, outputs[task.group], hashes.data(),
                                  rows.data(), tmp.data());
    }
  });
}

int64_t EmbeddingCollection::backward(const PreparedBatch& batch, const std::vector<const float*>& grads) {
  std::shared_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(batch.train, "backward needs a batch prepared with train=true (this one was prepared for evaluation)");
  SC_CHECK_ARG(grads.size() == batch.groups.size(), "backward: ", grads.size(), " gradients for ", batch.groups.size(),
               " groups");
  const int num_groups = static_cast<int>(batch.groups.size());
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    SC_CHECK_ARG(g.table >= 0 && g.table < num_tables() && tables_[g.table]->dim() == g.dim,
                 "backward: the prepared batch does not belong to this collection");
    SC_CHECK_ARG(grads[gi] != nullptr || g.output_size() == 0, "backward: gradient ", gi, " is null");
  }
  // Validate every gradient before any row changes.
  std::vector<char> finite(num_groups, 1);
  parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) finite[gi] = kernels::all_finite(grads[gi], batch.groups[gi].output_size());
  });
  for (int gi = 0; gi < num_groups; ++gi)
    SC_CHECK_ARG(finite[gi], "gradient of group '", tables_[batch.groups[gi].table]->name(),
                 "' contains NaN or Inf; no row was updated");

  // Rows released since prepare (erase, restore) are looked up again (and re-created).
  std::vector<PodVector<std::byte*>> refreshed(num_groups);
  std::vector<std::vector<float>> bag_scale(num_groups);
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    EmbeddingTable& table = *tables_[g.table];
    if (table.generation() != g.table_generation) {
      refreshed[gi].resize(g.unique_keys.size());
      table.hash_table().find_or_insert(g.unique_keys.data(), g.num_unique(), refreshed[gi].data(), table.row_init());
    }
    bag_scale[gi].resize(g.batch_size);
    bag_gradient_scales(g.pooling, g.offsets.data(), g.batch_size, g.weights.empty() ? nullptr : g.weights.data(),
                        bag_scale[gi].data());
  }

  {
    std::lock_guard<std::mutex> lock(batch.occurrences_mutex);
    if (!batch.occurrences_built) {
      parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
        for (int64_t gi = g0; gi < g1; ++gi) build_occurrences(batch.groups[gi]);
      });
      batch.occurrences_built = true;
    }
  }

  std::vector<RowRange> ranges;
  for (int gi = 0; gi < num_groups; ++gi) ranges.push_back({batch.groups[gi].table, batch.groups[gi].num_unique()});
  auto rows_of = [&](int gi) -> std::byte* const* {
    return refreshed[gi].empty() ? batch.groups[gi].unique_rows.data() : refreshed[gi].data();
  };
  return update_rows(
      ranges, [&](int gi) { return rows_of(gi); },
      [&](int gi, int64_t begin, int64_t end, int64_t step, float* scratch, std::byte* undo, bool stream) {
        const PreparedGroup& g = batch.groups[gi];
        return kernels::backward_update(g, *tables_[g.table], rows_of(gi), grads[gi], bag_scale[gi].data(), begin, end,
                                        step, scratch, undo, stream);
      });
}

int64_t EmbeddingCollection::apply_unique(int table_index, const int64_t* ids, int64_t n, const float* grads) {
  std::shared_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(table_index >= 0 && table_index < num_tables(), "apply_unique: no table ", table_index,
               " in a "
               "collection of ",
               num_tables());
  EmbeddingTable& table = *tables_[table_index];
  SC_CHECK_ARG(n >= 0 && n <= kMaxIdsPerGroup, "apply_unique: table '", table.name(), "' takes 0 to 2^31 - 1 ids, got ",
               n);
  SC_CHECK_ARG(n == 0 || (ids && grads), "apply_unique: null ids or gradients");
  SC_CHECK_ARG(kernels::all_finite(grads, n * table.dim()), "gradients of table '", table.name(),
               "' contain NaN or Inf; no row was updated");
  {
    // A repeated id would be updated twice and could not be undone: refused, not summed.
    thread_local DedupSet tls_set;
    DedupSet& set = tls_set;
    set.reset(n);
    for (int64_t i = 0; i < n; ++i) {
      bool added = false;
      set.find_or_add(ids[i], key_hash(ids[i]), static_cast<int32_t>(i), &added);
      SC_CHECK_ARG(added, "apply_unique: id ", ids[i], " appears more than once in the update of table '", table.name(),
                   "'; no row was updated");
    }
  }
  PodVector<std::byte*> rows(n);
  if (n > 0) table.hash_table().find_or_insert(ids, n, rows.data(), table.row_init());
  return update_rows(
      {{table_index, n}}, [&](int) -> std::byte* const* { return rows.data(); },
      [&](int, int64_t begin, int64_t end, int64_t step, float* scratch, std::byte* undo, bool stream) {
        return kernels::apply_row_gradients(table, rows.data(), grads, begin, end, step, scratch, undo, stream);
      });
}

int64_t EmbeddingCollection::update_rows(const std::vector<RowRange>& ranges,
                                         const std::function<std::byte* const*(int)>& rows_of,
                                         const RangeUpdate& update) {
  const int64_t step = step_.fetch_add(1, std::memory_order_acq_rel) + 1;
  struct Task {
    int range;
    int64_t begin, end;
    size_t undo_offset;  // bytes into the undo buffer
  };
  std::vector<Task> tasks;
  size_t undo_bytes = 0;
  for (int r = 0; r < static_cast<int>(ranges.size()); ++r) {
    const int64_t u = ranges[r].rows;
    const size_t stride = kernels::undo_stride(tables_[ranges[r].table]->row_bytes());
    for (int64_t b = 0; b < u; b += kRowsPerTask)
      tasks.push_back({r, b, std::min(u, b + kRowsPerTask), undo_bytes + static_cast<size_t>(b) * stride});
    undo_bytes += static_cast<size_t>(u) * stride;
  }
  PodVector<std::byte> undo = take_undo(undo_bytes);
  // Past a few MiB the log no longer stays in the cache: stream it to memory instead.
  const bool stream_undo = undo_bytes > (size_t{4} << 20);
  std::vector<char> finite_rows(tasks.size(), 1);
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scratch;
    for (int64_t t = t0; t < t1; ++t) {
      const EmbeddingTable& table = *tables_[ranges[tasks[t].range].table];
      const size_t floats = kernels::backward_scratch_floats(table.dim(), table.state_dim());
      if (scratch.size() < floats) scratch.resize(floats);
      finite_rows[t] = update(tasks[t].range, tasks[t].begin, tasks[t].end, step, scratch.data(),
                              undo.data() + tasks[t].undo_offset, stream_undo);
    }
  });
  std::string overflowed;
  for (size_t t = 0; t < tasks.size(); ++t) {
    const std::string& name = tables_[ranges[tasks[t].range].table]->name();
    if (!finite_rows[t] && overflowed.find("'" + name + "'") == std::string::npos)
      overflowed += (overflowed.empty() ? "'" : ", '") + name + "'";
  }
  if (!overflowed.empty()) {
    parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        kernels::undo_rows(rows_of(tasks[t].range), tasks[t].begin, tasks[t].end,
                           tables_[ranges[tasks[t].range].table]->row_bytes(), undo.data() + tasks[t].undo_offset);
    });
    int64_t expected = step;
    step_.compare_exchange_strong(expected, step - 1, std::memory_order_acq_rel);
    give_back_undo(std::move(undo));
    throw InvalidArgument("the update of table(s) " + overflowed +
                          " made rows non-finite (a gradient too large for the optimizer overflowed a weight or "
                          "its state); no row was updated");
  }
  give_back_undo(std::move(undo));
  return step;
}

PodVector<std::byte> EmbeddingCollection::take_undo(size_t bytes) {
  PodVector<std::byte> undo;
  {
    std::lock_guard<std::mutex> lock(undo_mutex_);
    if (!undo_free_.empty()) {
      undo = std::move(undo_free_.back());
      undo_free_.pop_back();
    }
  }
  undo.resize(bytes);
  return undo;
}

void EmbeddingCollection::give_back_undo(PodVector<std::byte>&& undo) {
  std::lock_guard<std::mutex> lock(undo_mutex_);
  if (undo_free_.size() < 4) undo_free_.push_back(std::move(undo));
}

}  // namespace sparsecore
