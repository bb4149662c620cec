#include "sparsecore/ops/embedding_collection.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/batch_planner.h"
#include "sparsecore/ops/fused_update.h"
#include "sparsecore/ops/kernel_support.h"
#include "sparsecore/ops/local_row_store.h"
#include "sparsecore/ops/pooling_kernels.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {
namespace {

constexpr int64_t kMaxIdsPerGroup = (int64_t{1} << 31) - 1;  // positions are int32
constexpr int64_t kBagsPerTask = 256;
// Evaluation tasks take every shard lock of their table once, so they are larger.
constexpr int64_t kEvalBagsPerTask = 1024;

constexpr size_t kCachedBatches = 4;
// Samples per task of the backward's gather of strided gradients: a block of the wide input
// gradient (this many rows of every group) stays in the L2 cache while its groups are copied.
constexpr int64_t kGatherRowsPerTask = 64;

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
    tables_.back()->set_step(0);  // a new table's rows were created now (wall-clock expiry)
  }
  auto local = std::make_unique<LocalRowStore>(tables_);
  local_ = local.get();
  store_ = std::move(local);
}

EmbeddingCollection::EmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed,
                                         std::unique_ptr<RowStore> store)
    : seed_(seed), configs_(std::move(tables)), store_(std::move(store)) {
  SC_CHECK_ARG(!configs_.empty(), "an EmbeddingCollection needs at least one table");
  SC_CHECK_ARG(store_ != nullptr, "an EmbeddingCollection needs a row store");
  std::set<std::string> names;
  for (const auto& c : configs_) {
    c.validate();
    SC_CHECK_ARG(names.insert(c.name).second, "duplicate table name '", c.name, "'");
  }
}

EmbeddingCollection::EmbeddingCollection(std::vector<std::unique_ptr<EmbeddingTable>> tables, uint64_t seed,
                                         int64_t step)
    : seed_(seed), tables_(std::move(tables)), step_(step) {
  // Restored rows carry their own stamps; removals before the checkpoint are not known here,
  // so deltas start at its step.
  for (auto& t : tables_) {
    t->set_step(step);
    t->deleted_keys().reset(step);
  }
  auto local = std::make_unique<LocalRowStore>(tables_);
  local_ = local.get();
  store_ = std::move(local);
}

EmbeddingCollection::~EmbeddingCollection() = default;

const TableConfig& EmbeddingCollection::config(int index) const {
  SC_CHECK_ARG(index >= 0 && index < num_tables(), "table index ", index, " out of range for ", num_tables(),
               " tables");
  return local_ ? tables_[index]->config() : configs_[index];
}

void EmbeddingCollection::require_local(const char* call) const {
  SC_CHECK_ARG(local_ != nullptr, "EmbeddingCollection::", call,
               ": the tables of this collection live on parameter servers (its rows are not in this process)");
}

EmbeddingTable& EmbeddingCollection::table(int index) {
  require_local("table");
  return *tables_.at(index);
}

const EmbeddingTable& EmbeddingCollection::table(int index) const {
  require_local("table");
  return *tables_.at(index);
}

int EmbeddingCollection::table_index(const std::string& name) const {
  for (int i = 0; i < num_tables(); ++i)
    if (table_name(i) == name) return i;
  std::string known;
  for (int i = 0; i < num_tables(); ++i) known += (known.empty() ? "" : ", ") + table_name(i);
  throw NotFound("unknown table '" + name + "' (tables: " + known + ")");
}

size_t EmbeddingCollection::memory_bytes() const {
  require_local("memory_bytes");
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
  validate_group_inputs(inputs, num_tables(), [this](int t) -> const std::string& { return table_name(t); });
}

std::vector<GroupInput> EmbeddingCollection::in_range_inputs(const std::vector<GroupInput>& inputs,
                                                             std::vector<PodVector<int64_t>>& mapped) const {
  std::vector<GroupInput> out = inputs;
  mapped.resize(inputs.size());
  for (size_t gi = 0; gi < inputs.size(); ++gi) {
    const GroupInput& in = inputs[gi];
    const TableConfig& c = config(in.table);
    if (!c.dense()) continue;
    const int64_t n = c.num_embeddings;
    int64_t first_out = -1;
    for (int64_t i = 0; i < in.num_ids; ++i) {
      if (static_cast<uint64_t>(in.ids[i]) >= static_cast<uint64_t>(n)) {
        first_out = i;
        break;
      }
    }
    if (first_out < 0) continue;
    const uint64_t seed = local_ ? tables_[in.table]->seed() : table_seed(seed_, c.name);
    dense_id(c, seed, in.ids[first_out]);  // throws for out_of_range "error", naming the table and the id
    PodVector<int64_t>& ids = mapped[gi];
    ids.resize(static_cast<size_t>(in.num_ids));
    for (int64_t i = 0; i < in.num_ids; ++i) ids[i] = dense_id(c, seed, in.ids[i]);
    out[gi].ids = ids.data();
  }
  return out;
}

