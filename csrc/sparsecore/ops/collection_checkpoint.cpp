// Checkpoint save/load of an EmbeddingCollection (format: docs/architecture.md, "Files and frames").
//
// Directory layout:
//   manifest.json              every table's config, seed and file list (sizes, checksums)
//   t<table>-b<lo>-<hi>.rows   the rows of a run of table shards = one bucket range [lo, hi);
//                              at most kMaxFilesPerTable per table, none for an empty range
// Row file, little-endian:
//   header (64 bytes): magic "SCROWS01", format version u32, dim u32, row_floats u32,
//     meta_bytes u32, rows u64, bucket_lo u32, bucket_hi u32, table seed u64, zero padding
//   keys  int64[rows]
//   rows  { float32 weights[dim], float32 state[row_floats - dim], RowMeta } [rows]
// Weights are float32 in the file whatever the table's storage (manifest: "storage"): fp16
// weights widen exactly and round back to the same bits, so an fp16 table round-trips exactly.
// Files are addressed by bucket range, so a checkpoint loads into any shard count.
//
// save() writes a fresh sibling directory and switches it in with commit_directory, so a
// crash at any instant leaves the previous checkpoint (or none) at `dir`, never a mix.
// load() trusts nothing it reads: every field is checked (CorruptData otherwise), every size
// is checked against the manifest and the file before anything is read or allocated, and
// files are opened without following symlinks and only when regular.
#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
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

constexpr int kMaxFilesPerTable = 64;
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
constexpr size_t kMaxTables = 1 << 16;
// Hash-table shards a load may create beyond one per row of its files: each costs a few
// hundred bytes before it holds a row, so a short manifest naming many tables with many
// shards could otherwise ask for gigabytes.
constexpr uint64_t kFreeShards = 1 << 18;

std::string join(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

// A manifest integer in [lo, hi], CorruptData naming `what` otherwise.
int64_t bounded_int(const Json& j, const char* what, int64_t lo, int64_t hi) {
  int64_t v = j.as_int(what);
  SC_CHECK(v >= lo && v <= hi, CorruptData, what, " ", v, " is outside [", lo, ", ", hi, "]");
  return v;
}

struct FileEntry {
  std::string path;
  uint32_t bucket_lo = 0, bucket_hi = 0;
  uint64_t rows = 0, bytes = 0, checksum = 0;
};

// Bytes of a row file of `rows` records of `row_floats` floats, or 0 when that overflows.
uint64_t row_file_bytes(uint64_t rows, uint64_t row_floats) {
  const uint64_t record = sizeof(int64_t) + row_floats * sizeof(float) + sizeof(RowMeta);
  if (rows > (UINT64_MAX - sizeof(FileHeader)) / record) return 0;
  return sizeof(FileHeader) + rows * record;
}

// Encodes hash shards [s_lo, s_hi) of `table` (one bucket range) as the bytes of one row file
// and its manifest entry; no bytes and rows == 0 when they are empty (no file is written).
std::pair<FileEntry, std::vector<uint8_t>> encode_range_file(int table_index, const EmbeddingTable& table, int s_lo,
                                                             int s_hi) {
  const HashTable& ht = table.hash_table();
  const uint32_t per_shard = kNumBuckets >> ht.shard_bits();
  FileEntry e;
  e.bucket_lo = static_cast<uint32_t>(s_lo) * per_shard;
  e.bucket_hi = static_cast<uint32_t>(s_hi) * per_shard;
  char name[64];
  std::snprintf(name, sizeof(name), "t%03d-b%05u-%05u.rows", table_index, e.bucket_lo, e.bucket_hi);
  e.path = name;

  size_t rows = 0;
  if (!table.dense())
    for (int s = s_lo; s < s_hi; ++s) rows += ht.shard(s).size();  // a bound; exact below
  const size_t floats_bytes = static_cast<size_t>(table.row_floats()) * sizeof(float);
  const size_t record = floats_bytes + sizeof(RowMeta);
  std::vector<int64_t> keys;
  std::vector<uint8_t> records;
  keys.reserve(rows);
  records.reserve(rows * record);
  std::vector<float> floats(table.row_floats());
  {
    table.for_each_in_shards(s_lo, s_hi, [&](int64_t key, std::byte* row) {
      keys.push_back(key);
      table.read_row(row, floats.data());
      const uint8_t* src = reinterpret_cast<const uint8_t*>(floats.data());
      records.insert(records.end(), src, src + floats_bytes);
      // Files keep the 16-byte RowMeta whatever the in-memory packing.
      const RowMeta meta = table.meta(row)->unpack();
      const uint8_t* m = reinterpret_cast<const uint8_t*>(&meta);
      records.insert(records.end(), m, m + sizeof(RowMeta));
    });
  }
  if (keys.empty()) return {e, {}};

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
  std::vector<uint8_t> bytes(sizeof(h) + keys.size() * sizeof(int64_t) + records.size());
  std::memcpy(bytes.data(), &h, sizeof(h));
  std::memcpy(bytes.data() + sizeof(h), keys.data(), keys.size() * sizeof(int64_t));
  std::memcpy(bytes.data() + sizeof(h) + keys.size() * sizeof(int64_t), records.data(), records.size());
  e.rows = keys.size();
  e.bytes = bytes.size();
  e.checksum = checksum64(bytes.data(), bytes.size());
  return {e, std::move(bytes)};
}

void write_whole_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  File f = File::create(path);
  f.write_all(bytes.data(), bytes.size());
  f.sync();
  f.close();
}

