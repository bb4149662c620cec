// The blocks of an export's files (format version 2): files of several blocks, whose rows
// cross block edges and come from many shards, read back exactly in every dtype; a damaged
// block is refused naming its file and block; manifests of format version 1 (one checksum
// per file) still load; a committed part removes the stagings its dead writers left.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/serving/export.h"
#include "sparsecore/serving/subscriber.h"
#include "temp_dir_test.h"

using namespace sparsecore;
using namespace sparsecore::serving;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kBlockBytes = 1ull << 20;  // what the writer uses (export_format.cpp)
constexpr int64_t kRows = 70000;              // rows files of 2 (int4) to 5 (fp32) blocks

using ExportBlocks = sparsecore::test_support::TempDirTest;

// One table of dim 18 (an int8 row is 26 bytes: rows cross every block edge) over 64 shards.
std::unique_ptr<EmbeddingCollection> filled_collection() {
  TableConfig t;
  t.name = "t";
  t.dim = 18;
  auto c = std::make_unique<EmbeddingCollection>(std::vector<TableConfig>{t}, 5);
  std::vector<int64_t> ids(kRows);
  for (int64_t i = 0; i < kRows; ++i) ids[static_cast<size_t>(i)] = i * 7919 - 1000;
  std::vector<float> out(ids.size() * 18);
  c->table(0).lookup_or_insert_weights(ids.data(), kRows, out.data());
  return c;
}

std::string only_part(const std::string& export_dir) {
  auto parts = complete_export_parts(export_dir);
  EXPECT_EQ(parts.size(), 1u);
  return parts.at(0);
}

std::string read_text(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& p, const std::string& text) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
}

}  // namespace

TEST_F(ExportBlocks, FilesOfManyBlocksHoldExactlyTheCollectedRowsInEveryDtype) {
  auto c = filled_collection();
  for (ExportDtype dtype : {ExportDtype::kFloat32, ExportDtype::kFloat16, ExportDtype::kInt8, ExportDtype::kInt4}) {
    const std::string stream = path(export_dtype_name(dtype));
    const int64_t v = export_full(*c, stream, dtype);
    const ExportTable expected = collect_export_table(c->table(0), -1, v);
    ASSERT_EQ(expected.rows(), kRows);
    const std::string part = only_part(stream + "/" + export_name({false, 0, v}));
    const uint64_t row_bytes = export_row_bytes(dtype, 18);
    ASSERT_GT(fs::file_size(part + "/table-0.rows"), kBlockBytes);
    const Json manifest = Json::parse(read_text(part + "/manifest.json"));
    EXPECT_EQ(manifest.at("format_version").as_int(), 2);
    EXPECT_EQ(manifest.at("tables").as_array()[0].at("files").at("rows").at("checksums").as_array().size(),
              (kRows * row_bytes + kBlockBytes - 1) / kBlockBytes);
    const ExportPart coded = read_export_part(part, /*keep_coded=*/true);
    ASSERT_EQ(coded.tables.size(), 1u);
    EXPECT_EQ(coded.tables[0].keys, expected.keys) << export_dtype_name(dtype);
    std::vector<uint8_t> want(kRows * row_bytes);
    if (dtype == ExportDtype::kFloat32) {
      std::memcpy(want.data(), expected.weights.data(), want.size());
    } else {
      const auto format = dtype == ExportDtype::kFloat16 ? quant::RowFormat::kFp16
                          : dtype == ExportDtype::kInt8  ? quant::RowFormat::kInt8
                                                         : quant::RowFormat::kInt4;
      quant::quantize_rows(expected.weights.data(), kRows, 18, format, want.data());
    }
    EXPECT_TRUE(coded.coded.at(0) == want) << export_dtype_name(dtype);
  }
}

