// Incremental export from C++: full + deltas applied by a Subscriber equal a fresh full
// export on random streams of inserts, updates and erasures; every damaged export is refused
// with a typed error and changes nothing; retention of deleted keys.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/serving/export.h"
#include "sparsecore/serving/subscriber.h"
#include "temp_dir_test.h"

using namespace sparsecore;
using namespace sparsecore::serving;
namespace fs = std::filesystem;

namespace {

using ExportDelta = sparsecore::test_support::TempDirTest;

std::vector<TableConfig> tables() {
  TableConfig a;
  a.name = "a";
  a.dim = 3;
  a.shard_bits = 2;
  a.optimizer.kind = OptimizerKind::kAdagrad;
  TableConfig b = a;
  b.name = "b";
  b.dim = 18;
  b.num_embeddings = 500;
  return {a, b};
}

// One random operation per call: insert by lookup, update (apply_unique), or erase.
void random_ops(EmbeddingCollection& c, std::mt19937_64& rng, int count) {
  for (int op = 0; op < count; ++op) {
    const int t = static_cast<int>(rng() % 2);
    EmbeddingTable& table = c.table(t);
    std::vector<int64_t> ids;
    for (int i = 0; i < 20; ++i) ids.push_back(static_cast<int64_t>(rng() % 400));
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    const int kind = static_cast<int>(rng() % 3);
    if (kind == 0) {
      std::vector<float> out(ids.size() * table.dim());
      table.lookup_or_insert_weights(ids.data(), static_cast<int64_t>(ids.size()), out.data());
    } else if (kind == 1) {
      std::vector<float> grads(ids.size() * table.dim());
      for (auto& g : grads) g = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 100.0f;
      c.apply_unique(t, ids.data(), static_cast<int64_t>(ids.size()), grads.data());
    } else {
      c.erase(t, ids.data(), static_cast<int64_t>(ids.size() / 2));
    }
  }
}

void expect_same_rows(const Subscriber& s, const ExportPart& full) {
  for (const auto& t : full.tables) {
    std::vector<int64_t> keys;
    std::vector<float> weights;
    s.rows(t.config.name, keys, weights);
    std::vector<size_t> order(t.keys.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return t.keys[x] < t.keys[y]; });
    ASSERT_EQ(keys.size(), order.size()) << t.config.name;
    const size_t dim = static_cast<size_t>(t.config.dim);
    for (size_t i = 0; i < order.size(); ++i) {
      ASSERT_EQ(keys[i], t.keys[order[i]]);
      ASSERT_EQ(0, std::memcmp(weights.data() + i * dim, t.weights.data() + order[i] * dim, dim * sizeof(float)))
          << t.config.name << " key " << keys[i];
    }
  }
}

std::string only_part(const std::string& export_dir) {
  auto parts = complete_export_parts(export_dir);
  EXPECT_EQ(parts.size(), 1u);
  return parts.at(0);
}

}  // namespace

TEST_F(ExportDelta, FullPlusDeltasEqualsAFreshFullExport) {
  for (ExportDtype dtype : {ExportDtype::kFloat32, ExportDtype::kFloat16, ExportDtype::kInt8}) {
    fs::remove_all(dir_);
    EmbeddingCollection c(tables(), 7);
    std::mt19937_64 rng(11 + static_cast<int>(dtype));
    random_ops(c, rng, 30);
    int64_t version = export_full(c, path("stream"), dtype);
    Subscriber sub(path("stream"));
    EXPECT_EQ(sub.poll(), 1);
    for (int round = 0; round < 6; ++round) {
      random_ops(c, rng, 25);
      std::vector<int64_t> one = {static_cast<int64_t>(rng() % 400)};
      std::vector<float> grad(3, 0.25f);
      c.apply_unique(0, one.data(), 1, grad.data());  // a new version: the subscriber applies each delta once
      version = export_delta(c, path("stream"), version, dtype);
      EXPECT_EQ(sub.poll(), 1);
      EXPECT_EQ(sub.version(), version);
    }
    export_full(c, path("fresh"), dtype);
    ExportPart fresh = read_export_part(only_part(path("fresh") + "/" + export_name({false, 0, version})));
    expect_same_rows(sub, fresh);
  }
}