// Reads one row file, verifies it against its manifest entry (whose sizes were checked
// against the table already) and inserts its rows into `table` (a fresh table not yet
// visible to anyone).
void read_range_file(const std::string& dir, const FileEntry& e, EmbeddingTable& table) {
  const std::string path = join(dir, e.path);
  std::vector<uint8_t> data = read_regular_file(path, e.bytes);
  SC_CHECK(data.size() == e.bytes, CorruptData, "checkpoint file '", path, "' has ", data.size(),
           " bytes, the manifest says ", e.bytes, " (truncated or replaced)");
  SC_CHECK(checksum64(data.data(), data.size()) == e.checksum, CorruptData, "checkpoint file '", path,
           "' fails its checksum (corrupted)");
  FileHeader h;
  std::memcpy(&h, data.data(), sizeof(h));
  SC_CHECK(std::memcmp(h.magic, kMagic, 8) == 0, CorruptData, "checkpoint file '", path, "' has a bad magic");
  SC_CHECK(h.version == kFormatVersion, CorruptData, "checkpoint file '", path, "' has format version ", h.version,
           ", this build reads ", kFormatVersion);
  SC_CHECK(h.dim == static_cast<uint32_t>(table.dim()) && h.row_floats == static_cast<uint32_t>(table.row_floats()) &&
               h.meta_bytes == sizeof(RowMeta) && h.rows == e.rows && h.bucket_lo == e.bucket_lo &&
               h.bucket_hi == e.bucket_hi && h.table_seed == table.seed(),
           CorruptData, "checkpoint file '", path,
           "' does not match its manifest entry (dim, row size, rows, buckets or seed)");
  SC_CHECK(row_file_bytes(h.rows, h.row_floats) == data.size(), CorruptData, "checkpoint file '", path, "' holds ",
           data.size(), " bytes, its header's ", h.rows, " rows need ", row_file_bytes(h.rows, h.row_floats));
  const size_t floats_bytes = static_cast<size_t>(h.row_floats) * sizeof(float);
  const size_t record = floats_bytes + sizeof(RowMeta);
  const uint8_t* keys = data.data() + sizeof(h);
  const uint8_t* records = keys + h.rows * sizeof(int64_t);

  std::vector<std::byte> row(table.row_bytes(), std::byte{0});
  const int64_t num_embeddings = table.config().num_embeddings;
  std::vector<float> floats(h.row_floats);
  for (uint64_t i = 0; i < h.rows; ++i) {
    int64_t key;
    std::memcpy(&key, keys + i * sizeof(int64_t), sizeof(key));
    uint32_t bucket = key_bucket(key);
    SC_CHECK(bucket >= h.bucket_lo && bucket < h.bucket_hi, CorruptData, "checkpoint file '", path, "': key ", key,
             " lies outside the file's bucket range");
    SC_CHECK(num_embeddings == 0 || (key >= 0 && key < num_embeddings), CorruptData, "checkpoint file '", path,
             "': key ", key, " lies outside [0, ", num_embeddings, ") of table '", table.name(), "'");
    std::memcpy(floats.data(), records + i * record, floats_bytes);
    table.write_row(floats.data(), floats.data() + table.dim(), row.data());
    RowMeta meta;
    std::memcpy(&meta, records + i * record + floats_bytes, sizeof(RowMeta));
    *table.meta(row.data()) = PackedRowMeta::pack(meta);
    table.upsert_copy(key, row.data());
  }
}

