// LocalRowStore: the row store of an embedded collection, its own EmbeddingTables (see
// row_store.h). Rows are resolved at prepare under one lock of each table shard (found, or
// inserted when training); backward sums each unique row's gradient and applies the table's
// fused update in place, all or nothing (an undo log of the records it changes).
//
// Ownership: the store refers to the collection's vector of tables (a restore swaps its
// contents); the collection outlives it. Thread-safety: as the collection's batch calls.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "sparsecore/ops/row_store.h"

namespace sparsecore {

class LocalRowStore final : public RowStore {
 public:
  explicit LocalRowStore(std::vector<std::unique_ptr<EmbeddingTable>>& tables) : tables_(tables) {}

  int plan_shards(int table) const override { return tables_[table]->hash_table().num_shards(); }
  void resolve_shard(int table, int shard, const int64_t* keys, int64_t count, std::byte** rows, bool train) override;
  void rows_for_pooling(const PreparedBatch& batch, std::vector<const std::byte* const*>& rows,
                        std::vector<RowStorage>& storage, std::vector<PodVector<std::byte*>>& refreshed) override;
  int64_t apply_gradients(const PreparedBatch& batch, const std::vector<const float*>& grads,
                          const std::vector<std::vector<float>>& bag_scale, std::atomic<int64_t>& step) override;

  // Rows whose gradients were already summed (EmbeddingCollection::apply_unique): ids (n)
  // distinct (checked by the caller), grads (n, dim). Unknown ids are inserted.
  int64_t apply_unique(int table, const int64_t* ids, int64_t n, const float* grads, std::atomic<int64_t>& step);

 private:
  struct RowRange {
    int table;
    int64_t rows;
  };
  using RangeUpdate = std::function<bool(int range, int64_t begin, int64_t end, int64_t step, float* scratch,
                                         std::byte* undo, bool stream_undo)>;
  // Advances `step` and runs `update` over row ranges of kRowsPerTask rows on the pool; when
  // any range left a row non-finite, every range is put back from the undo log (rows from
  // rows_of) and InvalidArgument names the tables. Returns the new step.
  int64_t update_rows(const std::vector<RowRange>& ranges, const std::function<std::byte* const*(int)>& rows_of,
                      const RangeUpdate& update, std::atomic<int64_t>& step);

  // Undo buffers of backward (the records of the rows it updates), kept between calls so
  // their pages stay faulted in.
  PodVector<std::byte> take_undo(size_t bytes);
  void give_back_undo(PodVector<std::byte>&& undo);

  std::vector<std::unique_ptr<EmbeddingTable>>& tables_;
  std::mutex undo_mutex_;
  std::vector<PodVector<std::byte>> undo_free_;
};

}  // namespace sparsecore
