// fp16 row storage of the CPU engine, through the C++ API: the shared half conversions (F16C
// and portable paths give the same bits), the row layout, rounding of initial values and of
// updates, and the checkpoint round trip.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/half.h"
#include "sparsecore/ops/embedding_collection.h"

using namespace sparsecore;

namespace {

TableConfig fp16_table(const std::string& name, int dim, OptimizerKind kind = OptimizerKind::kSGD) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.optimizer.kind = kind;
  c.optimizer.lr = 1.0f;
  c.init.kind = InitKind::kUniform;
  c.init.a = -1.0f;
  c.init.b = 1.0f;
  c.storage = RowStorage::kFloat16;
  return c;
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

}  // namespace

TEST(HalfConversion, EveryHalfWidensAndNarrowsBackUnchanged) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    // NaNs come back quiet (as F16C makes them); everything else unchanged.
    const uint32_t want = std::isnan(f) ? (h | 0x200u) : h;
    EXPECT_EQ(float_to_half(f), want) << std::hex << h;
  }
}

TEST(HalfConversion, RoundsToNearestEven) {
  EXPECT_EQ(float_to_half(1.0f + 1.0f / 2048), 0x3c00);     // tie -> even (1.0)
  EXPECT_EQ(float_to_half(1.0f + 3.0f / 2048), 0x3c02);     // tie -> even (1 + 2^-9)
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -26)), 0x0001);  // nearer the smallest subnormal
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);               // largest finite half
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);               // rounds to infinity
  EXPECT_EQ(float_to_half(-INFINITY), 0xfc00);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
}

TEST(HalfConversion, BulkPathsMatchTheScalarFunctionsBitForBit) {
  std::mt19937_64 rng(std::random_device{}());
  for (int n : {0, 1, 3, 7, 8, 9, 16, 18, 129, 4096}) {
    std::vector<float> f(n), back(n), portable_back(n);
    for (float& x : f) {
      uint32_t u = static_cast<uint32_t>(rng());
      if (rng() % 2) u = (u & 0x87ffffffu) | 0x30000000u;  // many near the subnormal range
      std::memcpy(&x, &u, sizeof(x));
    }
    std::vector<uint16_t> h(n), portable(n);
    floats_to_halves(f.data(), h.data(), n);
    detail::floats_to_halves_portable(f.data(), portable.data(), n);
    for (int i = 0; i < n; ++i) ASSERT_EQ(h[i], portable[i]) << "float bits " << std::hex << bits_of(f[i]);
    halves_to_floats(h.data(), back.data(), n);
    detail::halves_to_floats_portable(h.data(), portable_back.data(), n);
    for (int i = 0; i < n; ++i) ASSERT_EQ(bits_of(back[i]), bits_of(portable_back[i])) << "half " << h[i];
  }
}

TEST(Fp16Storage, RowHoldsHalfWeightsThenFloatState) {
  TableConfig c = fp16_table("t", 16, OptimizerKind::kAdagrad);
  EmbeddingTable half(c, 1);
  c.storage = RowStorage::kFloat32;
  EmbeddingTable full(c, 1);
  EXPECT_EQ(half.row_bytes(), 16u * 2 + 16u * 4 + 8);
  EXPECT_EQ(full.row_bytes(), 16u * 4 + 16u * 4 + 8);
  EmbeddingTable odd(fp16_table("o", 3, OptimizerKind::kAdagrad), 1);
  EXPECT_EQ(odd.row_bytes(), 8u + 12u + 4u + 8u);  // 6 + pad 2, state 12, pad 4, meta 8
}

TEST(Fp16Storage, InitialValuesAreTheFp32OnesRoundedOnce) {
  TableConfig c = fp16_table("t", 18);
  EmbeddingTable half(c, 99);
  c.storage = RowStorage::kFloat32;
  EmbeddingTable full(c, 99);
  std::vector<int64_t> keys = {0, -1, 5, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()};
  std::vector<float> h(keys.size() * 18), f(keys.size() * 18);
  half.lookup_or_insert_weights(keys.data(), static_cast<int64_t>(keys.size()), h.data());
  full.lookup_or_insert_weights(keys.data(), static_cast<int64_t>(keys.size()), f.data());
  for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(h[i], half_to_float(float_to_half(f[i]))) << i;
}