std::shared_ptr<PreparedBatch> EmbeddingCollection::prepare(const std::vector<GroupInput>& inputs, bool train,
                                                            bool sight) {
  if (local_) release_retired_rows(/*wait=*/false);
  std::shared_lock swap_lock(swap_mutex_);
  return plan(inputs, train, sight);
}

std::shared_ptr<PreparedBatch> EmbeddingCollection::plan(const std::vector<GroupInput>& raw_inputs, bool train,
                                                         bool sight) const {
  validate_inputs(raw_inputs);
  std::vector<PodVector<int64_t>> mapped;
  const std::vector<GroupInput> inputs = in_range_inputs(raw_inputs, mapped);
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
  // The batch holds row pointers from its first lookup until it is dropped (row_epochs.h).
  const uint64_t epoch = row_epochs_->enter();
  std::shared_ptr<PreparedBatch> batch(recycled.release(),
                                       [cache = batch_cache_, epochs = row_epochs_, epoch](PreparedBatch* b) {
                                         epochs->leave(epoch);
                                         std::unique_ptr<PreparedBatch> owned(b);
                                         std::lock_guard<std::mutex> lock(cache->mutex);
                                         if (cache->free.size() < kCachedBatches)
                                           cache->free.push_back(std::move(owned));
                                       });
  batch->train = train;
  batch->occurrences_built = false;
  batch->rows_fetched = false;
  batch->groups.resize(num_groups);
  std::vector<int> shards(num_groups);
  for (int gi = 0; gi < num_groups; ++gi) {
    PreparedGroup& g = batch->groups[gi];
    const TableConfig& c = config(inputs[gi].table);
    g.table = inputs[gi].table;
    g.dim = c.dim;
    g.pooling = c.pooling;
    g.table_generation = local_ ? tables_[g.table]->generation() : 0;
    shards[gi] = store_->plan_shards(g.table);
  }
  if (train && sight && local_) {
    // One tick of each admission clock per training lookup call that sights ids of its table
    // (table/admission.h), before the sightings, as a server shard ticks per pull.
    std::vector<char> ticked(tables_.size(), 0);
    for (const GroupInput& in : inputs) {
      Admission* a = tables_[in.table]->admission();
      if (a && in.num_ids > 0 && !ticked[in.table]) {
        ticked[in.table] = 1;
        a->tick();
      }
    }
  }
  RowStore& store = *store_;
  plan_batch(inputs, shards, *batch, [&](int gi, int shard, const int64_t* keys, int64_t count, std::byte** rows) {
    const int t = inputs[gi].table;
    store.resolve_shard(t, shard, keys, count, rows, train && (sight || !config(t).admission.enabled()));
  });
  return batch;
}

void EmbeddingCollection::forward(const PreparedBatch& batch, const std::vector<float*>& outputs,
                                  const std::vector<int64_t>& row_strides) const {
  std::shared_lock swap_lock(swap_mutex_);
  pool(batch, outputs, row_strides);
}

std::vector<int64_t> EmbeddingCollection::resolved_strides(const PreparedBatch& batch,
                                                           const std::vector<int64_t>& row_strides,
                                                           const char* call) const {
  SC_CHECK_ARG(row_strides.empty() || row_strides.size() == batch.groups.size(), call, ": ", row_strides.size(),
               " row strides for ", batch.groups.size(), " groups");
  std::vector<int64_t> out(batch.groups.size());
  for (size_t gi = 0; gi < batch.groups.size(); ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    const int64_t s = row_strides.empty() ? 0 : row_strides[gi];
    SC_CHECK_ARG(s == 0 || s >= g.dim, call, ": the row stride of group '", table_name(g.table), "' is ", s,
                 "; it must be 0 (the group's width) or at least its dim ", g.dim);
    SC_CHECK_ARG(s == 0 || s == g.dim || g.pooling != Pooling::kNone, call, ": group '", table_name(g.table),
                 "' uses pooling 'none' (padded sequences), whose rows cannot be strided");
    out[gi] = s == 0 ? g.dim : s;
  }
  return out;
}

