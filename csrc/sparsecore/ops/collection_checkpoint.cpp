// Checkpoint save/load of an EmbeddingCollection (DESIGN.md "Checkpoint").
//
// Directory layout:
//   manifest.json              written last (temp file, fsync, rename, fsync dir)
//   t<table>-b<lo>-<hi>.rows   one file per table shard = one bucket range [lo, hi)
// Row file, little-endian:
//   header (64 bytes): magic "SCROWS01", format version u32, dim u32, row_floats u32,
//     meta_bytes u32, rows u64, bucket_lo u32, bucket_hi u32, table seed u64, zero padding
//   keys  int64[rows]
//   rows  { float32 weights[dim], float32 state[row_floats - dim], RowMeta } [rows]
// Weights are float32 in the file whatever the table's storage (manifest: "storage"): fp16
// weights widen exactly and round back to the same bits, so an fp16 table round-trips exactly.
// Files are addressed by bucket range, so a checkpoint loads into any shard count.
#include <bit>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <shared_mutex>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore {
namespace {

static_assert(std::endian::native == std::endian::little, "checkpoint files are little-endian");

constexpr char kMagic[8] = {'S', 'C', 'R', 'O', 'W', 'S', '0', '1'};
constexpr uint32_t kFormatVersion = 1;
constexpr const char* kManifest = "manifest.json";

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t dim;
  uint32_t row_floats;
  uint32_t meta_bytes;
  uint64_t rows;
  uint32_t bucket_lo;
  uint32_t bucket_hi;
  uint64_t table_seed;
  uint8_t padding[16];
};
static_assert(sizeof(FileHeader) == 64);

std::string join(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

struct FileEntry {
  std::string path;
  uint32_t bucket_lo = 0, bucket_hi = 0;
  uint64_t rows = 0, bytes = 0, checksum = 0;
};

// Writes shard `s` of `table` (bucket range [lo, hi)) and returns its manifest entry.
FileEntry write_shard_file(const std::string& dir, int table_index, const EmbeddingTable& table, int s) {
  const HashTable& ht = table.hash_table();
  const uint32_t per_shard = kNumBuckets >> ht.shard_bits();
  FileEntry e;
  e.bucket_lo = static_cast<uint32_t>(s) * per_shard;
  e.bucket_hi = e.bucket_lo + per_shard;
  char name[64];
  std::snprintf(name, sizeof(name), "t%03d-b%05u-%05u.rows", table_index, e.bucket_lo, e.bucket_hi);
  e.path = name;

  const auto& shard = ht.shard(s);
  std::shared_lock lock(shard.mutex);
  const size_t floats_bytes = static_cast<size_t>(table.row_floats()) * sizeof(float);
  std::vector<int64_t> keys;
  std::vector<uint8_t> rows;
  keys.reserve(shard.size());
  rows.reserve(shard.size() * (floats_bytes + sizeof(RowMeta)));
  std::vector<float> floats(table.row_floats());
  shard.for_each([&](int64_t key, std::byte* row) {
    keys.push_back(key);
    table.read_row(row, floats.data());
    const uint8_t* src = reinterpret_cast<const uint8_t*>(floats.data());
    rows.insert(rows.end(), src, src + floats_bytes);
    // Files keep the 16-byte RowMeta whatever the in-memory packing.
    const RowMeta meta = table.meta(row)->unpack();
    const uint8_t* m = reinterpret_cast<const uint8_t*>(&meta);
    rows.insert(rows.end(), m, m + sizeof(RowMeta));
  });
  lock.unlock();

  FileHeader h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kFormatVersion;
  h.dim = static_cast<uint32_t>(table.dim());
  h.row_floats = static_cast<uint32_t>(table.row_floats());
  h.meta_bytes = sizeof(RowMeta);
  h.rows = keys.size();
  h.bucket_lo = e.bucket_lo;
  h.bucket_hi = e.bucket_hi;
  h.table_seed = table.seed();

  Checksum64 sum;
  sum.update(&h, sizeof(h));
  sum.update(keys.data(), keys.size() * sizeof(int64_t));
  sum.update(rows.data(), rows.size());
  File f = File::create(join(dir, e.path));
  f.write_all(&h, sizeof(h));
  f.write_all(keys.data(), keys.size() * sizeof(int64_t));
  f.write_all(rows.data(), rows.size());
  f.sync();
  f.close();
  e.rows = keys.size();
  e.bytes = sizeof(h) + keys.size() * sizeof(int64_t) + rows.size();
  e.checksum = sum.digest();
  return e;
}

// Reads one row file, verifies it against its manifest entry and the table, and inserts its
// rows into `table` (a fresh table not yet visible to anyone).
void read_shard_file(const std::string& dir, const FileEntry& e, EmbeddingTable& table) {
  const std::string path = join(dir, e.path);
  std::vector<uint8_t> data = read_file(path);
  SC_CHECK(data.size() == e.bytes, CorruptData, "checkpoint file '", path, "' has ", data.size(),
           " bytes, the manifest says ", e.bytes, " (truncated or replaced)");
  SC_CHECK(checksum64(data.data(), data.size()) == e.checksum, CorruptData, "checkpoint file '", path,
           "' fails its checksum (corrupted)");
  FileHeader h;
  std::memcpy(&h, data.data(), sizeof(h));
  SC_CHECK(std::memcmp(h.magic, kMagic, 8) == 0, CorruptData, "checkpoint file '", path, "' has a bad magic");
  SC_CHECK(h.version == kFormatVersion, CorruptData, "checkpoint file '", path, "' has format version ",
           h.version, ", this build reads ", kFormatVersion);
  SC_CHECK(h.dim == static_cast<uint32_t>(table.dim()) && h.row_floats == static_cast<uint32_t>(table.row_floats()) &&
               h.meta_bytes == sizeof(RowMeta) && h.rows == e.rows && h.bucket_lo == e.bucket_lo &&
               h.bucket_hi == e.bucket_hi,
           CorruptData, "checkpoint file '", path, "' does not match its manifest entry (dim, rows or buckets)");
  const size_t floats_bytes = static_cast<size_t>(h.row_floats) * sizeof(float);
  const size_t record = floats_bytes + sizeof(RowMeta);
  const int64_t* keys = reinterpret_cast<const int64_t*>(data.data() + sizeof(h));
  const uint8_t* records = data.data() + sizeof(h) + h.rows * sizeof(int64_t);

  HashTable& ht = table.hash_table();
  std::vector<std::byte> row(table.row_bytes(), std::byte{0});
  std::vector<float> floats(h.row_floats);
  for (uint64_t i = 0; i < h.rows; ++i) {
    int64_t key;
    std::memcpy(&key, keys + i, sizeof(key));
    uint32_t bucket = key_bucket(key);
    SC_CHECK(bucket >= h.bucket_lo && bucket < h.bucket_hi, CorruptData, "checkpoint file '", path, "': key ",
             key, " lies outside the file's bucket range");
    std::memcpy(floats.data(), records + i * record, floats_bytes);
    table.write_row(floats.data(), floats.data() + table.dim(), row.data());
    RowMeta meta;
    std::memcpy(&meta, records + i * record + floats_bytes, sizeof(RowMeta));
    *table.meta(row.data()) = PackedRowMeta::pack(meta);
    uint64_t hash = key_hash(key);
    auto& shard = ht.shard(ht.shard_of_hash(hash));
    std::unique_lock lock(shard.mutex);
    shard.upsert_copy(key, hash, row.data());
  }
}

}  // namespace