TEST_F(ExportDelta, RowsInsertedWithoutAnUpdateTravelInTheNextDelta) {
  EmbeddingCollection c(tables(), 1);
  const int64_t v = export_full(c, path("s"));
  std::vector<int64_t> ids = {5, 6};
  std::vector<float> out(2 * 3);
  c.table(0).lookup_or_insert_weights(ids.data(), 2, out.data());
  export_delta(c, path("s"), v);
  ExportPart d = read_export_part(only_part(path("s") + "/" + export_name({true, v, v})));
  EXPECT_EQ(d.tables[0].keys.size(), 2u);
}

TEST_F(ExportDelta, ReplayingADeltaTwiceChangesNothing) {
  EmbeddingCollection c(tables(), 3);
  std::mt19937_64 rng(5);
  random_ops(c, rng, 20);
  const int64_t v0 = export_full(c, path("s"));
  random_ops(c, rng, 20);
  const int64_t v1 = export_delta(c, path("s"), v0);
  Subscriber sub(path("s"));
  sub.poll();
  const std::string delta = path("s") + "/" + export_name({true, v0, v1});
  sub.apply(delta);
  sub.apply(delta);
  export_full(c, path("fresh"));
  expect_same_rows(sub, read_export_part(only_part(path("fresh") + "/" + export_name({false, 0, v1}))));
}

TEST_F(ExportDelta, ErasedKeysAreDeletedAndReinsertedKeysAreNot) {
  EmbeddingCollection c(tables(), 3);
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<float> grads(3 * 3, 0.5f);
  c.apply_unique(0, ids.data(), 3, grads.data());
  const int64_t v = export_full(c, path("s"));
  c.erase(0, ids.data(), 2);  // 1 and 2
  std::vector<float> out(3);
  c.table(0).lookup_or_insert_weights(ids.data() + 1, 1, out.data());  // 2 comes back
  export_delta(c, path("s"), v);
  ExportPart d = read_export_part(only_part(path("s") + "/" + export_name({true, v, v})));
  EXPECT_EQ(d.tables[0].deleted, std::vector<int64_t>({1}));
  EXPECT_EQ(d.tables[0].keys, std::vector<int64_t>({2}));
}

TEST_F(ExportDelta, ADeltaPastTheRetainedDeletionsAsksForAFullExport) {
  EmbeddingCollection c(tables(), 3);
  c.table(0).deleted_keys().set_capacity(16);
  std::vector<int64_t> ids(100);
  for (int i = 0; i < 100; ++i) ids[i] = i;
  std::vector<float> grads(100 * 3, 0.1f);
  c.apply_unique(0, ids.data(), 100, grads.data());
  const int64_t v = export_full(c, path("s"));
  for (int i = 0; i < 100; ++i) {
    c.erase(0, &ids[i], 1);
    c.apply_unique(0, &ids[(i + 50) % 100], 1, grads.data());  // the steps advance
  }
  try {
    export_delta(c, path("s"), v);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("take a full export"), std::string::npos) << e.what();
  }
  EXPECT_THROW(export_delta(c, path("s"), c.step() + 1), InvalidArgument);
  EXPECT_NO_THROW(export_delta(c, path("s"), c.step()));
}