TEST(Fp16Storage, SgdUpdateIsComputedInFp32AndRoundedOnce) {
  // SGD lr = 1: w' = fp16(w - g), one rounding, for every dim remainder mod 8.
  for (int dim : {1, 3, 8, 18}) {
    EmbeddingCollection emb({fp16_table("t", dim)}, 4);
    std::vector<int64_t> ids = {42, 42};
    std::vector<int64_t> offsets = {0, 2};
    auto batch = emb.prepare({GroupInput{0, ids.data(), 2, offsets.data(), 1, nullptr}}, true);
    std::vector<float> w0(dim), out(dim), grad(dim), w1(dim);
    emb.table(0).find_weights(ids.data(), 1, w0.data());
    emb.forward(*batch, {out.data()});
    for (int d = 0; d < dim; ++d) EXPECT_EQ(out[d], w0[d] + w0[d]);
    std::mt19937 rng(dim);
    std::uniform_real_distribution<float> u(-0.01f, 0.01f);
    for (float& g : grad) g = u(rng);
    emb.backward(*batch, {grad.data()});
    emb.table(0).find_weights(ids.data(), 1, w1.data());
    for (int d = 0; d < dim; ++d) EXPECT_EQ(w1[d], half_to_float(float_to_half(w0[d] - 2.0f * grad[d]))) << d;
  }
}

TEST(Fp16Storage, CheckpointRoundTripIsBitExact) {
  const auto dir = std::filesystem::temp_directory_path() / ("sc_fp16_ckpt_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  EmbeddingCollection emb({fp16_table("t", 5, OptimizerKind::kAdagrad)}, 8);
  std::vector<int64_t> ids = {1, 2, 3, 2};
  std::vector<int64_t> offsets = {0, 2, 4};
  auto batch = emb.prepare({GroupInput{0, ids.data(), 4, offsets.data(), 2, nullptr}}, true);
  std::vector<float> grad(10, 0.25f);
  emb.backward(*batch, {grad.data()});
  emb.save(dir.string());
  auto loaded = EmbeddingCollection::load(dir.string());
  ASSERT_EQ(loaded->table(0).storage(), RowStorage::kFloat16);
  const EmbeddingTable& a = emb.table(0);
  const EmbeddingTable& b = loaded->table(0);
  std::vector<int64_t> ka(a.size()), kb(b.size());
  std::vector<float> ra(a.size() * a.row_floats()), rb(b.size() * b.row_floats());
  std::vector<RowMeta> ma(a.size()), mb(b.size());
  ASSERT_EQ(a.export_rows(ka.data(), ra.data(), ma.data(), 3), 3);
  ASSERT_EQ(b.export_rows(kb.data(), rb.data(), mb.data(), 3), 3);
  for (size_t i = 0; i < ka.size(); ++i) {
    size_t j = std::find(kb.begin(), kb.end(), ka[i]) - kb.begin();
    ASSERT_LT(j, kb.size());
    EXPECT_EQ(std::memcmp(&ra[i * a.row_floats()], &rb[j * b.row_floats()], a.row_floats() * sizeof(float)), 0);
    EXPECT_EQ(ma[i].update_count, mb[j].update_count);
  }
  std::filesystem::remove_all(dir);
}

TEST(Fp16Storage, ConfigJsonCarriesTheStorage) {
  TableConfig c = fp16_table("t", 4);
  EXPECT_EQ(c.to_json()["storage"].as_string("storage"), "fp16");
  EXPECT_EQ(TableConfig::from_json(c.to_json()).storage, RowStorage::kFloat16);
  Json j = c.to_json();
  j["storage"] = "bf16";
  EXPECT_THROW(TableConfig::from_json(j), InvalidArgument);
}