// `dir` without trailing separators, split into (parent, last component).
std::pair<std::string, std::string> split_target(const std::string& dir) {
  std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  SC_CHECK_ARG(is_plain_name(p.filename().string()), "checkpoint path '", dir, "' must end in a directory name");
  std::string parent = p.parent_path().string();
  return {parent.empty() ? "." : parent, p.filename().string()};
}

// Whether the existing directory `dir` may be replaced by a checkpoint: it is one, or it is
// empty, or it holds nothing but what a checkpoint save writes (an older save cut short).
void check_replaceable(const std::string& dir, bool overwrite) {
  SC_CHECK_ARG(std::filesystem::is_directory(dir), "'", dir, "' exists and is not a directory");
  if (path_exists(join(dir, kManifest))) {
    SC_CHECK_ARG(overwrite, "a finished checkpoint already exists at '", dir, "' (pass overwrite=true to replace it)");
    return;
  }
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const bool ours = (name.size() > 5 && name.ends_with(".rows")) ||
                      (name.size() > 10 && name.ends_with(".admission")) || name == std::string(kManifest) + ".tmp";
    SC_CHECK_ARG(ours, "'", dir, "' exists and holds '", name,
                 "', which is not part of a checkpoint; "
                 "refusing to replace it");
  }
  if (ec) throw IoError("cannot list '" + dir + "': " + ec.message());
}

// The runs of table shards that become one file each: (table, first shard, end shard).
struct RangeTask {
  int table, shard_lo, shard_hi;
};

std::vector<RangeTask> range_tasks(const std::vector<std::unique_ptr<EmbeddingTable>>& tables) {
  std::vector<RangeTask> tasks;
  for (int t = 0; t < static_cast<int>(tables.size()); ++t) {
    const int shards = tables[t]->hash_table().num_shards();
    const int per_file = std::max(1, shards / kMaxFilesPerTable);
    for (int s = 0; s < shards; s += per_file) tasks.push_back({t, s, std::min(shards, s + per_file)});
  }
  return tasks;
}

// The admission state of each table with admission (empty bytes and path for the others).
std::vector<std::pair<FileEntry, std::vector<uint8_t>>> encode_admission(
    const std::vector<std::unique_ptr<EmbeddingTable>>& tables) {
  std::vector<std::pair<FileEntry, std::vector<uint8_t>>> out(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) {
    const Admission* a = tables[t]->admission();
    if (!a) continue;
    char name[32];
    std::snprintf(name, sizeof(name), "t%03d.admission", static_cast<int>(t));
    auto& [e, bytes] = out[t];
    bytes = a->serialize();
    e.path = name;
    e.bytes = bytes.size();
    e.checksum = checksum64(bytes.data(), bytes.size());
  }
  return out;
}