void EmbeddingCollection::pool(const PreparedBatch& batch, const std::vector<float*>& outputs,
                               const std::vector<int64_t>& row_strides) const {
  SC_CHECK_ARG(outputs.size() == batch.groups.size(), "forward: ", outputs.size(), " output buffers for ",
               batch.groups.size(), " groups");
  const std::vector<int64_t> strides = resolved_strides(batch, row_strides, "forward");
  struct Task {
    int group;
    int64_t begin, end;
  };
  std::vector<Task> tasks;
  for (size_t gi = 0; gi < batch.groups.size(); ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    SC_CHECK_ARG(g.table >= 0 && g.table < num_tables() && config(g.table).dim == g.dim,
                 "forward: the prepared batch does not belong to this collection");
    SC_CHECK_ARG(outputs[gi] != nullptr || g.output_size() == 0, "forward: output ", gi, " is null");
    for (int64_t b = 0; b < g.batch_size; b += kBagsPerTask)
      tasks.push_back({static_cast<int>(gi), b, std::min(g.batch_size, b + kBagsPerTask)});
  }
  std::vector<const std::byte* const*> rows;
  std::vector<RowStorage> storage;
  std::vector<PodVector<std::byte*>> refreshed;
  store_->rows_for_pooling(batch, rows, storage, refreshed);
  // Tasks go a group at a time, so a group's rows stay in cache across its bags. A strided
  // output (a column block of one wide matrix) is written straight into place when the kernel
  // keeps a bag's sum in registers (kernels::pools_in_registers) and writes each bag once;
  // otherwise the kernel accumulates in its output, and a strided one would cost a
  // read-for-ownership of the matrix at every id: it pools into a small contiguous tile that
  // is then copied into place.
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
    PodVector<float> tmp, tile;
    for (int64_t t = t0; t < t1; ++t) {
      const int gi = tasks[t].group;
      const PreparedGroup& g = batch.groups[gi];
      const int64_t b0 = tasks[t].begin, bags = tasks[t].end - b0;
      tmp.resize(g.dim);
      if (strides[gi] == g.dim || kernels::pools_in_registers(g.dim, g.pooling)) {
        const int64_t row = g.pooling == Pooling::kNone ? g.max_len * g.dim : strides[gi];
        kernels::pool_bags(g, storage[gi], rows[gi], b0, tasks[t].end, outputs[gi] + b0 * row, strides[gi], tmp.data());
        continue;
      }
      tile.resize(static_cast<size_t>(bags) * g.dim);
      kernels::pool_bags(g, storage[gi], rows[gi], b0, tasks[t].end, tile.data(), g.dim, tmp.data());
      for (int64_t b = 0; b < bags; ++b)
        kernels::support::copy_floats(outputs[gi] + (b0 + b) * strides[gi], tile.data() + b * g.dim, g.dim);
    }
  });
}

int64_t EmbeddingCollection::erase(int table, const int64_t* keys, int64_t n) {
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range for ", num_tables(),
               " tables");
  SC_CHECK_ARG(n >= 0, "number of keys must be >= 0, got ", n);
  require_local("erase");
  std::unique_lock swap_lock(swap_mutex_);  // no batch call holds a row pointer meanwhile
  return tables_[table]->erase(keys, n);
}

int64_t EmbeddingCollection::expire(int table) {
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range for ", num_tables(),
               " tables");
  require_local("expire");
  std::unique_lock swap_lock(swap_mutex_);
  const int64_t removed = tables_[table]->expire();
  tables_[table]->release_retired();
  return removed;
}

void EmbeddingCollection::set_step(int64_t step) {
  step_.store(step, std::memory_order_release);
  for (auto& t : tables_) t->set_step(step);
}

void EmbeddingCollection::release_retired_rows(bool wait) {
  size_t retired = 0;
  for (const auto& t : tables_) retired += t->retired_rows();
  if (retired == 0) return;
  if (!wait) {
    // The rows no batch alive and no running call can hold go back to their shards now,
    // while other calls run (row_epochs.h); the others once their holders are gone.
    const uint64_t before = row_epochs_->oldest();
    retired = 0;
    for (auto& t : tables_) {
      t->release_retired_before(before);
      retired += t->retired_rows();
    }
    // Past kMaxRetiredRows (batches kept alive for long), the caller waits for the running
    // calls instead, and batches prepared before look their rows up again.
    constexpr size_t kMaxRetiredRows = size_t{1} << 18;
    if (retired <= kMaxRetiredRows) return;
  }
  std::unique_lock swap_lock(swap_mutex_);
  for (auto& t : tables_) t->release_retired();
}