TEST_F(ExportDelta, DamagedExportsAreRefusedWithTypedErrorsAndChangeNothing) {
  EmbeddingCollection c(tables(), 3);
  std::mt19937_64 rng(9);
  random_ops(c, rng, 20);
  const int64_t v0 = export_full(c, path("s"));
  Subscriber sub(path("s"));
  sub.poll();
  random_ops(c, rng, 20);
  const int64_t v1 = export_delta(c, path("s"), v0);
  const std::string part = only_part(path("s") + "/" + export_name({true, v0, v1}));
  const std::string rows = part + "/table-0.rows";
  const auto good = fs::file_size(rows);
  ASSERT_GT(good, 0u);
  std::vector<int64_t> keys_before;
  std::vector<float> w_before;
  sub.rows("a", keys_before, w_before);
  std::string bytes;
  {
    std::ifstream in(rows, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Truncated.
  fs::resize_file(rows, good - 1);
  EXPECT_THROW(sub.poll(), CorruptData);
  EXPECT_EQ(sub.version(), v0);
  // Same size, one flipped bit.
  bytes[bytes.size() / 2] ^= 1;
  { std::ofstream(rows, std::ios::binary | std::ios::trunc) << bytes; }
  ASSERT_EQ(fs::file_size(rows), good);
  EXPECT_THROW(sub.poll(), CorruptData);
  // A symlink in place of a file.
  fs::remove(rows);
  fs::create_symlink(part + "/table-0.keys", rows);
  EXPECT_THROW(sub.poll(), CorruptData);
  // A manifest that is not JSON.
  fs::remove(rows);
  { std::ofstream(part + "/manifest.json") << "{not json"; }
  EXPECT_THROW(sub.poll(), CorruptData);
  EXPECT_THROW(read_export_part(part), CorruptData);
  std::vector<int64_t> keys_after;
  std::vector<float> w_after;
  sub.rows("a", keys_after, w_after);
  EXPECT_EQ(keys_before, keys_after);
  EXPECT_EQ(w_before, w_after);
  EXPECT_EQ(sub.version(), v0);
  EXPECT_THROW(read_export_part(path("s") + "/nothing"), NotFound);
}

TEST_F(ExportDelta, SubscriberReadsUnknownIdsAsZerosAndPrefersTheDeltaChain) {
  EmbeddingCollection c(tables(), 3);
  std::vector<int64_t> ids = {4, 9};
  std::vector<float> grads(2 * 3, 1.0f);
  c.apply_unique(0, ids.data(), 2, grads.data());
  const int64_t v0 = export_full(c, path("s"));
  Subscriber sub(path("s"));
  EXPECT_EQ(sub.version(), -1);
  EXPECT_EQ(sub.poll(), 1);
  std::vector<int64_t> ask = {4, 12345};
  std::vector<float> out(2 * 3, 7.0f);
  sub.lookup("a", ask.data(), 2, out.data());
  std::vector<float> want(3);
  c.table(0).find_weights(ask.data(), 1, want.data());
  EXPECT_EQ(std::vector<float>(out.begin(), out.begin() + 3), want);
  EXPECT_EQ(std::vector<float>(out.begin() + 3, out.end()), std::vector<float>(3, 0.0f));
  EXPECT_THROW(sub.lookup("nope", ask.data(), 1, out.data()), NotFound);
  c.apply_unique(0, ids.data(), 2, grads.data());
  const int64_t v1 = export_delta(c, path("s"), v0);
  c.apply_unique(0, ids.data(), 2, grads.data());
  const int64_t v2 = export_delta(c, path("s"), v1);
  EXPECT_EQ(sub.poll(), 2);
  EXPECT_EQ(sub.version(), v2);
  EXPECT_EQ(sub.poll(), 0);
}

TEST(ExportFormat, NamesRoundTripAndOthersAreNotExports) {
  ExportName n;
  ASSERT_TRUE(parse_export_name(export_name({true, 3, 17}), n));
  EXPECT_TRUE(n.delta);
  EXPECT_EQ(n.since, 3);
  EXPECT_EQ(n.version, 17);
  ASSERT_TRUE(parse_export_name(export_name({false, 0, 9}), n));
  EXPECT_FALSE(n.delta);
  EXPECT_FALSE(parse_export_name("full-12", n));
  EXPECT_FALSE(parse_export_name(".full-00000000000000000001", n));
  int p = 0, k = 0;
  EXPECT_TRUE(parse_part_name("part-1-of-2", p, k));
  EXPECT_FALSE(parse_part_name("part-2-of-2", p, k));
  EXPECT_FALSE(parse_part_name("part-01-of-2", p, k));
}
