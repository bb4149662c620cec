// PsShard: the tables, dense variables and key-value entries of one global shard. On a
// server a shard belongs to one reactor and is only touched from its thread (no locks);
// embedded, one thread at a time drives it. Rows are kept by the existing engine: one
// single-table EmbeddingCollection per table, whose fused backward applies pushes.
//
// Synchronous pushes: the gradients of every worker for a step are kept until the last
// worker's push arrives, then concatenated in worker order and applied once (the engine sums
// a row's gradients in position order, so the result does not depend on arrival order).
// A step is kept per table; a push that cannot belong to the incomplete step (another step
// number, or a worker pushing it twice: a worker restarted) abandons that step - nothing of
// it is applied - and starts its own. The server then fails the abandoned pushes' replies.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::ps {

struct ShardLayout {
  int global_index = 0;
  int total_shards = 1;
};

class PsShard {
 public:
  explicit PsShard(ShardLayout layout) : layout_(layout) {}

  // Creating a table that exists with the same config is a no-op; another config throws.
  void create_table(const TableConfig& config, uint64_t seed);
  int dim(const std::string& table) const;
  // out (n, dim) float32. train: unknown ids are inserted; otherwise they read as zeros.
  void pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out);
  struct PushOutcome {
    bool complete = false;      // applied now (every waiting push of the table may be answered)
    int64_t aborted_step = -1;  // >= 0: this push abandoned that incomplete step of the table
  };
  // ids (n) unique, grads (n, dim). num_workers == 0: applied now. Otherwise kept until all
  // num_workers pushes of `step` arrived. Validates before anything changes.
  PushOutcome push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step,
                   uint32_t worker, uint32_t num_workers);
  // Abandons the incomplete synchronous step of every table (nothing of them is applied);
  // returns (table, step) of each one abandoned.
  std::vector<std::pair<std::string, int64_t>> abort_steps();
  // Whether a synchronous step of `table` waits for more pushes.
  bool step_pending(const std::string& table) const {
    auto it = tables_.find(table);
    return it != tables_.end() && !it->second.pending.empty();
  }

  std::vector<float>& dense(const std::string& name, int64_t size, float init);
  // w -= lr * grads; lr must be finite and >= 0 and grads finite, else nothing changes.
  void dense_push(const std::string& name, const float* grads, int64_t size, float lr);

  void kv_put(const std::string& key, Json value) { kv_[key] = std::move(value); }
  const Json* kv_get(const std::string& key) const;

  // Snapshot files of this shard under `dir` (a step directory): one checkpoint per table
  // in shard-<g>-of-<T>/<table>/, then the marker shard-<g>-of-<T>.json written last.
  void save(const std::string& dir, int64_t step, bool overwrite) const;
  // Replaces everything with the rows of the snapshot in `dir` whose buckets this shard owns
  // now (the snapshot may come from another number of shards). All files are read and
  // checked before anything is replaced. Returns the snapshot's step.
  int64_t restore(const std::string& dir);

  Json stats() const;
  const ShardLayout& layout() const { return layout_; }

 private:
  struct Table {
    std::unique_ptr<EmbeddingCollection> rows;
    uint64_t seed = 0;
    // Synchronous mode: contributions of the step in progress, by worker.
    int64_t sync_step = -1;
    std::map<uint32_t, std::pair<std::vector<int64_t>, std::vector<float>>> pending;
  };
  Table& table(const std::string& name);
  const Table& table(const std::string& name) const;
  static void apply(Table& t, const int64_t* ids, int64_t n, const float* grads);

  ShardLayout layout_;
  std::map<std::string, Table> tables_;
  std::map<std::string, std::vector<float>> dense_;
  std::map<std::string, Json> kv_;
};

// The marker name of global shard g of T, and whether every marker of a snapshot exists.
std::string shard_marker_name(int g, int total);
bool snapshot_complete(const std::string& dir);
// Newest complete step-<k> directory under `root`, or "" when there is none.
std::string latest_snapshot(const std::string& root);

}  // namespace sparsecore::ps
