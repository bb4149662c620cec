// RemoteRowStore: the row store of a collection whose tables live on parameter servers (see
// ops/row_store.h). prepare only plans (no request); the unique rows of every group of a
// batch are pulled when its pooled rows are first needed (its first forward), so a batch
// prepared ahead still sees the updates of the steps trained before it, with every request
// in flight at once, into a buffer the batch owns; pooling then runs the collection's own
// kernels over them. backward sums each unique id's gradient with the fused backward's own
// code and pushes the sums of every group with the collection's step (in synchronous mode a
// push returns once every worker's push of that step was applied), then advances the step.
// Results equal the embedded collection's bit for bit.
//
// Ownership: the client must outlive the store. Thread-safety: as the collection's batch
// calls (the client serialises what it must).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/ps_client.h"

namespace sparsecore::ps {

class RemoteRowStore final : public RowStore {
 public:
  // tables: the collection's configs, in its order (they must exist on the servers).
  RemoteRowStore(PsClient& client, const std::vector<TableConfig>& tables);

  int plan_shards(int) const override { return plan_shards_; }
  void resolve_shard(int, int, const int64_t*, int64_t, std::byte**, bool) override {}
  void rows_for_pooling(const PreparedBatch& batch, std::vector<const std::byte* const*>& rows,
                        std::vector<RowStorage>& storage, std::vector<PodVector<std::byte*>>& refreshed) override;
  int64_t apply_gradients(const PreparedBatch& batch, const std::vector<const float*>& grads,
                          const std::vector<std::vector<float>>& bag_scale, std::atomic<int64_t>& step) override;

 private:
  // A step's pull and push of every table (PsClient::pull_tables / push_tables).
  void pull(const std::vector<TableSlice>& slices, bool train);
  void push(const std::vector<TableSlice>& slices, int64_t step);
  // g's shard starts when its plan used the servers' shard count (else null: the client groups).
  const int64_t* grouped_by_shard(const PreparedGroup& g) const;

  PsClient& client_;
  std::vector<std::string> names_;
  int plan_shards_ = 1;  // the servers' shards: a plan's groups are split as the requests are
};

// A collection over the servers of `client`: creates each table on the servers (a no-op where
// it exists with this config and seed) and returns the collection with a RemoteRowStore.
// `client` must outlive it.
std::unique_ptr<EmbeddingCollection> remote_collection(std::vector<TableConfig> tables, uint64_t seed,
                                                       PsClient& client);

}  // namespace sparsecore::ps
