// PsShard: the tables, dense variables and key-value entries of one global shard. On a
// server a shard belongs to one reactor and is only touched from its thread (no locks);
// embedded, one thread at a time drives it. Rows are kept by the existing engine: one
// single-table EmbeddingCollection per table. A push carries distinct ids with each row's
// gradient already summed by the worker (its collection's backward); the table applies its rule
// once per row (EmbeddingCollection::apply_unique).
//
// A push may carry several tables (push_tables); it is checked whole before anything changes
// and applied all or nothing: when one table's update fails (it would make a row non-finite),
// the tables applied before it are put back as they were.
//
// With a DeviceRowsFactory (a server started with --device cuda) every table's rows live in
// a device row store (device_rows.h): pulls, pushes, erase and expiry run there, pushes all
// or nothing as on the CPU (the device store keeps a device copy of the rows a push
// changes until the push is complete); statistics read counts and exports the changed rows
// only; snapshots read a CPU copy of every row, so they keep the CPU formats.
//
// Synchronous pushes: the gradients of every worker for a step are kept until the last
// worker's push arrives, then each row's gradients are summed in worker order and applied
// once (the result does not depend on arrival order).
// A step is kept per table; a push that cannot belong to the incomplete step (another step
// number, or a worker pushing it twice: a worker restarted) abandons that step - nothing of
// it is applied - and starts its own. The server then fails the abandoned pushes' replies.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/device_rows.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "sparsecore/table/export_table.h"

namespace sparsecore::ps {

// Limits of what one request can make a shard hold: a table's hash shards only matter for
// lock granularity inside a server shard that one thread drives, and each costs about half
// a KiB before it holds a row (kMaxHashShards of them: 32 MiB).
inline constexpr int kMaxServerShardBits = 8;
inline constexpr size_t kMaxTablesPerShard = 1024;
inline constexpr int64_t kMaxHashShards = 1 << 16;  // over all tables of a server shard

struct ShardLayout {
  int global_index = 0;
  int total_shards = 1;
};

// A shard's part of a save, encoded in memory on the shard's thread (PsShard::encode_snapshot)
// and written into the save's staging directory later, on any thread.
struct SnapshotPart {
  std::string shard_dir;                                          // shard-<g>-of-<T>
  std::string marker_name;                                        // shard-<g>-of-<T>.json
  std::vector<std::pair<std::string, EncodedCheckpoint>> tables;  // table-<i> -> its files
  std::vector<float> dense;                                       // shard_dir/dense.bin
  std::string marker;                                             // JSON text, written last
  void write(const std::string& staging) const;
};

class PsShard {
 public:
  // device_rows: where tables keep their rows (empty: this shard's own EmbeddingTables).
  explicit PsShard(ShardLayout layout, DeviceRowsFactory device_rows = {})
      : layout_(layout), device_rows_(std::move(device_rows)) {}