void EmbeddingCollection::save(const std::string& dir, bool overwrite) const {
  std::shared_lock swap_lock(swap_mutex_);
  const std::string manifest_path = join(dir, kManifest);
  if (path_exists(manifest_path)) {
    SC_CHECK_ARG(overwrite, "a finished checkpoint already exists at '", dir, "' (pass overwrite=true to replace it)");
    // From here until the new manifest lands, the directory is not a finished checkpoint.
    remove_file(manifest_path);
    sync_directory(dir);
  }
  make_directories(dir);

  struct Task {
    int table, shard;
  };
  std::vector<Task> tasks;
  for (int t = 0; t < num_tables(); ++t)
    for (int s = 0; s < tables_[t]->hash_table().num_shards(); ++s) tasks.push_back({t, s});
  std::vector<FileEntry> entries(tasks.size());
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) entries[i] = write_shard_file(dir, tasks[i].table, *tables_[tasks[i].table], tasks[i].shard);
  });

  Json manifest = Json::object();
  manifest["format"] = "sparsecore.embedding_collection";
  manifest["format_version"] = static_cast<int64_t>(kFormatVersion);
  manifest["seed"] = seed_;
  manifest["step"] = step();
  manifest["num_buckets"] = static_cast<int64_t>(kNumBuckets);
  Json tables = Json::array();
  size_t next = 0;
  for (int t = 0; t < num_tables(); ++t) {
    Json jt = Json::object();
    jt["config"] = tables_[t]->config().to_json();
    jt["seed"] = tables_[t]->seed();
    Json files = Json::array();
    int64_t rows = 0;
    for (int s = 0; s < tables_[t]->hash_table().num_shards(); ++s, ++next) {
      const FileEntry& e = entries[next];
      Json jf = Json::object();
      jf["path"] = e.path;
      jf["bucket_lo"] = static_cast<int64_t>(e.bucket_lo);
      jf["bucket_hi"] = static_cast<int64_t>(e.bucket_hi);
      jf["rows"] = e.rows;
      jf["bytes"] = e.bytes;
      jf["checksum"] = hex64(e.checksum);
      files.push_back(std::move(jf));
      rows += static_cast<int64_t>(e.rows);
    }
    jt["rows"] = rows;
    jt["files"] = std::move(files);
    tables.push_back(std::move(jt));
  }
  manifest["tables"] = std::move(tables);
  std::string text = manifest.dump(1);
  write_file_atomic(manifest_path, text.data(), text.size());
}

