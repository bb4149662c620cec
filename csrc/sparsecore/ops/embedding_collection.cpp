#include "sparsecore/ops/embedding_collection.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/gathered_pooling.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore {
namespace {

constexpr int64_t kMaxIdsPerGroup = (int64_t{1} << 31) - 1;  // positions are int32
constexpr int64_t kBagsPerTask = 256;
constexpr int64_t kRowsPerTask = 256;
// Evaluation tasks take every shard lock of their table once, so they are larger.
constexpr int64_t kEvalBagsPerTask = 1024;

// Open-addressing scratch set for dedup within one shard of one group: key -> local index.
// Slots whose index is -1 are empty, so every key value is legal. Key and index share a slot
// (one cache line per probe, not one in each of two arrays).
struct DedupSet {
  struct Slot {
    int64_t key;
    int32_t index;
    int32_t unused;
  };
  std::vector<Slot> slots;
  uint64_t mask = 0;

  void reset(int64_t expected) {
    size_t cap = 16;
    while (cap < static_cast<size_t>(expected) * 2) cap *= 2;
    if (slots.size() < cap) slots.resize(cap);
    mask = cap - 1;
    for (size_t i = 0; i < cap; ++i) slots[i].index = -1;
  }
  // Returns the index of `key`, inserting it with `next` when absent.
  int32_t find_or_add(int64_t key, uint64_t hash, int32_t next, bool* added) {
    uint64_t slot = hash & mask;
    for (;;) {
      Slot& s = slots[slot];
      if (s.index < 0) {
        s.key = key;
        s.index = next;
        *added = true;
        return next;
      }
      if (s.key == key) {
        *added = false;
        return s.index;
      }
      slot = (slot + 1) & mask;
    }
  }
};

// Per-group scratch of prepare(): positions grouped by table shard.
struct GroupScratch {
  PodVector<uint64_t> hashes;      // (n)
  PodVector<int32_t> perm;         // (n) positions, grouped by shard, ascending within
  std::vector<int64_t> shard_start;  // (shards + 1)
  PodVector<int32_t> local_index;  // (n) index of a position's id within its shard
  std::vector<int64_t> shard_unique; // (shards) unique ids per shard
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
    SC_CHECK_ARG(in.table >= 0 && in.table < num_tables, "group ", g, ": table index ", in.table,
                 " out of range [0, ", num_tables, ")");
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
    SC_CHECK_ARG(off[in.batch_size] == in.num_ids, "group '", name, "': offsets[", in.batch_size, "] = ",
                 off[in.batch_size], " must equal the number of ids (", in.num_ids, ")");
    if (in.weights) {
      SC_CHECK_ARG(kernels::all_finite(in.weights, in.num_ids), "group '", name,
                   "': weights contain NaN or Inf");
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
      if (in.weights) g.weights.assign(in.weights, in.weights + in.num_ids);
      else g.weights.clear();
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

namespace {

// What backward needs beyond the forward: each unique id's occurrences and each position's bag.
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

}  // namespace

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
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range for ", num_tables(), " tables");
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
  SC_CHECK_ARG(outputs.size() == inputs.size(), "evaluate: ", outputs.size(), " output buffers for ",
               inputs.size(), " groups");
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
  SC_CHECK_ARG(grads.size() == batch.groups.size(), "backward: ", grads.size(), " gradients for ",
               batch.groups.size(), " groups");
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
    for (int64_t gi = g0; gi < g1; ++gi)
      finite[gi] = kernels::all_finite(grads[gi], batch.groups[gi].output_size());
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
      table.hash_table().find_or_insert(g.unique_keys.data(), g.num_unique(), refreshed[gi].data(),
                                        table.row_init());
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

  const int64_t step = step_.fetch_add(1, std::memory_order_acq_rel) + 1;
  struct Task {
    int group;
    int64_t begin, end;
    size_t undo_offset;  // bytes into the undo buffer
  };
  std::vector<Task> tasks;
  size_t undo_bytes = 0;
  for (int gi = 0; gi < num_groups; ++gi) {
    const int64_t u = batch.groups[gi].num_unique();
    const size_t stride = kernels::undo_stride(tables_[batch.groups[gi].table]->row_bytes());
    for (int64_t b = 0; b < u; b += kRowsPerTask)
      tasks.push_back({gi, b, std::min(u, b + kRowsPerTask), undo_bytes + static_cast<size_t>(b) * stride});
    undo_bytes += static_cast<size_t>(u) * stride;
  }
  PodVector<std::byte> undo = take_undo(undo_bytes);
  // Past a few MiB the log no longer stays in the cache: stream it to memory instead.
  const bool stream_undo = undo_bytes > (size_t{4} << 20);
  auto rows_of = [&](int gi) -> std::byte* const* {
    return refreshed[gi].empty() ? batch.groups[gi].unique_rows.data() : refreshed[gi].data();
  };
  std::vector<char> finite_rows(tasks.size(), 1);
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> scratch;
    for (int64_t t = t0; t < t1; ++t) {
      const int gi = tasks[t].group;
      const PreparedGroup& g = batch.groups[gi];
      const EmbeddingTable& table = *tables_[g.table];
      const size_t floats = kernels::backward_scratch_floats(g.dim, table.state_dim());
      if (scratch.size() < floats) scratch.resize(floats);
      finite_rows[t] = kernels::backward_update(g, table, rows_of(gi), grads[gi], bag_scale[gi].data(), tasks[t].begin,
                                                tasks[t].end, step, scratch.data(), undo.data() + tasks[t].undo_offset,
                                                stream_undo);
    }
  });
  std::string overflowed;
  for (size_t t = 0; t < tasks.size(); ++t) {
    const std::string& name = tables_[batch.groups[tasks[t].group].table]->name();
    if (!finite_rows[t] && overflowed.find("'" + name + "'") == std::string::npos)
      overflowed += (overflowed.empty() ? "'" : ", '") + name + "'";
  }
  if (!overflowed.empty()) {
    parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t)
        kernels::undo_rows(rows_of(tasks[t].group), tasks[t].begin, tasks[t].end,
                           tables_[batch.groups[tasks[t].group].table]->row_bytes(), undo.data() + tasks[t].undo_offset);
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