std::string manifest_text(const std::vector<std::unique_ptr<EmbeddingTable>>& tables, uint64_t seed, int64_t step,
                          const std::vector<RangeTask>& tasks, const std::vector<FileEntry>& entries,
                          const std::vector<std::pair<FileEntry, std::vector<uint8_t>>>& admission) {
  Json manifest = Json::object();
  manifest["format"] = "sparsecore.embedding_collection";
  manifest["format_version"] = static_cast<int64_t>(kFormatVersion);
  manifest["seed"] = seed;
  manifest["step"] = step;
  manifest["num_buckets"] = static_cast<int64_t>(kNumBuckets);
  Json jtables = Json::array();
  size_t next = 0;
  for (int t = 0; t < static_cast<int>(tables.size()); ++t) {
    Json jt = Json::object();
    jt["config"] = tables[t]->config().to_json();
    jt["seed"] = tables[t]->seed();
    Json files = Json::array();
    int64_t rows = 0;
    for (; next < tasks.size() && tasks[next].table == t; ++next) {
      const FileEntry& e = entries[next];
      if (e.rows == 0) continue;
      Json jf = Json::object();
      jf["path"] = e.path;
      jf["bucket_lo"] = static_cast<int64_t>(e.bucket_lo);
      jf["bucket_hi"] = static_cast<int64_t>(e.bucket_hi);
      jf["rows"] = e.rows;
      jf["bytes"] = e.bytes;
      jf["checksum"] = checksum_hex(e.checksum);
      files.push_back(std::move(jf));
      rows += static_cast<int64_t>(e.rows);
    }
    jt["rows"] = rows;
    jt["files"] = std::move(files);
    if (const FileEntry& a = admission[t].first; !a.path.empty()) {
      Json ja = Json::object();
      ja["path"] = a.path;
      ja["bytes"] = a.bytes;
      ja["checksum"] = checksum_hex(a.checksum);
      jt["admission"] = std::move(ja);
    }
    if (const Expiry* e = tables[t]->expiry()) jt["expiry_state"] = e->state_json();
    jtables.push_back(std::move(jt));
  }
  manifest["tables"] = std::move(jtables);
  return manifest.dump(1);
}

}  // namespace

void EmbeddingCollection::write_checkpoint(const std::string& dir) const {
  require_local("write_checkpoint");
  // One range in memory per worker at a time: the file is written as soon as it is encoded.
  const std::vector<RangeTask> tasks = range_tasks(tables_);
  std::vector<FileEntry> entries(tasks.size());
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      auto [entry, bytes] =
          encode_range_file(tasks[i].table, *tables_[tasks[i].table], tasks[i].shard_lo, tasks[i].shard_hi);
      if (entry.rows > 0) write_whole_file(join(dir, entry.path), bytes);
      entries[i] = std::move(entry);
    }
  });
  const auto admission = encode_admission(tables_);
  for (const auto& [e, bytes] : admission)
    if (!e.path.empty()) write_whole_file(join(dir, e.path), bytes);
  const std::string text = manifest_text(tables_, seed_, step(), tasks, entries, admission);
  write_whole_file(join(dir, kManifest), std::vector<uint8_t>(text.begin(), text.end()));
}

EncodedCheckpoint EmbeddingCollection::encode_checkpoint() const {
  require_local("encode_checkpoint");
  const std::vector<RangeTask> tasks = range_tasks(tables_);
  std::vector<FileEntry> entries(tasks.size());
  std::vector<std::vector<uint8_t>> bytes(tasks.size());
  parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i)
      std::tie(entries[i], bytes[i]) =
          encode_range_file(tasks[i].table, *tables_[tasks[i].table], tasks[i].shard_lo, tasks[i].shard_hi);
  });
  EncodedCheckpoint out;
  for (size_t i = 0; i < tasks.size(); ++i)
    if (entries[i].rows > 0) out.files.emplace_back(entries[i].path, std::move(bytes[i]));
  auto admission = encode_admission(tables_);
  const std::string text = manifest_text(tables_, seed_, step(), tasks, entries, admission);
  for (auto& [e, bytes] : admission)
    if (!e.path.empty()) out.files.emplace_back(e.path, std::move(bytes));
  out.files.emplace_back(kManifest, std::vector<uint8_t>(text.begin(), text.end()));
  return out;
}

void EncodedCheckpoint::write(const std::string& dir) const {
  for (const auto& [name, bytes] : files) write_whole_file(join(dir, name), bytes);
}

