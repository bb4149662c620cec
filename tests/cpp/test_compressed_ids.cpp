#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/composed_row_source.h"
#include "sparsecore/table/compressed_ids.h"

namespace sparsecore {
namespace {

CompressionSpec spec_of(const std::string& json) { return CompressionSpec::from_json(Json::parse(json)); }

std::vector<int64_t> keys_of(const CompressionSpec& s, int c, const std::vector<int64_t>& ids, uint64_t seed = 7) {
  std::vector<int64_t> keys(ids.size() * s.keys_per_id());
  compressed_component_keys(s, c, seed, ids.data(), static_cast<int64_t>(ids.size()), keys.data(), nullptr);
  return keys;
}

const std::vector<int64_t> kIds = {0, 1, -1, 5, 1000003, INT64_MAX, INT64_MIN, int64_t{1} << 40};

TEST(CompressedIds, QuotientRemainderOfIdsInRangeIsExact) {
  const CompressionSpec s = spec_of(R"({"kind": "qr", "rows": 16, "quotient_rows": 8, "combine": "mul"})");
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 128; ++i) ids.push_back(i);
  const auto r = keys_of(s, 0, ids), q = keys_of(s, 1, ids);
  for (int64_t i = 0; i < 128; ++i) {
    EXPECT_EQ(r[i], i % 16);
    EXPECT_EQ(q[i], i / 16);
  }
}

TEST(CompressedIds, BinaryCodeBlocksAreTheIdsBits) {
  const CompressionSpec s = spec_of(R"({"kind": "binary", "bits": 12, "block": 4})");
  ASSERT_EQ(s.num_components(), 3);
  const std::vector<int64_t> ids = {0xABC, 7, 4095};
  for (int c = 0; c < 3; ++c) {
    const auto k = keys_of(s, c, ids);
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(k[i], (ids[i] >> (4 * c)) & 15);
  }
}

TEST(CompressedIds, EveryKeyLiesInItsComponentAndSignsAreUnit) {
  for (const char* json :
       {R"({"kind": "multihash", "k": 3, "rows": 37})", R"({"kind": "qr", "rows": 5})",
        R"({"kind": "binary", "bits": 64, "block": 8})", R"({"kind": "random", "buckets": 11, "k": 4})"}) {
    const CompressionSpec s = spec_of(json);
    for (int c = 0; c < s.num_components(); ++c) {
      std::vector<int64_t> keys(kIds.size() * s.keys_per_id());
      std::vector<float> signs(keys.size(), 0.0f);
      compressed_component_keys(s, c, 99, kIds.data(), static_cast<int64_t>(kIds.size()), keys.data(), signs.data());
      for (int64_t k : keys) EXPECT_TRUE(k >= 0 && k < s.component_rows(c)) << json;
      if (s.kind == CompressionKind::kRandomCoding)
        for (float v : signs) EXPECT_TRUE(v == 1.0f || v == -1.0f);
    }
  }
}

TEST(CompressedIds, SeedsChangeTheMappingAndNothingElseDoes) {
  const CompressionSpec s = spec_of(R"({"kind": "multihash", "k": 2, "rows": 1000000})");
  EXPECT_EQ(keys_of(s, 0, kIds, 1), keys_of(s, 0, kIds, 1));
  EXPECT_NE(keys_of(s, 0, kIds, 1), keys_of(s, 0, kIds, 2));
  EXPECT_NE(keys_of(s, 0, kIds, 1), keys_of(s, 1, kIds, 1));
}

TEST(CompressedIds, BadSpecsNameTheField) {
  EXPECT_THROW(spec_of(R"({"kind": "multihash", "k": 0, "rows": 4})"), InvalidArgument);
  EXPECT_THROW(spec_of(R"({"kind": "binary", "bits": 10, "block": 4})"), InvalidArgument);
  EXPECT_THROW(spec_of(R"({"kind": "random", "buckets": 0})"), InvalidArgument);
  EXPECT_THROW(spec_of(R"({"kind": "nohash"})"), InvalidArgument);
  try {
    spec_of(R"({"kind": "qr", "rows": 0})");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("rows"), std::string::npos);
  }
}

// Component tables in maps; absent rows read zeros.
class Components : public serving::RowSource {
 public:
  std::map<std::string, std::pair<int, std::map<int64_t, std::vector<float>>>> tables;
  int dim(const std::string& t) const override {
    auto it = tables.find(t);
    if (it == tables.end()) throw NotFound(t);
    return it->second.first;
  }
  void read(const serving::RowRead* reads, size_t count) const override {
    for (size_t r = 0; r < count; ++r) {
      const auto& [d, rows] = tables.at(*reads[r].table);
      for (int64_t i = 0; i < reads[r].n; ++i) {
        auto it = rows.find(reads[r].ids[i]);
        for (int c = 0; c < d; ++c) reads[r].out[i * d + c] = it == rows.end() ? 0.0f : it->second[c];
      }
    }
  }
};

TEST(ComposedRowSource, ComposesProductsConcatenationsAndExactRows) {
  auto base = std::make_shared<Components>();
  base->tables["r"] = {2, {{3, {2.0f, 3.0f}}}};
  base->tables["q"] = {2, {{0, {0.5f, -1.0f}}}};
  base->tables["x"] = {2, {{3, {10.0f, 20.0f}}}};
  serving::CompressedTableSpec mul;
  mul.name = "mul";
  mul.compression = spec_of(R"({"kind": "qr", "rows": 16, "combine": "mul"})");
  mul.dim = 2;
  mul.components = {"r", "q"};
  mul.exact = "x";
  serving::CompressedTableSpec cat = mul;
  cat.name = "cat";
  cat.compression = spec_of(R"({"kind": "qr", "rows": 16, "combine": "concat"})");
  cat.dim = 4;
  cat.exact.clear();
  base->tables["r1"] = {2, {{3, {1.0f, 2.0f}}}};
  base->tables["q1"] = {2, {{0, {4.0f, 5.0f}}}};
  cat.components = {"r1", "q1"};
  serving::ComposedRowSource source(base, {mul, cat});
  EXPECT_EQ(source.dim("mul"), 2);
  EXPECT_EQ(source.dim("cat"), 4);
  const std::string names[2] = {"mul", "cat"};
  const int64_t ids[2] = {3, 4};
  float out_mul[4], out_cat[8];
  const serving::RowRead reads[2] = {{&names[0], ids, 2, out_mul}, {&names[1], ids, 2, out_cat}};
  source.read(reads, 2);
  EXPECT_EQ(std::vector<float>(out_mul, out_mul + 4), (std::vector<float>{11.0f, 17.0f, 0.0f, 0.0f}));
  EXPECT_EQ(std::vector<float>(out_cat, out_cat + 8), (std::vector<float>{1, 2, 4, 5, 0, 0, 4, 5}));
}

}  // namespace
}  // namespace sparsecore
