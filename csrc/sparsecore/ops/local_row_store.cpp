#include "sparsecore/ops/local_row_store.h"

#include <algorithm>
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ops/fused_update.h"

namespace sparsecore {
namespace {

constexpr int64_t kRowsPerTask = 256;

}  // namespace

void LocalRowStore::resolve_shard(int table_index, int shard_index, const int64_t* keys, int64_t count,
                                  std::byte** rows, bool train) {
  EmbeddingTable& table = *tables_[table_index];
  HashTable::Shard& shard = table.hash_table().shard(shard_index);
  if (DenseRows* dense = table.dense()) {
    // The planner checked (or mapped) every id into [0, num_embeddings).
    int64_t missing = 0;
    for (int64_t i = 0; i < count; ++i) {
      rows[i] = dense->find(keys[i]);
      missing += rows[i] == nullptr;
    }
    if (train && missing > 0) {
      Admission* admission = table.admission();
      auto lock = shard.write_lock();
      for (int64_t i = 0; i < count; ++i) {
        if (rows[i]) continue;
        std::byte* row = dense->row(keys[i]);
        if (!dense->present(keys[i])) {
          if (admission && !admission->sight(keys[i])) continue;
          table.init_row(keys[i], row);
          dense->mark(keys[i]);
        }
        rows[i] = row;
      }
    }
    return;
  }
  int64_t missing = 0;
  {
    auto lock = shard.read_lock();
    missing = shard.find_batch(keys, count, rows);
  }
  if (train && missing > 0) {
    auto lock = shard.write_lock();
    if (!table.may_refuse_rows()) {
      shard.insert_absent(keys, count, rows, table.row_init());
      return;
    }
    // Rows only for the ids admitted at this sighting that the shard has room for; the others
    // stay null (read as zeros, their gradients dropped at backward).
    table.insert_missing_locked(shard_index, keys, count, rows, /*sight=*/true);
  }
}

void LocalRowStore::rows_for_pooling(const PreparedBatch& batch, std::vector<const std::byte* const*>& rows,
                                     std::vector<RowStorage>& storage, std::vector<PodVector<std::byte*>>& refreshed) {
  const size_t num_groups = batch.groups.size();
  rows.assign(num_groups, nullptr);
  storage.assign(num_groups, RowStorage::kFloat32);
  refreshed.resize(num_groups);
  for (size_t gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    const EmbeddingTable& table = *tables_[g.table];
    storage[gi] = table.storage();
    // If a table changed since prepare (erase, restore), rows are looked up again by key.
    if (table.generation() != g.table_generation) {
      refreshed[gi].resize(g.unique_keys.size());
      table.find_rows(g.unique_keys.data(), g.num_unique(), refreshed[gi].data());
      rows[gi] = refreshed[gi].data();
    } else {
      rows[gi] = g.unique_rows.data();
    }
    // Absent rows (ids not admitted, unknown ids in evaluation) read the table's default row.
    if (const std::byte* fallback = table.default_row()) {
      const std::byte* const* r = rows[gi];
      const int64_t u = g.num_unique();
      int64_t first_absent = 0;
      while (first_absent < u && r[first_absent]) ++first_absent;
      if (first_absent == u) continue;
      PodVector<std::byte*>& out = refreshed[gi];
      if (out.data() != r) {
        out.resize(u);
        for (int64_t i = 0; i < u; ++i) out[i] = const_cast<std::byte*>(r[i]);
      }
      for (int64_t i = first_absent; i < u; ++i)
        if (!out[i]) out[i] = const_cast<std::byte*>(fallback);
      rows[gi] = out.data();
    }
  }
}

int64_t LocalRowStore::apply_gradients(const PreparedBatch& batch, const std::vector<const float*>& grads,
                                       const std::vector<std::vector<float>>& bag_scale, std::atomic<int64_t>& step) {
  const int num_groups = static_cast<int>(batch.groups.size());
  // Rows released since prepare (erase, restore) are looked up again (and re-created).
  std::vector<PodVector<std::byte*>> refreshed(num_groups);
  for (int gi = 0; gi < num_groups; ++gi) {
    const PreparedGroup& g = batch.groups[gi];
    EmbeddingTable& table = *tables_[g.table];
    if (table.generation() != g.table_generation) {
      refreshed[gi].resize(g.unique_keys.size());
      if (table.may_refuse_rows())
        table.find_rows(g.unique_keys.data(), g.num_unique(), refreshed[gi].data());
      else
        table.find_or_insert_rows(g.unique_keys.data(), g.num_unique(), refreshed[gi].data());
    }
  }
  std::vector<RowRange> ranges;
  for (int gi = 0; gi < num_groups; ++gi) ranges.push_back({batch.groups[gi].table, batch.groups[gi].num_unique()});
  auto rows_of = [&](int gi) -> std::byte* const* {
    return refreshed[gi].empty() ? batch.groups[gi].unique_rows.data() : refreshed[gi].data();
  };
  // Ids not admitted (or refused for want of room) have no row: their gradients are dropped
  // (the update skips null rows) and counted.
  for (int gi = 0; gi < num_groups; ++gi) {
    EmbeddingTable& table = *tables_[batch.groups[gi].table];
    if (!table.may_refuse_rows()) continue;
    std::byte* const* r = rows_of(gi);
    int64_t dropped = 0;
    for (int64_t u = 0; u < batch.groups[gi].num_unique(); ++u) dropped += r[u] == nullptr;
    table.count_dropped(dropped);
  }
  return update_rows(
      ranges, [&](int gi) { return rows_of(gi); },
      [&](int gi, int64_t begin, int64_t end, int64_t now, float* scratch, std::byte* undo, bool stream) {
        const PreparedGroup& g = batch.groups[gi];
        return kernels::backward_update(g, *tables_[g.table], rows_of(gi), grads[gi], bag_scale[gi].data(), begin, end,
                                        now, scratch, undo, stream);
      },
      step);
}

int64_t LocalRowStore::apply_unique(int table_index, const int64_t* ids, int64_t n, const float* grads,
                                    std::atomic<int64_t>& step) {
  EmbeddingTable& table = *tables_[table_index];
  PodVector<std::byte*> rows(n);
  if (n > 0) {
    if (table.admission()) {
      // Only admitted ids have rows; the gradients of the others are dropped and counted.
      table.find_rows(ids, n, rows.data());
      int64_t dropped = 0;
      for (int64_t i = 0; i < n; ++i) dropped += rows[i] == nullptr;
      table.count_dropped(dropped);
    } else if (table.may_refuse_rows()) {
      // Rows for the ids the table has room for; the gradients of the others are dropped.
      table.find_or_insert_rows(ids, n, rows.data());
      int64_t dropped = 0;
      for (int64_t i = 0; i < n; ++i) dropped += rows[i] == nullptr;
      table.count_dropped(dropped);
    } else {
      table.find_or_insert_rows(ids, n, rows.data());
    }
  }
  return update_rows(
      {{table_index, n}}, [&](int) -> std::byte* const* { return rows.data(); },
      [&](int, int64_t begin, int64_t end, int64_t now, float* scratch, std::byte* undo, bool stream) {
        return kernels::apply_row_gradients(table, rows.data(), grads, begin, end, now, scratch, undo, stream);
      },
      step);
}

int64_t LocalRowStore::update_rows(const std::vector<RowRange>& ranges,
                                   const std::function<std::byte* const*(int)>& rows_of, const RangeUpdate& update,
                                   std::atomic<int64_t>& step_counter) {
  const int64_t step = step_counter.fetch_add(1, std::memory_order_acq_rel) + 1;
  // Every table reaches the step, not only those updated: rows inserted from now on are
  // stamped after it (EmbeddingTable::init_row).
  for (auto& t : tables_) t->set_step(step);
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
    step_counter.compare_exchange_strong(expected, step - 1, std::memory_order_acq_rel);
    give_back_undo(std::move(undo));
    throw InvalidArgument("the update of table(s) " + overflowed +
                          " made rows non-finite (a gradient too large for the optimizer overflowed a weight or "
                          "its state); no row was updated");
  }
  give_back_undo(std::move(undo));
  // Every table ages with the collection's step, whether or not this update touched it; the
  // incremental expiry examines its next window of rows.
  for (auto& table : tables_) {
    table->set_step(step);
    if (const Expiry* expiry = table->expiry()) table->expire_some(expiry->config().scan_per_step);
  }
  return step;
}

PodVector<std::byte> LocalRowStore::take_undo(size_t bytes) {
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

void LocalRowStore::give_back_undo(PodVector<std::byte>&& undo) {
  std::lock_guard<std::mutex> lock(undo_mutex_);
  if (undo_free_.size() < 4) undo_free_.push_back(std::move(undo));
}

}  // namespace sparsecore
