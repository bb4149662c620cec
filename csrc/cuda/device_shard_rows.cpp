#include "sparsecore/cuda/device_shard_rows.h"

#include <algorithm>
#include <vector>

#include "sparsecore/core/error.h"

namespace sparsecore::cuda {
namespace {

// The undo of one push: the rows saved before it and the step then.
class RowsUndo final : public ps::DeviceRows::Undo {
 public:
  RowsUndo(DeviceEmbeddingCollection& rows, std::unique_ptr<DeviceSavedRows> saved)
      : rows_(rows), saved_(std::move(saved)) {}
  void apply() override { rows_.restore_rows(*saved_); }

 private:
  DeviceEmbeddingCollection& rows_;
  std::unique_ptr<DeviceSavedRows> saved_;
};

class DeviceShardRows final : public ps::DeviceRows {
 public:
  explicit DeviceShardRows(std::unique_ptr<DeviceEmbeddingCollection> rows) : rows_(std::move(rows)) {}

  void pull(const int64_t* ids, int64_t n, bool train, float* out) override {
    if (train && refusing()) {
      rows_->shard_pull(0, ids, n, out);
      return;
    }
    rows_->lookup(0, ids, n, out, train);
    if (train) forget_deleted(ids, n);
  }

  std::unique_ptr<Undo> apply_unique(const int64_t* ids, int64_t n, const float* grads) override {
    // A table with admission or a capacity updates the rows the CPU shard's rules give the
    // ids (those without one drop their gradients); the others' rows are inserted by the save.
    if (refusing() && n > 0) {
      const std::vector<unsigned char> has = rows_->shard_update_rows(0, ids, n);
      if (std::find(has.begin(), has.end(), 0) != has.end()) {
        const auto dim = static_cast<size_t>(rows_->config(0).dim);
        kept_ids_.clear();
        kept_grads_.clear();
        for (int64_t i = 0; i < n; ++i) {
          if (!has[static_cast<size_t>(i)]) continue;
          kept_ids_.push_back(ids[i]);
          kept_grads_.insert(kept_grads_.end(), grads + static_cast<size_t>(i) * dim,
                             grads + static_cast<size_t>(i + 1) * dim);
        }
        ids = kept_ids_.data();
        grads = kept_grads_.data();
        n = static_cast<int64_t>(kept_ids_.size());
      }
    }
    // The rows as they are (unknown ids inserted first, as the update would) and the step, on
    // the device, so the update can be taken back.
    auto undo = std::make_unique<RowsUndo>(*rows_, rows_->save_rows(0, ids, n));
    forget_deleted(ids, n);
    int64_t bad = 0;
    try {
      bad = rows_->update_rows(0, ids, n, grads);
    } catch (...) {
      undo->apply();
      throw;
    }
    if (bad != 0) {
      undo->apply();
      throw InvalidArgument("the update of table '" + rows_->config(0).name +
                            "' made rows non-finite (a gradient too large for the optimizer overflowed a weight or its "
                            "state); no row was updated");
    }
    return undo;
  }

  int64_t erase(const int64_t* ids, int64_t n) override { return rows_->erase(0, ids, n); }
  int64_t expire() override { return rows_->expire(0); }
  int64_t step() const override { return rows_->step(); }
  void set_step(int64_t step) override { rows_->set_step(step); }
  std::unique_ptr<EmbeddingCollection> to_host() const override { return rows_->to_host(); }
  int64_t size() const override { return rows_->table_size(0); }
  const Expiry* expiry() const override { return rows_->expiry(0); }
  const Admission* admission() const override { return rows_->admission(0); }

  ExportTable collect_export(int64_t since, int64_t version) override {
    if (rows_->step() < version) rows_->set_step(version);
    ExportTable t;
    t.config = rows_->config(0);
    t.seed = table_seed(rows_->seed(), t.config.name);
    if (since >= 0) t.deleted = rows_->deleted_keys(0).deleted_since(since, t.config.name);
    DeviceEmbeddingCollection::Export e = rows_->export_rows(0, since);
    t.keys = std::move(e.keys);
    t.weights = std::move(e.weights);
    return t;
  }
  int64_t memory_bytes() const override { return rows_->memory_bytes(); }

 private:
  // Every key of ids (n) has a row now: one inserted again is no longer deleted, as on the
  // CPU store (EmbeddingTable::init_row), so a delta never lists a key as both.
  void forget_deleted(const int64_t* ids, int64_t n) {
    DeletedKeysLog& log = rows_->deleted_keys(0);
    for (int64_t i = 0; i < n; ++i) log.forget(ids[i]);
  }
  bool refusing() const { return rows_->admission(0) || rows_->config(0).expiry.capacity > 0; }

  std::unique_ptr<DeviceEmbeddingCollection> rows_;
  std::vector<int64_t> kept_ids_;
  std::vector<float> kept_grads_;
};

}  // namespace

ps::DeviceRowsFactory device_rows_factory(Backend backend, int device) {
  // The emulator runs every thread of a block as a thread of its own: small blocks, few of them.
  const LaunchLimits limits = backend == Backend::kEmulated ? LaunchLimits{64, 4} : LaunchLimits{};
  return [backend, device, limits](const EmbeddingCollection& host) -> std::unique_ptr<ps::DeviceRows> {
    SC_CHECK_ARG(host.num_tables() == 1, "a device shard keeps one table per collection, got ", host.num_tables());
    const TableConfig& c = host.config(0);
    SC_CHECK_ARG(!c.dense(), "table '", c.name,
                 "': num_embeddings runs on CPU parameter servers only; a device server (--device cuda) keeps "
                 "hash tables");
    auto rows = DeviceEmbeddingCollection::from_host(host, c.storage, backend, limits, device);
    // This server shard's part of a capacity (PsShard::share_capacity) per hash shard.
    if (const Expiry* from = host.table(0).expiry(); from && from->capacity() > 0) {
      const int shards = 1 << c.shard_bits;
      std::vector<int64_t> caps(static_cast<size_t>(shards));
      for (int s = 0; s < shards; ++s) caps[static_cast<size_t>(s)] = from->shard_capacity(s, shards);
      rows->expiry(0)->set_shard_capacities(std::move(caps));
    }
    return std::make_unique<DeviceShardRows>(std::move(rows));
  };
}
}  // namespace sparsecore::cuda