void EmbeddingCollection::save(const std::string& dir, bool overwrite) const {
  require_local("save");
  const auto [parent, base] = split_target(dir);
  const std::string target = join(parent, base);
  if (path_exists(target)) check_replaceable(target, overwrite);
  make_directories(parent);
  // Directories of saves that died before their switch; one save at a time per directory.
  // Only real directories named as this save names its own (.<base>.saving-<random_suffix>):
  // another entry that merely starts so, or a symlink, is not ours.
  const std::string stale_prefix = "." + base + ".saving-";
  remove_stale_stagings(parent, stale_prefix);
  const std::string staging = join(parent, stale_prefix + random_suffix());
  make_directory(staging);
  try {
    {
      std::shared_lock swap_lock(swap_mutex_);
      write_checkpoint(staging);
    }
    commit_directory(staging, target, /*files_synced=*/true);  // write_checkpoint fsyncs each file
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove_all(staging, ec);
    throw;
  }
}

std::unique_ptr<EmbeddingCollection> EmbeddingCollection::load(const std::string& requested) {
  const std::string dir = committed_directory(requested);
  const std::string manifest_path = join(dir.empty() ? requested : dir, kManifest);
  SC_CHECK(!dir.empty() && path_exists(manifest_path), NotFound, "no finished checkpoint at '", requested, "' (",
           kManifest, " missing)");
  std::vector<uint8_t> text = read_regular_file(manifest_path, kMaxManifestBytes);
  Json manifest = Json::parse(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  try {
    SC_CHECK(manifest.at("format").as_string("format") == "sparsecore.embedding_collection", CorruptData, "'",
             manifest_path, "' is not an embedding collection checkpoint");
    int64_t version = manifest.at("format_version").as_int("format_version");
    SC_CHECK(version == kFormatVersion, CorruptData, "checkpoint format version ", version, " (this build reads ",
             kFormatVersion, ")");
    uint64_t seed = static_cast<uint64_t>(manifest.at("seed").as_int("seed"));
    int64_t step = bounded_int(manifest.at("step"), "step", 0, INT64_MAX);
    if (const Json* nb = manifest.get("num_buckets"))
      SC_CHECK(nb->as_int("num_buckets") == kNumBuckets, CorruptData, "checkpoint has ", nb->as_int(),
               " buckets, this build routes by ", kNumBuckets);

    // Everything is parsed and checked against everything else before a table is created.
    struct TableEntry {
      TableConfig config;
      uint64_t seed = 0;
      uint64_t rows = 0;
      std::vector<FileEntry> files;
      FileEntry admission;  // path empty: none saved
      const Json* expiry_state = nullptr;
    };
    std::vector<TableEntry> entries;
    const Json::Array& jtables = manifest.at("tables").as_array("tables");
    SC_CHECK(jtables.size() <= kMaxTables, CorruptData, "checkpoint lists ", jtables.size(), " tables, at most ",
             kMaxTables, " are allowed");
    std::set<std::string> names, paths;
    uint64_t total_rows = 0, total_shards = 0;
    for (const Json& jt : jtables) {
      TableEntry te;
      te.config = TableConfig::from_json(jt.at("config"));
      te.seed = static_cast<uint64_t>(jt.at("seed").as_int("table seed"));
      SC_CHECK(names.insert(te.config.name).second, CorruptData, "checkpoint lists table '", te.config.name, "' twice");
      const uint64_t row_floats =
          static_cast<uint64_t>(te.config.dim) + static_cast<uint64_t>(te.config.optimizer.state_dim(te.config.dim));
      const uint64_t table_rows = static_cast<uint64_t>(bounded_int(jt.at("rows"), "table rows", 0, INT64_MAX));
      uint64_t file_rows = 0;
      for (const Json& jf : jt.at("files").as_array("files")) {
        FileEntry e;
        e.path = jf.at("path").as_string("file path");
        SC_CHECK(is_plain_name(e.path), CorruptData, "manifest names a file outside the checkpoint: '", e.path, "'");
        SC_CHECK(paths.insert(e.path).second, CorruptData, "manifest names file '", e.path, "' twice");
        e.bucket_lo = static_cast<uint32_t>(bounded_int(jf.at("bucket_lo"), "bucket_lo", 0, kNumBuckets - 1));
        e.bucket_hi = static_cast<uint32_t>(bounded_int(jf.at("bucket_hi"), "bucket_hi", e.bucket_lo + 1, kNumBuckets));
        e.rows = static_cast<uint64_t>(bounded_int(jf.at("rows"), "file rows", 0, INT64_MAX));
        e.bytes = static_cast<uint64_t>(bounded_int(jf.at("bytes"), "file bytes", 0, INT64_MAX));
        e.checksum = parse_checksum_hex(jf.at("checksum").as_string("checksum"));
        const uint64_t need = row_file_bytes(e.rows, row_floats);
        SC_CHECK(need != 0 && need == e.bytes, CorruptData, "manifest entry '", e.path, "' of table '", te.config.name,
                 "' lists ", e.rows, " rows in ", e.bytes, " bytes (dim and optimizer need ", need, ")");
        file_rows += e.rows;
        te.files.push_back(std::move(e));
      }
      SC_CHECK(file_rows == table_rows, CorruptData, "table '", te.config.name, "' lists ", table_rows,
               " rows, its files ", file_rows);
      std::sort(te.files.begin(), te.files.end(),
                [](const FileEntry& a, const FileEntry& b) { return a.bucket_lo < b.bucket_lo; });
      for (size_t i = 1; i < te.files.size(); ++i)
        SC_CHECK(te.files[i].bucket_lo >= te.files[i - 1].bucket_hi, CorruptData, "files of table '", te.config.name,
                 "' overlap in buckets (", te.files[i - 1].path, ", ", te.files[i].path, ")");
      if (const Json* ja = jt.get("admission")) {
        SC_CHECK(te.config.admission.enabled(), CorruptData, "table '", te.config.name,
                 "' lists an admission file but has no admission configured");
        FileEntry& e = te.admission;
        e.path = ja->at("path").as_string("admission path");
        SC_CHECK(is_plain_name(e.path), CorruptData, "manifest names a file outside the checkpoint: '", e.path, "'");
        SC_CHECK(paths.insert(e.path).second, CorruptData, "manifest names file '", e.path, "' twice");
        e.bytes = static_cast<uint64_t>(
            bounded_int(ja->at("bytes"), "admission bytes", Admission::kHeaderBytes, int64_t{1} << 40));
        e.checksum = parse_checksum_hex(ja->at("checksum").as_string("checksum"));
        // The size is fixed by the config for a Bloom filter, a whole number of entries otherwise.
        const Admission probe(te.config.admission, te.seed);
        const uint64_t want = probe.bloom() ? Admission::kHeaderBytes + probe.bloom()->bytes().size() : e.bytes;
        SC_CHECK(
            e.bytes == want && (e.bytes - Admission::kHeaderBytes) % (probe.bloom() ? 1 : Admission::kEntryBytes) == 0,
            CorruptData, "manifest entry '", e.path, "' of table '", te.config.name, "' lists ", e.bytes,
            " bytes of admission state, its config does not allow that size");
      } else {
        SC_CHECK(!te.config.admission.enabled(), CorruptData, "table '", te.config.name,
                 "' has admission configured but no admission file");
      }
      te.expiry_state = jt.get("expiry_state");
      SC_CHECK(!te.expiry_state || te.config.expiry.enabled(), CorruptData, "table '", te.config.name,
               "' lists an expiry state but has no expiry configured");
      te.rows = table_rows;
      total_rows += table_rows;
      total_shards += uint64_t{1} << te.config.shard_bits;
      entries.push_back(std::move(te));
    }
    SC_CHECK(total_shards <= kFreeShards + total_rows, CorruptData, "checkpoint asks for ", total_shards,
             " table shards for ", total_rows, " rows (at most ", kFreeShards, " beyond one per row)");

    std::vector<std::unique_ptr<EmbeddingTable>> tables;
    struct Job {
      int table;
      const FileEntry* entry;
    };
    std::vector<Job> jobs;
    for (const TableEntry& te : entries) {
      tables.push_back(std::make_unique<EmbeddingTable>(te.config, te.seed));
      for (const FileEntry& e : te.files) jobs.push_back({static_cast<int>(tables.size()) - 1, &e});
    }
    parallel_for(static_cast<int64_t>(jobs.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) read_range_file(dir, *jobs[i].entry, *tables[jobs[i].table]);
    });
    for (size_t t = 0; t < tables.size(); ++t) {
      const FileEntry& e = entries[t].admission;
      if (e.path.empty()) continue;
      const std::string path = join(dir, e.path);
      const std::vector<uint8_t> data = read_regular_file(path, e.bytes);
      SC_CHECK(data.size() == e.bytes, CorruptData, "checkpoint file '", path, "' has ", data.size(),
               " bytes, the manifest says ", e.bytes, " (truncated or replaced)");
      SC_CHECK(checksum64(data.data(), data.size()) == e.checksum, CorruptData, "checkpoint file '", path,
               "' does not match its checksum");
      try {
        tables[t]->admission()->deserialize(data.data(), data.size());
      } catch (const InvalidArgument& ex) {
        throw CorruptData("checkpoint file '" + path + "': " + ex.what());
      }
    }
    for (size_t t = 0; t < tables.size(); ++t)
      if (entries[t].expiry_state) tables[t]->expiry()->load_state(*entries[t].expiry_state);
    for (size_t t = 0; t < tables.size(); ++t)
      SC_CHECK(tables[t]->size() == entries[t].rows, CorruptData, "table '", tables[t]->name(), "' holds ",
               tables[t]->size(), " rows after loading, its files list ", entries[t].rows,
               " (duplicate keys in the files)");
    return std::unique_ptr<EmbeddingCollection>(new EmbeddingCollection(std::move(tables), seed, step));
  } catch (const NotFound& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' is incomplete: " + e.what());
  } catch (const InvalidArgument& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' is invalid: " + e.what());
  } catch (const TypeMismatch& e) {
    throw CorruptData(std::string("checkpoint manifest '") + manifest_path + "' is invalid: " + e.what());
  }
}