int64_t EmbeddingCollection::max_bag_length(const GroupInput& in) {
  int64_t longest = 0;
  for (int64_t b = 0; b < in.batch_size; ++b) longest = std::max(longest, in.offsets[b + 1] - in.offsets[b]);
  return longest;
}

void EmbeddingCollection::evaluate(const std::vector<GroupInput>& raw_inputs,
                                   const std::vector<float*>& outputs) const {
  std::shared_lock swap_lock(swap_mutex_);
  RowEpochs::Hold hold(*row_epochs_);
  validate_inputs(raw_inputs);
  SC_CHECK_ARG(outputs.size() == raw_inputs.size(), "evaluate: ", outputs.size(), " output buffers for ",
               raw_inputs.size(), " groups");
  if (!local_) {  // rows elsewhere: one plan, one fetch of the unique rows
    pool(*plan(raw_inputs, /*train=*/false), outputs);
    return;
  }
  std::vector<PodVector<int64_t>> mapped;
  const std::vector<GroupInput> inputs = in_range_inputs(raw_inputs, mapped);
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
      if (const DenseRows* dense = table.dense()) {
        kernels::pool_bags_from_dense_ids(*dense, table.dim(), table.config().pooling, table.storage(), in,
                                          max_len[task.group], task.begin, task.end, outputs[task.group], rows.data(),
                                          tmp.data(), table.default_row());
        continue;
      }
      kernels::pool_bags_from_ids(table.hash_table(), table.dim(), table.config().pooling, table.storage(), in,
                                  max_len[task.group], task.begin, task.end, outputs[task.group], hashes.data(),
                                  rows.data(), tmp.data(), table.default_row());
    }
  });
}

void EmbeddingCollection::lookup(int table, const int64_t* ids, int64_t n, bool insert, float* out) {
  require_local("lookup");
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "lookup: no table ", table, " in a collection of ", num_tables());
  SC_CHECK_ARG(n >= 0 && (n == 0 || (ids && out)), "lookup: null ids or output, or a negative count ", n);
  if (insert) release_retired_rows(/*wait=*/false);
  std::shared_lock swap_lock(swap_mutex_);
  RowEpochs::Hold hold(*row_epochs_);
  if (insert)
    tables_[table]->lookup_or_insert_weights(ids, n, out);
  else
    tables_[table]->find_weights(ids, n, out);
}

