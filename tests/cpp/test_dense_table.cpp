// Tables with a known size through the C++ API alone: rows by index give the hash table's
// bits, ids outside [0, N) are refused or hashed, erase/clear/export and checkpoints work.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"

using namespace sparsecore;

namespace {
TableConfig adagrad_table(int64_t num_embeddings, OutOfRange out_of_range = OutOfRange::kError) {
  TableConfig c;
  c.name = "t";
  c.dim = 5;
  c.optimizer.kind = OptimizerKind::kAdagrad;
  c.optimizer.lr = 0.1f;
  c.num_embeddings = num_embeddings;
  c.out_of_range = out_of_range;
  return c;
}

std::vector<float> rows_of(const EmbeddingCollection& emb, const std::vector<int64_t>& ids) {
  std::vector<float> out(ids.size() * 5);
  emb.table(0).find_weights(ids.data(), static_cast<int64_t>(ids.size()), out.data());
  return out;
}
}  // namespace

TEST(DenseTable, TrainsLikeTheHashTableBitForBit) {
  constexpr int64_t kRows = 50;
  EmbeddingCollection hashed({adagrad_table(0)}, 3), dense({adagrad_table(kRows)}, 3);
  std::mt19937_64 rng(std::random_device{}());
  for (int step = 0; step < 5; ++step) {
    std::vector<int64_t> ids(40), offsets = {0, 10, 10, 25, 40};
    for (auto& id : ids) id = static_cast<int64_t>(rng() % kRows);
    std::vector<float> out_h(20), out_d(20), eval_h(20), eval_d(20), grad(20);
    const std::vector<GroupInput> in = {{0, ids.data(), 40, offsets.data(), 4, nullptr}};
    hashed.evaluate(in, {eval_h.data()});
    dense.evaluate(in, {eval_d.data()});
    EXPECT_EQ(eval_h, eval_d);
    auto bh = hashed.prepare(in, true);
    auto bd = dense.prepare(in, true);
    hashed.forward(*bh, {out_h.data()});
    dense.forward(*bd, {out_d.data()});
    EXPECT_EQ(out_h, out_d);
    for (auto& g : grad) g = static_cast<float>(static_cast<int64_t>(rng() % 2001) - 1000) / 500.0f;
    hashed.backward(*bh, {grad.data()});
    dense.backward(*bd, {grad.data()});
  }
  std::vector<int64_t> all(kRows);
  for (int64_t i = 0; i < kRows; ++i) all[i] = i;
  EXPECT_EQ(rows_of(hashed, all), rows_of(dense, all));
  EXPECT_EQ(hashed.table(0).size(), dense.table(0).size());
}

TEST(DenseTable, OutOfRangeIdsAreRefusedBeforeAnythingChanges) {
  EmbeddingCollection dense({adagrad_table(10)}, 1);
  std::vector<int64_t> ids = {1, 10}, offsets = {0, 2};
  EXPECT_THROW(dense.prepare({{0, ids.data(), 2, offsets.data(), 1, nullptr}}, true), InvalidArgument);
  EXPECT_THROW(dense.table(0).lookup_or_insert_weights(ids.data(), 2, std::vector<float>(10).data()), InvalidArgument);
  EXPECT_EQ(dense.table(0).size(), 0u);
  std::vector<float> grad(10, 1.0f);
  EXPECT_THROW(dense.apply_unique(0, ids.data(), 2, grad.data()), InvalidArgument);
  EXPECT_EQ(dense.table(0).size(), 0u);
}

TEST(DenseTable, HashModeMapsIdsIntoTheRange) {
  EmbeddingCollection dense({adagrad_table(7, OutOfRange::kHash)}, 1);
  std::vector<int64_t> ids = {-1, 1000, INT64_MIN, INT64_MAX, 3}, offsets = {0, 5};
  std::vector<float> out(5);
  auto batch = dense.prepare({{0, ids.data(), 5, offsets.data(), 1, nullptr}}, true);
  dense.forward(*batch, {out.data()});
  for (int64_t k : batch->groups[0].unique_keys) EXPECT_TRUE(k >= 0 && k < 7) << k;
  EXPECT_LE(dense.table(0).size(), 5u);
  EXPECT_EQ(hash_into_range(1000, 7, dense.table(0).seed()), dense.table(0).dense_id(1000));
}

TEST(DenseTable, EraseClearAndExport) {
  EmbeddingCollection dense({adagrad_table(100)}, 1);
  std::vector<int64_t> ids = {5, 99, 0};
  std::vector<float> rows(15);
  dense.table(0).lookup_or_insert_weights(ids.data(), 3, rows.data());
  EXPECT_EQ(dense.table(0).size(), 3u);
  std::vector<int64_t> keys(3);
  EXPECT_EQ(dense.table(0).export_rows(keys.data(), nullptr, nullptr, 3), 3);
  EXPECT_EQ(keys, (std::vector<int64_t>{0, 5, 99}));
  EXPECT_EQ(dense.erase(0, ids.data(), 1), 1);
  EXPECT_EQ(dense.table(0).size(), 2u);
  std::vector<float> zeros(5);
  dense.table(0).find_weights(ids.data(), 1, zeros.data());
  EXPECT_EQ(zeros, std::vector<float>(5, 0.0f));
  dense.table(0).clear();
  EXPECT_EQ(dense.table(0).size(), 0u);
}

TEST(DenseTable, CheckpointRoundTripAndSizeMismatch) {
  const auto dir = std::filesystem::temp_directory_path() / ("sc-dense-" + std::to_string(std::random_device{}()));
  EmbeddingCollection dense({adagrad_table(64)}, 9);
  std::vector<int64_t> ids = {1, 2, 63};
  std::vector<float> grads(15, 0.5f);
  dense.apply_unique(0, ids.data(), 3, grads.data());
  dense.save(dir.string());
  auto loaded = EmbeddingCollection::load(dir.string());
  EXPECT_EQ(loaded->config(0).num_embeddings, 64);
  EXPECT_EQ(rows_of(*loaded, ids), rows_of(dense, ids));
  EmbeddingCollection other({adagrad_table(65)}, 9);
  EXPECT_THROW(other.restore(dir.string()), InvalidArgument);
  EXPECT_EQ(other.table(0).size(), 0u);
  std::filesystem::remove_all(dir);
}

TEST(DenseTable, ConfigIsValidated) {
  TableConfig c = adagrad_table(-1);
  EXPECT_THROW(c.validate(), InvalidArgument);
  c.num_embeddings = kMaxNumEmbeddings + 1;
  EXPECT_THROW(c.validate(), InvalidArgument);
  c.num_embeddings = 12;
  c.out_of_range = OutOfRange::kHash;
  const TableConfig back = TableConfig::from_json(c.to_json());
  EXPECT_EQ(back.num_embeddings, 12);
  EXPECT_EQ(back.out_of_range, OutOfRange::kHash);
  EXPECT_FALSE(adagrad_table(0).to_json().contains("num_embeddings"));
}
