#include "sparsecore/cuda/device_shard_rows.h"

#include <numeric>
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

  void pull(const int64_t* ids, int64_t n, bool train, float* out) override { rows_->lookup(0, ids, n, out, train); }

  std::unique_ptr<Undo> apply_unique(const int64_t* ids, int64_t n, const float* grads) override {
    // The rows as they are (unknown ids inserted first, as the update would) and the step, on
    // the device, so the update can be taken back.
    auto undo = std::make_unique<RowsUndo>(*rows_, rows_->save_rows(0, ids, n));
    // One bag per id (none for an empty push, which still counts as an update, as on the CPU): the unique gradient of
    // each id is its bag's gradient times 1.
    offsets_.resize(static_cast<size_t>(n) + 1);
    std::iota(offsets_.begin(), offsets_.end(), int64_t{0});
    GroupInput in;
    in.table = 0;
    in.ids = ids;
    in.num_ids = n;
    in.offsets = offsets_.data();
    in.batch_size = n;
    try {
      auto batch = rows_->prepare({in}, /*train=*/true);
      const float none = 0.0f;
      rows_->backward(*batch, {n ? grads : &none});
    } catch (...) {
      undo->apply();
      throw;
    }
    // An overflowed update shows in the rows' weights or state (the rules write them all).
    if (rows_->count_non_finite_rows(0, ids, n) != 0) {
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
  std::unique_ptr<DeviceEmbeddingCollection> rows_;
  std::vector<int64_t> offsets_;
};

}  // namespace

ps::DeviceRowsFactory device_rows_factory(Backend backend, int device) {
  // The emulator runs every thread of a block as a thread of its own: small blocks, few of them.
  const LaunchLimits limits = backend == Backend::kEmulated ? LaunchLimits{64, 4} : LaunchLimits{};
  return [backend, device, limits](const EmbeddingCollection& host) -> std::unique_ptr<ps::DeviceRows> {
    SC_CHECK_ARG(host.num_tables() == 1, "a device shard keeps one table per collection, got ", host.num_tables());
    for (int t = 0; t < host.num_tables(); ++t) {
      const TableConfig& c = host.config(t);
      SC_CHECK_ARG(!c.admission.enabled(), "table '", c.name,
                   "': feature admission runs on CPU parameter servers only, not on a device server (--device cuda)");
      SC_CHECK_ARG(!c.dense(), "table '", c.name,
                   "': num_embeddings runs on CPU parameter servers only; a device server (--device cuda) keeps "
                   "hash tables");
      SC_CHECK_ARG(c.expiry.capacity == 0 && c.expiry.scan_per_step == 0, "table '", c.name,
                   "': a row capacity (eviction) and incremental expiry scans run on CPU parameter servers only, "
                   "not on a device server (--device cuda)");
    }
    return std::make_unique<DeviceShardRows>(
        DeviceEmbeddingCollection::from_host(host, host.config(0).storage, backend, limits, device));
  };
}

}  // namespace sparsecore::cuda