  // Creating a table that exists with the same config is a no-op; another config throws.
  // shard_bits is bounded by kMaxServerShardBits, the table count by kMaxTablesPerShard and
  // the tables' hash shards together by kMaxHashShards.
  void create_table(const TableConfig& config, uint64_t seed);
  int dim(const std::string& table) const;
  // out (n, dim) float32. train: unknown ids are inserted; otherwise they read the table's default row.
  void pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out);
  // Checks the ids of a request: every id must belong to this shard (the cluster's routing,
  // ps_protocol.h); for a table with num_embeddings, a pull's ids must also be row indices or
  // ids its out_of_range maps into the range, a push's row indices (a worker maps ids before
  // it sends them). InvalidArgument names the table and the id. Called for every table of a
  // request before any is read or changed.
  void check_ids(std::string_view table, const int64_t* ids, int64_t n, bool push) const;
  struct PushOutcome {
    bool complete = false;      // applied now (every waiting push of the table may be answered)
    int64_t aborted_step = -1;  // >= 0: this push abandoned that incomplete step of the table
  };
  // ids (n) distinct (a repeated id is refused), grads (n, dim) each row's summed gradient.
  // num_workers == 0: applied now. Otherwise kept until all
  // num_workers pushes of `step` arrived. Validates before anything changes.
  PushOutcome push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step,
                   uint32_t worker, uint32_t num_workers);
  // One table's part of push_tables; the pointers are the caller's until the call returns.
  struct TableUpdate {
    std::string_view table;
    const int64_t* ids = nullptr;  // (n) distinct
    int64_t n = 0;
    const float* grads = nullptr;  // (n, dim)
  };
  // push() of several distinct tables at once, one outcome per table. Every table is checked
  // (exists, named once, ids distinct, gradients finite, worker in range) before anything
  // changes. Asynchronous: all applied, or none (InvalidArgument naming the tables whose
  // update overflowed). Synchronous: each table keeps its step as push() does; the tables
  // this push completes are applied together, all or none.
  std::vector<PushOutcome> push_tables(std::span<const TableUpdate> updates, int64_t step, uint32_t worker,
                                       uint32_t num_workers);
  // Abandons the incomplete synchronous step of every table (nothing of them is applied);
  // returns (table, step) of each one abandoned.
  std::vector<std::pair<std::string, int64_t>> abort_steps();
  // Whether a synchronous step of `table` waits for more pushes.
  bool step_pending(const std::string& table) const {
    auto it = tables_.find(table);
    return it != tables_.end() && !it->second.pending.empty();
  }

  // Removes ids (n, all of this shard; checked as a pull's) from `table`; returns how many
  // were present.
  int64_t erase(const std::string& table, const int64_t* ids, int64_t n);
  // Removes the rows of `table` that its expiry rules name now; returns how many.
  int64_t expire(const std::string& table);

  std::vector<float>& dense(const std::string& name, int64_t size, float init);
  // w -= lr * grads; lr must be finite and >= 0 and grads finite, else nothing changes.
  void dense_push(const std::string& name, const float* grads, int64_t size, float lr);

  // Dense variables with an optimizer (ps_shard_dense.cpp): created from initial values
  // (size in [1, 2^28], finite) with one of the update rules of optim/update_rules.h, the
  // whole variable updated as one row. Creating one that exists with the same size and
  // optimizer is a no-op; another size or optimizer, or a plain variable of dense(), throws.
  void dense_create(const std::string& name, const float* values, int64_t size, const OptimizerConfig& config);
  // The variable's rule applied to grads (size, finite): at once when num_workers == 0,
  // else once all num_workers pushed `step`, to their sum in worker order (a push that cannot
  // belong to the incomplete step abandons it, as push() does). Applied all or nothing (an
  // update that would make a value non-finite throws and changes nothing).
  PushOutcome dense_step(const std::string& name, const float* grads, int64_t size, int64_t step, uint32_t worker,
                         uint32_t num_workers);
  // Abandons every incomplete synchronous dense step; returns (variable, step) of each.
  std::vector<std::pair<std::string, int64_t>> abort_dense_steps();

  void kv_put(const std::string& key, Json value) { kv_[key] = std::move(value); }
  const Json* kv_get(const std::string& key) const;

  // Writes this shard's part of a save into `staging` (ps_snapshot.h): one collection
  // checkpoint per table in shard-<g>-of-<T>/table-<i>/, then the marker
  // shard-<g>-of-<T>.json (step, save id, tables, kv, dense variables with their optimizer
  // state and update count, whose floats are in shard-<g>-of-<T>/dense.bin).
  void write_snapshot(const std::string& staging, int64_t step, const std::string& save_id) const {
    encode_snapshot(step, save_id).write(staging);
  }
  // The same part in memory (a copy of every row), for a writer on another thread.
  SnapshotPart encode_snapshot(int64_t step, const std::string& save_id) const;
  // Replaces everything with the rows of the complete snapshot in `dir` whose buckets this
  // shard owns now (the snapshot may come from another number of shards), and the dense
  // variables placed on it: on the same layout the ones it saved, on another the ones
  // place_restored_dense (ps_snapshot.h) gives it. All files are read and checked before
  // anything is replaced. Returns the snapshot's step.
  int64_t restore(const std::string& dir);
  // Restore across shards, all or nothing: prepare_restore reads and checks the snapshot into
  // a staged copy (this shard unchanged); commit_restore swaps it in; abort_restore drops it.
  // `restore_id` pairs the phases of one restore (a later prepare replaces an earlier one).
  int64_t prepare_restore(const std::string& dir, const std::string& restore_id);
  // prepare_restore in two halves: `loaded` is a fresh shard of this layout that restored the
  // snapshot (on any thread); stage_restore keeps it as the prepared restore.
  void stage_restore(std::unique_ptr<PsShard> loaded, const std::string& restore_id);
  void commit_restore(const std::string& restore_id);
  void abort_restore(const std::string& restore_id);

  // Every table's rows changed after `since` (< 0: every row) and the keys removed after it,
  // for an export at `version` (table/export_table.h), in table-name order. Raises each
  // table's step to `version` first, so what changes later is stamped after it.
  std::vector<ExportTable> collect_export(int64_t since, int64_t version);

  Json stats() const;
  const ShardLayout& layout() const { return layout_; }
  const DeviceRowsFactory& device_rows() const { return device_rows_; }

 private:
  struct Table {
    // The table's config and, without device rows, its rows.
    std::unique_ptr<EmbeddingCollection> rows;
    std::unique_ptr<DeviceRows> device;  // the rows, when they live in a device store
    uint64_t seed = 0;
    // Synchronous mode: contributions of the step in progress, by worker.
    int64_t sync_step = -1;
    std::map<uint32_t, std::pair<std::vector<int64_t>, std::vector<float>>> pending;
  };
  Table& table(std::string_view name);
  const Table& table(std::string_view name) const;
  // Applies each (table, ids, grads) with apply_unique, all or none (see push_tables).
  static void apply_all_or_nothing(const std::vector<std::pair<Table*, TableUpdate>>& updates);
  // Gives a table with a capacity this shard's part of it: capacity / total_shards rows (the
  // first capacity % total_shards shards one more), so a cluster never holds more than the
  // capacity, split over the table's hash shards in proportion to the buckets of this
  // shard's range each covers (the only keys it ever holds). Throws `Exception` when that
  // leaves a covering hash shard no row.
  template <typename Exception>
  void share_capacity(EmbeddingTable& table) const;
  // Throws (`Exception`) unless a table of `config` fits beside `tables` (the limits above).
  template <typename Exception>
  static void check_room(const std::map<std::string, Table, std::less<>>& tables, const TableConfig& config);

  // The rows of `t` as a CPU collection: its own, or a copy of its device rows in `copy`.
  static const EmbeddingCollection& host_rows(const Table& t, std::unique_ptr<EmbeddingCollection>& copy);

  ShardLayout layout_;
  DeviceRowsFactory device_rows_;
  std::map<std::string, Table, std::less<>> tables_;
  std::map<std::string, std::vector<float>> dense_;
  struct DenseRule {  // the optimizer of a dense variable made by dense_create
    OptimizerConfig config;
    std::vector<float> state;  // config.state_dim(size)
    uint32_t count = 0;        // updates applied (Adam's bias-correction step)
    int64_t sync_step = -1;
    std::map<uint32_t, std::vector<float>> pending;  // synchronous: gradients of the step, by worker
  };
  std::map<std::string, DenseRule> dense_rules_;
  // The dense part of a save (ps_shard_dense.cpp): marker entries and dense.bin's floats.
  Json encode_dense(std::vector<float>& file) const;
  // Reads `wanted` (entries of the format-2 marker whose shard directory is `shard_dir`) into
  // `dense` and `rules`, after checking dense.bin's size against `total_floats` and each
  // variable's checksum (CorruptData otherwise).
  static void read_dense(const std::string& shard_dir, int64_t total_floats,
                         const std::vector<const DenseEntry*>& wanted, std::map<std::string, std::vector<float>>& dense,
                         std::map<std::string, DenseRule>& rules);
  std::map<std::string, Json> kv_;
  std::unique_ptr<PsShard> staged_;  // a prepared restore
  std::string staged_id_;
};

}  // namespace sparsecore::ps