int64_t EmbeddingCollection::backward(const PreparedBatch& batch, const std::vector<const float*>& grads,
                                      const std::vector<int64_t>& row_strides) {
  std::shared_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(batch.train, "backward needs a batch prepared with train=true (this one was prepared for evaluation)");
  SC_CHECK_ARG(grads.size() == batch.groups.size(), "backward: ", grads.size(), " gradients for ", batch.groups.size(),
               " groups");
  const int num_groups = static_cast<int>(batch.groups.size());
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    SC_CHECK_ARG(g.table >= 0 && g.table < num_tables() && config(g.table).dim == g.dim,
                 "backward: the prepared batch does not belong to this collection");
    SC_CHECK_ARG(grads[gi] != nullptr || g.output_size() == 0, "backward: gradient ", gi, " is null");
  }
  const std::vector<int64_t> strides = resolved_strides(batch, row_strides, "backward");
  // A strided gradient (a column block of the dense model's input gradient) is gathered into
  // contiguous rows first: the update reads a group's gradient rows in the order of its ids'
  // occurrences, which on the wide matrix would miss on a cache line at almost every
  // occurrence. The gather goes over the samples in blocks, every strided group of a block in
  // turn, so the wide matrix is read once, in order (a block of it stays in the cache while
  // its groups are copied out). Every gradient is checked before any row changes.
  std::vector<const float*> contiguous(grads);
  std::vector<size_t> gathered_at(num_groups, 0);
  std::vector<int> strided;
  size_t gathered_floats = 0;
  int64_t gathered_rows = 0;
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    if (strides[gi] == g.dim || g.batch_size == 0) continue;
    strided.push_back(gi);
    gathered_at[gi] = gathered_floats;
    gathered_floats += static_cast<size_t>(g.batch_size) * g.dim;
    gathered_rows = std::max(gathered_rows, g.batch_size);
  }
  std::unique_lock<std::mutex> gather_lock(batch.gather_mutex, std::try_to_lock);
  PodVector<float> own_buffer;  // only when another backward of this batch holds the batch's
  PodVector<float>& gathered = gather_lock.owns_lock() ? batch.gathered_grads : own_buffer;
  gathered.resize(gathered_floats);
  for (int gi : strided) contiguous[gi] = gathered.data() + gathered_at[gi];
  std::vector<char> finite(num_groups, 1);
  if (!strided.empty()) {
    parallel_for(gathered_rows, kGatherRowsPerTask, [&](int64_t b0, int64_t b1) {
      for (int gi : strided) {
        const PreparedGroup& g = batch.groups[gi];
        const int64_t end = std::min(b1, g.batch_size);
        if (b0 < end &&
            !kernels::gather_rows(grads[gi], strides[gi], g.dim, b0, end, gathered.data() + gathered_at[gi]))
          std::atomic_ref<char>(finite[gi]).store(0, std::memory_order_relaxed);
      }
    });
  }
  if (strided.size() < static_cast<size_t>(num_groups)) {
    parallel_for(num_groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t gi = g0; gi < g1; ++gi)
        if (strides[gi] == batch.groups[gi].dim)
          finite[gi] = kernels::all_finite(contiguous[gi], batch.groups[gi].output_size());
    });
  }
  for (int gi = 0; gi < num_groups; ++gi)
    SC_CHECK_ARG(finite[gi], "gradient of group '", table_name(batch.groups[gi].table),
                 "' contains NaN or Inf; no row was updated");

  std::vector<std::vector<float>> bag_scale(num_groups);
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    bag_scale[gi].resize(g.batch_size);
    bag_gradient_scales(g.pooling, g.offsets.data(), g.batch_size, g.weights.empty() ? nullptr : g.weights.data(),
                        bag_scale[gi].data());
  }
  plan_backward(batch);
  const int64_t step = store_->apply_gradients(batch, contiguous, bag_scale, step_);
  swap_lock.unlock();
  prune_if_due(step);
  return step;
}

void EmbeddingCollection::plan_backward(const PreparedBatch& batch) const {
  if (!batch.train) return;
  std::lock_guard<std::mutex> lock(batch.occurrences_mutex);
  if (batch.occurrences_built) return;
  parallel_for(static_cast<int64_t>(batch.groups.size()), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) build_occurrences(batch.groups[gi]);
  });
  batch.occurrences_built = true;
}

void bag_gradient_scales(Pooling pooling, const int64_t* offsets, int64_t batch_size, const float* weights,
                         float* out) {
  for (int64_t b = 0; b < batch_size; ++b) {
    if (pooling != Pooling::kMean) {
      out[b] = 1.0f;
      continue;
    }
    float denom = 0.0f;
    if (!weights) {
      denom = static_cast<float>(offsets[b + 1] - offsets[b]);
    } else {
      for (int64_t p = offsets[b]; p < offsets[b + 1]; ++p) denom += weights[p];
    }
    out[b] = denom != 0.0f ? 1.0f / denom : 0.0f;
  }
}

int64_t EmbeddingCollection::apply_unique(int table_index, const int64_t* ids, int64_t n, const float* grads) {
  require_local("apply_unique");
  release_retired_rows(/*wait=*/false);
  std::shared_lock swap_lock(swap_mutex_);
  RowEpochs::Hold hold(*row_epochs_);
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
  if (table.config().dense()) {
    // Ids arrive here already in range (a collection maps them at prepare), so any other id is
    // refused whatever out_of_range says: two ids hashed to one row would be updated twice.
    const int64_t rows = table.config().num_embeddings;
    for (int64_t i = 0; i < n; ++i)
      SC_CHECK_ARG(ids[i] >= 0 && ids[i] < rows, "apply_unique: id ", ids[i], " of table '", table.name(),
                   "' is outside [0, ", rows, ") (num_embeddings); no row was updated");
  }
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
  const int64_t step = local_->apply_unique(table_index, ids, n, grads, step_);
  swap_lock.unlock();
  prune_if_due(step);
  return step;
}

}  // namespace sparsecore