std::unique_ptr<EmbeddingCollection> EmbeddingCollection::load(const std::string& dir) {
  const std::string manifest_path = join(dir, kManifest);
  SC_CHECK(path_exists(manifest_path), NotFound, "no finished checkpoint at '", dir, "' (", kManifest, " missing)");
  std::vector<uint8_t> text = read_file(manifest_path);
  Json manifest = Json::parse(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  try {
    SC_CHECK(manifest.at("format").as_string() == "sparsecore.embedding_collection", CorruptData,
             "'", manifest_path, "' is not an embedding collection checkpoint");
    int64_t version = manifest.at("format_version").as_int();
    SC_CHECK(version == kFormatVersion, CorruptData, "checkpoint format version ", version, " (this build reads ",
             kFormatVersion, ")");
    uint64_t seed = static_cast<uint64_t>(manifest.at("seed").as_int());
    int64_t step = manifest.at("step").as_int();

    std::vector<std::unique_ptr<EmbeddingTable>> tables;
    struct Job {
      int table;
      FileEntry entry;
    };
    std::vector<Job> jobs;
    std::vector<int64_t> expected_rows;
    for (const Json& jt : manifest.at("tables").as_array()) {
      TableConfig config = TableConfig::from_json(jt.at("config"));
      uint64_t ts = static_cast<uint64_t>(jt.at("seed").as_int());
      tables.push_back(std::make_unique<EmbeddingTable>(std::move(config), ts));
      expected_rows.push_back(jt.at("rows").as_int());
      for (const Json& jf : jt.at("files").as_array()) {
        FileEntry e;
        e.path = jf.at("path").as_string();
        SC_CHECK(e.path.find('/') == std::string::npos && e.path != "..", CorruptData, "manifest names a file outside the checkpoint: '", e.path, "'");
        e.bucket_lo = static_cast<uint32_t>(jf.at("bucket_lo").as_int());
        e.bucket_hi = static_cast<uint32_t>(jf.at("bucket_hi").as_int());
        e.rows = static_cast<uint64_t>(jf.at("rows").as_int());
        e.bytes = static_cast<uint64_t>(jf.at("bytes").as_int());
        e.checksum = std::stoull(jf.at("checksum").as_string(), nullptr, 16);
        jobs.push_back({static_cast<int>(tables.size()) - 1, e});
      }
    }
    parallel_for(static_cast<int64_t>(jobs.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) read_shard_file(dir, jobs[i].entry, *tables[jobs[i].table]);
    });
    for (size_t t = 0; t < tables.size(); ++t)
      SC_CHECK(static_cast<int64_t>(tables[t]->size()) == expected_rows[t], CorruptData, "table '",
               tables[t]->name(), "' holds ", tables[t]->size(), " rows after loading, the manifest says ",
               expected_rows[t], " (duplicate keys in the files)");
    return std::unique_ptr<EmbeddingCollection>(new EmbeddingCollection(std::move(tables), seed, step));
  } catch (const NotFound& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' is incomplete: " + e.what());
  } catch (const InvalidArgument& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' is invalid: " + e.what());
  } catch (const std::invalid_argument& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' has a bad checksum field");
  }
}

void EmbeddingCollection::restore(const std::string& dir) {
  std::unique_ptr<EmbeddingCollection> loaded = load(dir);
  std::unique_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(loaded->num_tables() == num_tables(), "checkpoint at '", dir, "' has ", loaded->num_tables(),
               " tables, this collection ", num_tables());
  for (int t = 0; t < num_tables(); ++t) {
    SC_CHECK_ARG(loaded->tables_[t]->name() == tables_[t]->name() && loaded->tables_[t]->dim() == tables_[t]->dim(),
                 "checkpoint table ", t, " is '", loaded->tables_[t]->name(), "' (dim ", loaded->tables_[t]->dim(),
                 "), this collection has '", tables_[t]->name(), "' (dim ", tables_[t]->dim(), ")");
  }
  for (auto& t : loaded->tables_) t->bump_generation();
  tables_.swap(loaded->tables_);
  step_.store(loaded->step(), std::memory_order_release);
}

}  // namespace sparsecore
