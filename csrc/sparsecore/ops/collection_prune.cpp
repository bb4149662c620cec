// Pruning of Group Lasso tables (EmbeddingCollection::prune, embedding_collection.h).
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore {
namespace {

// Whether every weight of a row is zero: fp32 +0/-0, or fp16 with no bit but the sign set.
bool zero_weights(const EmbeddingTable& table, const std::byte* row) {
  const int dim = table.dim();
  if (table.storage() == RowStorage::kFloat16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
    for (int d = 0; d < dim; ++d)
      if (h[d] & 0x7fffu) return false;
    return true;
  }
  const float* w = reinterpret_cast<const float*>(row);
  for (int d = 0; d < dim; ++d)
    if (w[d] != 0.0f) return false;
  return true;
}

}  // namespace

int64_t EmbeddingCollection::prune_table(EmbeddingTable& table) {
  if (table.config().optimizer.kind != OptimizerKind::kGroupLasso) return 0;
  std::vector<int64_t> zero;
  table.for_each_in_shards(0, table.hash_table().num_shards(), [&](int64_t key, const std::byte* row) {
    if (zero_weights(table, row)) zero.push_back(key);
  });
  if (zero.empty()) return 0;
  return table.erase(zero.data(), static_cast<int64_t>(zero.size()));
}

std::vector<int64_t> EmbeddingCollection::prune() {
  require_local("prune");
  std::unique_lock swap_lock(swap_mutex_);  // no batch call holds a row pointer meanwhile
  std::vector<int64_t> removed(tables_.size(), 0);
  for (size_t t = 0; t < tables_.size(); ++t) removed[t] = prune_table(*tables_[t]);
  return removed;
}

void EmbeddingCollection::prune_if_due(int64_t step) {
  if (!local_ || step <= 0) return;
  bool due = false;
  {
    std::shared_lock check(swap_mutex_);
    for (const auto& t : tables_) due |= t->config().prune_every > 0 && step % t->config().prune_every == 0;
  }
  if (!due) return;
  std::unique_lock swap_lock(swap_mutex_);
  for (const auto& t : tables_)
    if (t->config().prune_every > 0 && step % t->config().prune_every == 0) prune_table(*t);
}

}  // namespace sparsecore