void EmbeddingCollection::restore(const std::string& dir) {
  require_local("restore");
  std::unique_ptr<EmbeddingCollection> loaded = load(dir);
  std::unique_lock swap_lock(swap_mutex_);
  SC_CHECK_ARG(loaded->num_tables() == num_tables(), "checkpoint at '", dir, "' has ", loaded->num_tables(),
               " tables, this collection ", num_tables());
  for (int t = 0; t < num_tables(); ++t) {
    SC_CHECK_ARG(loaded->tables_[t]->name() == tables_[t]->name() && loaded->tables_[t]->dim() == tables_[t]->dim(),
                 "checkpoint table ", t, " is '", loaded->tables_[t]->name(), "' (dim ", loaded->tables_[t]->dim(),
                 "), this collection has '", tables_[t]->name(), "' (dim ", tables_[t]->dim(), ")");
    const TableConfig& have = tables_[t]->config();
    const TableConfig& got = loaded->tables_[t]->config();
    SC_CHECK_ARG(got.num_embeddings == have.num_embeddings && got.out_of_range == have.out_of_range,
                 "checkpoint table '", got.name, "' has num_embeddings ", got.num_embeddings, " (out_of_range '",
                 out_of_range_name(got.out_of_range), "'), this collection's has ", have.num_embeddings,
                 " (out_of_range '", out_of_range_name(have.out_of_range), "'); 0 means a hash table");
  }
  for (auto& t : loaded->tables_) t->bump_generation();
  // The run-time parts of expiry (predicate, clock) stay with the collection.
  for (int t = 0; t < num_tables(); ++t)
    if (Expiry* now = tables_[t]->expiry(); now && loaded->tables_[t]->expiry())
      loaded->tables_[t]->expiry()->copy_callables(*now);
  tables_.swap(loaded->tables_);
  step_.store(loaded->step(), std::memory_order_release);
}

}  // namespace sparsecore