TEST_F(ExportBlocks, ADamagedBlockIsRefusedNamingItsFileAndBlock) {
  auto c = filled_collection();
  const int64_t v = export_full(*c, path("s"));
  const std::string part = only_part(path("s") + "/" + export_name({false, 0, v}));
  const std::string rows = part + "/table-0.rows";
  std::string bytes = read_text(rows);
  bytes[2 * kBlockBytes + 17] ^= 0x40;  // block 2
  write_text(rows, bytes);
  try {
    read_export_part(part);
    FAIL() << "a damaged block was accepted";
  } catch (const CorruptData& e) {
    EXPECT_NE(std::string(e.what()).find("table-0.rows"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("block 2"), std::string::npos) << e.what();
  }
  Subscriber sub(path("s"));
  EXPECT_THROW(sub.poll(), CorruptData);
  EXPECT_EQ(sub.version(), -1);
}

TEST_F(ExportBlocks, AManifestWhoseChecksumsDoNotCoverTheFileIsRefused) {
  auto c = filled_collection();
  const int64_t v = export_full(*c, path("s"));
  const std::string part = only_part(path("s") + "/" + export_name({false, 0, v}));
  const std::string good = read_text(part + "/manifest.json");
  // One checksum fewer than the file has blocks.
  Json m = Json::parse(good);
  m["tables"].as_array()[0]["files"]["rows"]["checksums"].as_array().pop_back();
  write_text(part + "/manifest.json", m.dump(1));
  EXPECT_THROW(read_export_part(part), CorruptData);
  // Blocks too small to be a writer's.
  m = Json::parse(good);
  m["block_bytes"] = 16;
  write_text(part + "/manifest.json", m.dump(1));
  EXPECT_THROW(read_export_part(part), CorruptData);
  // A format version from the future.
  m = Json::parse(good);
  m["format_version"] = 3;
  write_text(part + "/manifest.json", m.dump(1));
  EXPECT_THROW(read_export_part(part), CorruptData);
  write_text(part + "/manifest.json", good);
  EXPECT_NO_THROW(read_export_part(part));
}

// A part as format version 1 wrote it: the same files, one checksum of each whole file.
void rewrite_as_version_1(const std::string& part) {
  Json m = Json::parse(read_text(part + "/manifest.json"));
  m["format_version"] = 1;
  m.as_object().erase("block_bytes");
  for (Json& t : m["tables"].as_array())
    for (auto& [kind, file] : t["files"].as_object()) {
      const std::vector<uint8_t> data = read_file(part + "/" + file.at("name").as_string());
      file.as_object().erase("checksums");
      file["checksum"] = checksum_hex(checksum64(data.data(), data.size()));
    }
  write_text(part + "/manifest.json", m.dump(1));
}

TEST_F(ExportBlocks, PartsOfFormatVersion1StillLoad) {
  auto c = filled_collection();
  const int64_t v0 = export_full(*c, path("s"));
  std::vector<int64_t> ids = {-1000, 6919, 12345678};
  std::vector<float> grads(ids.size() * 18, 0.5f);
  c->apply_unique(0, ids.data(), static_cast<int64_t>(ids.size()), grads.data());
  c->erase(0, ids.data() + 1, 1);
  const int64_t v1 = export_delta(*c, path("s"), v0, ExportDtype::kInt8);
  const std::string full = only_part(path("s") + "/" + export_name({false, 0, v0}));
  const std::string delta = only_part(path("s") + "/" + export_name({true, v0, v1}));
  const ExportPart full_v2 = read_export_part(full), delta_v2 = read_export_part(delta, /*keep_coded=*/true);
  rewrite_as_version_1(full);
  rewrite_as_version_1(delta);
  const ExportPart full_v1 = read_export_part(full), delta_v1 = read_export_part(delta, /*keep_coded=*/true);
  EXPECT_EQ(full_v1.tables.at(0).keys, full_v2.tables.at(0).keys);
  EXPECT_EQ(full_v1.tables.at(0).weights, full_v2.tables.at(0).weights);
  EXPECT_EQ(delta_v1.tables.at(0).keys, delta_v2.tables.at(0).keys);
  EXPECT_EQ(delta_v1.tables.at(0).deleted, std::vector<int64_t>{6919});
  EXPECT_EQ(delta_v1.coded, delta_v2.coded);
  Subscriber sub(path("s"));
  EXPECT_EQ(sub.poll(), 2);
  EXPECT_EQ(sub.version(), v1);
  std::vector<int64_t> keys;
  std::vector<float> weights;
  sub.rows("t", keys, weights);
  EXPECT_EQ(keys.size(), c->table(0).size());
  // A version 1 whole-file checksum that does not match is refused as before.
  std::string rows = read_text(full + "/table-0.rows");
  rows[5] ^= 1;
  write_text(full + "/table-0.rows", rows);
  EXPECT_THROW(read_export_part(full), CorruptData);
}

TEST_F(ExportBlocks, APartOfManyTablesHoldsEveryTable) {
  // More tables than the writer keeps open at once, dense and hashed, some empty.
  std::vector<TableConfig> configs;
  for (int i = 0; i < 45; ++i) {
    TableConfig t;
    t.name = "t" + std::to_string(i);
    t.dim = 1 + i % 7;
    t.shard_bits = i % 3;
    if (i % 5 == 0) t.num_embeddings = 100;
    configs.push_back(t);
  }
  EmbeddingCollection c(configs, 7);
  for (int i = 0; i < 45; i += 2) {
    std::vector<int64_t> ids;
    for (int64_t k = 0; k < 60 + i; ++k) ids.push_back((k * 37 + i) % 100);
    std::vector<float> out(ids.size() * static_cast<size_t>(configs[i].dim));
    c.table(i).lookup_or_insert_weights(ids.data(), static_cast<int64_t>(ids.size()), out.data());
  }
  const int64_t v = export_full(c, path("s"), ExportDtype::kInt8);
  const ExportPart part = read_export_part(only_part(path("s") + "/" + export_name({false, 0, v})));
  ASSERT_EQ(part.tables.size(), 45u);
  for (int i = 0; i < 45; ++i) {
    const ExportTable want = collect_export_table(c.table(i), -1, v);
    EXPECT_EQ(part.tables[i].config.name, configs[i].name);
    EXPECT_EQ(part.tables[i].keys, want.keys) << configs[i].name;
    EXPECT_EQ(part.tables[i].weights.size(), want.weights.size()) << configs[i].name;
  }
}

TEST_F(ExportBlocks, ACommittedPartRemovesTheStagingsItsDeadWritersLeft) {
  ExportPart p;
  p.version = 3;
  p.part = 0;
  p.num_parts = 2;
  ExportTable t;
  t.config.name = "t";
  t.config.dim = 2;
  t.keys = {5, 9};
  t.weights = {1, 2, 3, 4};
  p.tables.push_back(t);
  const std::string stream = path("s");
  const std::string export_dir = stream + "/" + export_name({false, 0, 3});
  fs::create_directories(export_dir);
  // Writers of part 0 that died before their switch, and entries that are not such stagings.
  const std::string dead = export_dir + "/.part-0-of-2.0123456789abcdef";
  fs::create_directories(dead + "/inner");
  write_text(dead + "/table-0.rows", "half written");
  fs::create_directories(export_dir + "/.part-0-of-2.fedcba9876543210");
  fs::create_directories(export_dir + "/.part-0-of-2.not-a-suffix");      // not a staging name
  fs::create_directories(export_dir + "/.part-1-of-2.0123456789abcdef");  // another part's
  fs::create_directories(path("elsewhere"));
  write_text(path("elsewhere") + "/keep", "x");
  fs::create_symlink(path("elsewhere"), export_dir + "/.part-0-of-2.aaaaaaaaaaaaaaaa");

  const std::string written = write_export_part(p, stream);
  EXPECT_EQ(written, export_dir + "/part-0-of-2");
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_FALSE(fs::exists(export_dir + "/.part-0-of-2.fedcba9876543210"));
  EXPECT_TRUE(fs::is_directory(export_dir + "/.part-0-of-2.not-a-suffix"));
  EXPECT_TRUE(fs::is_directory(export_dir + "/.part-1-of-2.0123456789abcdef"));
  EXPECT_TRUE(fs::is_symlink(export_dir + "/.part-0-of-2.aaaaaaaaaaaaaaaa"));
  EXPECT_EQ(read_text(path("elsewhere") + "/keep"), "x");  // nothing followed
  const ExportPart back = read_export_part(written);
  ASSERT_EQ(back.tables.size(), 1u);
  EXPECT_EQ(back.tables[0].keys, t.keys);
  EXPECT_EQ(back.tables[0].weights, t.weights);
}

TEST_F(ExportBlocks, ASubrangeIsCollectedOnlyIntoSegmentsSizedForEveryUnit) {
  auto c = filled_collection();
  ChangedRows rows;
  EXPECT_THROW(c->table(0).collect_changed(-1, rows, 0, 1), InvalidArgument);  // would resize under other callers
  EXPECT_TRUE(rows.segments.empty());
  rows.segments.resize(static_cast<size_t>(c->table(0).collect_units()));
  c->table(0).collect_changed(-1, rows, 0, 1);
  EXPECT_GT(rows.segments[0].keys.size(), 0u);
}

TEST_F(ExportBlocks, ExportsOfEverMoreTablesReadBackExactly) {
  // Every round adds a table, whose segments the exporter's kept buffers do not have yet: the
  // shards of a new table are collected in parallel into freshly sized segments.
  for (int round = 1; round <= 12; ++round) {
    std::vector<TableConfig> configs;
    for (int i = 0; i < round; ++i) {
      TableConfig t;
      t.name = "t" + std::to_string(i);
      t.dim = 4;
      t.shard_bits = 6;
      configs.push_back(t);
    }
    EmbeddingCollection c(configs, round);
    for (int i = 0; i < round; ++i) {
      std::vector<int64_t> ids(3000);
      for (size_t k = 0; k < ids.size(); ++k) ids[k] = static_cast<int64_t>(k * 131 + i);
      std::vector<float> out(ids.size() * 4);
      c.table(i).lookup_or_insert_weights(ids.data(), static_cast<int64_t>(ids.size()), out.data());
    }
    const std::string stream = path("s" + std::to_string(round));
    const int64_t v = export_full(c, stream);
    const ExportPart part = read_export_part(only_part(stream + "/" + export_name({false, 0, v})));
    ASSERT_EQ(part.tables.size(), static_cast<size_t>(round));
    for (int i = 0; i < round; ++i) {
      const ExportTable want = collect_export_table(c.table(i), -1, v);
      EXPECT_EQ(part.tables[i].keys, want.keys) << "round " << round << " table " << i;
      EXPECT_EQ(part.tables[i].weights, want.weights) << "round " << round << " table " << i;
    }
  }
}
