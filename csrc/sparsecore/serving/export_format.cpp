#include "sparsecore/serving/export_format.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/row_quantization.h"

namespace sparsecore::serving {
namespace {

static_assert(std::endian::native == std::endian::little, "export files are little-endian");

constexpr const char* kFormat = "sparsecore-export";
constexpr int64_t kFormatVersion = 2;
// Format version 1 (one checksum per file) is still read.
constexpr int64_t kOldestFormatVersion = 1;
// The checksummed unit of a file, and of each positioned write: large enough that a write
// is one efficient system call, small enough that a block stays in the core's cache between
// its encoding, its checksum and its write, and that an 80 MB file splits across many cores.
constexpr uint64_t kBlockBytes = 1ull << 20;
// What a reader accepts (a manifest cannot make it checksum in tiny steps or huge ones).
constexpr uint64_t kMinBlockBytes = 4096, kMaxBlockBytes = 1ull << 30;
// Files open at once while a part is written (tables are written in groups).
constexpr size_t kMaxOpenFiles = 60;
constexpr const char* kManifest = "manifest.json";
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
constexpr int64_t kMaxTables = 1 << 16;
constexpr int64_t kMaxParts = 1 << 20;
constexpr int64_t kMaxRows = int64_t{1} << 40;

std::string join(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

struct FileRecord {
  std::string name;
  uint64_t bytes = 0;
  uint64_t checksum = 0;
};

// A manifest integer in [lo, hi], CorruptData naming `what` otherwise.
int64_t bounded(const Json& j, const std::string& what, int64_t lo, int64_t hi) {
  SC_CHECK(j.is_int(), CorruptData, "export manifest: '", what, "' is not an integer");
  const int64_t v = j.as_int(what);
  SC_CHECK(v >= lo && v <= hi, CorruptData, "export manifest: '", what, "' = ", v, " is outside [", lo, ", ", hi, "]");
  return v;
}

const Json& field(const Json& j, const std::string& key, const std::string& where) {
  SC_CHECK(j.is_object(), CorruptData, "export manifest: ", where, " is not an object");
  const Json* v = j.get(key);
  SC_CHECK(v != nullptr, CorruptData, "export manifest: ", where, " has no '", key, "'");
  return *v;
}

const std::string& text_field(const Json& j, const std::string& key, const std::string& where) {
  const Json& v = field(j, key, where);
  SC_CHECK(v.is_string(), CorruptData, "export manifest: ", where, " '", key, "' is not a string");
  return v.as_string(key);
}

// Reads the file a manifest entry names, after checking its size against `expected` (what
// the table's counts imply) and against the file itself, then its checksums: one per
// `block_bytes` of the file checked in parallel (format version 2), or one of the whole file
// (block_bytes 0: format version 1).
std::vector<uint8_t> read_checked(const std::string& dir, const Json& entry, const std::string& expect_name,
                                  uint64_t expected, uint64_t block_bytes) {
  const std::string& name = text_field(entry, "name", expect_name);
  SC_CHECK(name == expect_name, CorruptData, "export manifest names file '", name, "' where '", expect_name,
           "' belongs");
  const uint64_t bytes = static_cast<uint64_t>(bounded(field(entry, "bytes", name), name + " bytes", 0, INT64_MAX));
  SC_CHECK(bytes == expected, CorruptData, "export file '", name, "': the manifest says ", bytes,
           " bytes, its counts imply ", expected);
  std::vector<uint64_t> checksums;
  if (block_bytes == 0) {
    checksums.push_back(parse_checksum_hex(text_field(entry, "checksum", name)));
  } else {
    const Json& list = field(entry, "checksums", name);
    const uint64_t blocks = (bytes + block_bytes - 1) / block_bytes;
    SC_CHECK(list.is_array() && list.as_array().size() == blocks, CorruptData, "export manifest: '", name,
             "' needs 'checksums', a list of ", blocks, " checksums (one per ", block_bytes, " bytes)");
    for (const Json& c : list.as_array()) {
      SC_CHECK(c.is_string(), CorruptData, "export manifest: a checksum of '", name, "' is not a string");
      checksums.push_back(parse_checksum_hex(c.as_string(name)));
    }
  }
  File f = File::open_regular(join(dir, name));
  const uint64_t actual = f.size();
  SC_CHECK(actual == bytes, CorruptData, "export file '", join(dir, name), "' has ", actual, " bytes, expected ", bytes,
           " (truncated or altered)");
  std::vector<uint8_t> data(bytes);
  if (bytes) f.read_exact(data.data(), bytes);
  if (block_bytes == 0) {
    SC_CHECK(checksum64(data.data(), data.size()) == checksums[0], CorruptData, "export file '", join(dir, name),
             "' fails its checksum (altered or damaged)");
    return data;
  }
  std::atomic<uint64_t> first_bad{UINT64_MAX};
  parallel_for(static_cast<int64_t>(checksums.size()), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint64_t at = static_cast<uint64_t>(b) * block_bytes, n = std::min(block_bytes, bytes - at);
      if (checksum64(data.data() + at, n) == checksums[static_cast<size_t>(b)]) continue;
      uint64_t seen = first_bad.load();
      while (static_cast<uint64_t>(b) < seen && !first_bad.compare_exchange_weak(seen, static_cast<uint64_t>(b))) {
      }
    }
  });
  const uint64_t bad = first_bad.load();
  SC_CHECK(bad == UINT64_MAX, CorruptData, "export file '", join(dir, name), "' fails its checksum in block ", bad,
           " (bytes ", bad * block_bytes, " to ", std::min(bytes, (bad + 1) * block_bytes), "; altered or damaged)");
  return data;
}

}  // namespace

const char* export_dtype_name(ExportDtype dtype) {
  switch (dtype) {
    case ExportDtype::kFloat32:
      return "fp32";
    case ExportDtype::kFloat16:
      return "fp16";
    case ExportDtype::kInt8:
      return "int8";
    case ExportDtype::kInt4:
      return "int4";
  }
  return "unknown";
}

ExportDtype export_dtype_from_name(const std::string& name) {
  if (name == "fp32") return ExportDtype::kFloat32;
  if (name == "fp16") return ExportDtype::kFloat16;
  if (name == "int8") return ExportDtype::kInt8;
  if (name == "int4") return ExportDtype::kInt4;
  throw InvalidArgument("unknown export dtype '" + name + "' (known: fp32, fp16, int8, int4)");
}

namespace {

// The row quantization of a coded dtype (every one but fp32).
quant::RowFormat row_format(ExportDtype dtype) {
  switch (dtype) {
    case ExportDtype::kFloat16:
      return quant::RowFormat::kFp16;
    case ExportDtype::kInt8:
      return quant::RowFormat::kInt8;
    case ExportDtype::kInt4:
      return quant::RowFormat::kInt4;
    case ExportDtype::kFloat32:
      break;
  }
  throw InvalidArgument(std::string("export dtype ") + export_dtype_name(dtype) + " is not a row quantization");
}

}  // namespace

uint64_t export_row_bytes(ExportDtype dtype, uint64_t dim) {
  switch (dtype) {
    case ExportDtype::kFloat32:
      return dim * sizeof(float);
    case ExportDtype::kFloat16:
      return dim * sizeof(uint16_t);
    case ExportDtype::kInt8:
    case ExportDtype::kInt4:
      return static_cast<uint64_t>(quant::quantized_row_bytes(row_format(dtype), static_cast<int64_t>(dim)));
  }
  return 0;
}

std::string export_name(const ExportName& n) {
  char buf[96];
  if (n.delta)
    std::snprintf(buf, sizeof(buf), "delta-%020" PRId64 "-%020" PRId64, n.since, n.version);
  else
    std::snprintf(buf, sizeof(buf), "full-%020" PRId64, n.version);
  return buf;
}

namespace {
// Exactly 20 decimal digits at text[at, at + 20).
bool parse_digits(const std::string& text, size_t at, int64_t& out) {
  if (text.size() < at + 20) return false;
  uint64_t v = 0;
  for (size_t i = at; i < at + 20; ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
    v = v * 10 + static_cast<uint64_t>(text[i] - '0');
    if (v > static_cast<uint64_t>(INT64_MAX)) return false;
  }
  out = static_cast<int64_t>(v);
  return true;
}
}  // namespace

bool parse_export_name(const std::string& text, ExportName& out) {
  ExportName n;
  if (text.rfind("full-", 0) == 0 && text.size() == 25) {
    if (!parse_digits(text, 5, n.version)) return false;
  } else if (text.rfind("delta-", 0) == 0 && text.size() == 47 && text[26] == '-') {
    n.delta = true;
    if (!parse_digits(text, 6, n.since) || !parse_digits(text, 27, n.version)) return false;
  } else {
    return false;
  }
  out = n;
  return true;
}

std::string part_name(int part, int num_parts) {
  return "part-" + std::to_string(part) + "-of-" + std::to_string(num_parts);
}

bool parse_part_name(const std::string& text, int& part, int& num_parts) {
  int p = -1, n = -1, used = 0;
  if (std::sscanf(text.c_str(), "part-%d-of-%d%n", &p, &n, &used) != 2) return false;
  if (static_cast<size_t>(used) != text.size() || n < 1 || n > kMaxParts || p < 0 || p >= n) return false;
  if (text != part_name(p, n)) return false;  // one spelling only (no signs or leading zeros)
  part = p;
  num_parts = n;
  return true;
}

namespace {

// One file of a part being written: its rows come from spans of `unit_in` bytes each in
// memory and take `unit_out` bytes each in the file; a coded file (fp16, int8, int4 rows)
// encodes them, every other one is the spans' bytes as they are.
struct OutFile {
  std::string name;
  std::vector<const uint8_t*> data;  // per span
  std::vector<uint64_t> first_row;   // per span, ascending
  uint64_t rows = 0;
  uint64_t unit_in = 0, unit_out = 0;
  bool coded = false;
  ExportDtype dtype = ExportDtype::kFloat32;
  int64_t dim = 0;
  uint64_t bytes = 0;
  std::vector<uint64_t> checksums;  // per block
  File file;

  OutFile(std::string n, File f) : name(std::move(n)), file(std::move(f)) {}
  void add(const void* p, uint64_t n) {
    if (n == 0) return;
    data.push_back(static_cast<const uint8_t*>(p));
    first_row.push_back(rows);
    rows += n;
  }
  uint64_t blocks() const { return (bytes + kBlockBytes - 1) / kBlockBytes; }
  // The span holding row r (< rows).
  size_t span_of(uint64_t r) const {
    return static_cast<size_t>(std::upper_bound(first_row.begin(), first_row.end(), r) - first_row.begin()) - 1;
  }

  // Encodes (coded) or gathers block b, checksums it, writes it at its offset and starts its
  // writeback. Runs on any thread; each block is written by exactly one task.
  void write_block(uint64_t b) {
    const uint64_t b0 = b * kBlockBytes, b1 = std::min(bytes, b0 + kBlockBytes);
    Checksum64 sum;
    if (coded) {
      // The rows the block touches, encoded whole (a row cut by the block's edge is encoded
      // by both blocks it spans), then the block's bytes of them.
      const uint64_t r0 = b0 / unit_out, r1 = (b1 + unit_out - 1) / unit_out;
      thread_local PodVector<uint8_t> scratch;
      scratch.resize((r1 - r0) * unit_out);
      for (uint64_t r = r0; r < r1;) {
        const size_t s = span_of(r);
        const uint64_t end = std::min(r1, s + 1 < first_row.size() ? first_row[s + 1] : rows);
        quant::quantize_rows(reinterpret_cast<const float*>(data[s] + (r - first_row[s]) * unit_in),
                             static_cast<int64_t>(end - r), dim, row_format(dtype),
                             scratch.data() + (r - r0) * unit_out);
        r = end;
      }
      const uint8_t* p = scratch.data() + (b0 - r0 * unit_out);
      sum.update(p, b1 - b0);
      file.write_at(p, b1 - b0, b0);
    } else {
      // Straight from the spans: one write per span the block crosses.
      for (uint64_t at = b0; at < b1;) {
        const size_t s = span_of(at / unit_out);
        const uint64_t span_begin = first_row[s] * unit_out;
        const uint64_t span_end = (s + 1 < first_row.size() ? first_row[s + 1] : rows) * unit_out;
        const uint64_t end = std::min(b1, span_end);
        const uint8_t* p = data[s] + (at - span_begin);
        sum.update(p, end - at);
        file.write_at(p, end - at, at);
        at = end;
      }
    }
    checksums[b] = sum.digest();
    file.start_writeback(b0, b1 - b0);
  }
};

Json file_json(const OutFile& f) {
  Json j = Json::object();
  j["name"] = f.name;
  j["bytes"] = static_cast<int64_t>(f.bytes);
  Json sums = Json::array();
  for (uint64_t c : f.checksums) sums.push_back(checksum_hex(c));
  j["checksums"] = std::move(sums);
  return j;
}

// Writes and syncs `files` (their sources set): every block of every file on the pool, then
// every file's fsync, also on the pool (the disk takes the files' data together).
void write_files(std::vector<OutFile>& files) {
  std::vector<std::pair<size_t, uint64_t>> blocks;
  for (size_t f = 0; f < files.size(); ++f) {
    files[f].checksums.assign(files[f].blocks(), 0);
    for (uint64_t b = 0; b < files[f].blocks(); ++b) blocks.emplace_back(f, b);
  }
  parallel_for(static_cast<int64_t>(blocks.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) files[blocks[i].first].write_block(blocks[i].second);
  });
  parallel_for(static_cast<int64_t>(files.size()), 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      files[f].file.sync();
      files[f].file.close();
    }
  });
}

}  // namespace

std::string write_export_part(const ExportPart& part, const std::string& stream_dir) {
  std::vector<ExportTableSource> sources;
  for (const ExportTable& t : part.tables) {
    const uint64_t dim = static_cast<uint64_t>(t.config.dim);
    SC_CHECK_ARG(t.weights.size() == t.keys.size() * dim, "export of table '", t.config.name, "': ", t.keys.size(),
                 " keys but ", t.weights.size(), " weights (dim ", dim, ")");
    sources.push_back({&t.config, t.seed, {{t.keys.data(), t.weights.data(), t.keys.size()}}, &t.deleted});
  }
  return write_export_part(static_cast<const ExportHeader&>(part), sources, stream_dir);
}

std::string write_export_part(const ExportHeader& part, const std::vector<ExportTableSource>& tables,
                              const std::string& stream_dir) {
  SC_CHECK_ARG(part.version >= 0, "export version must be >= 0, got ", part.version);
  SC_CHECK_ARG(!part.delta || (part.since >= 0 && part.since <= part.version), "a delta since version ", part.since,
               " cannot lead to version ", part.version);
  SC_CHECK_ARG(part.num_parts >= 1 && part.num_parts <= kMaxParts && part.part >= 0 && part.part < part.num_parts,
               "export part ", part.part, " of ", part.num_parts, " is out of range");
  for (const ExportTableSource& t : tables) {
    SC_CHECK_ARG(t.config != nullptr && t.config->dim > 0, "export of a table without a config or with dim <= 0");
    for (const ExportRowSpan& s : t.spans)
      SC_CHECK_ARG(s.rows == 0 || (s.keys && s.weights), "export of table '", t.config->name,
                   "': a span of rows without keys or weights");
  }
  const std::string export_dir = join(stream_dir, export_name({part.delta, part.since, part.version}));
  make_directories(export_dir);
  sync_directory(stream_dir);
  const std::string target_name = part_name(part.part, part.num_parts);
  const std::string staging = join(export_dir, "." + target_name + "." + random_suffix());
  make_directory(staging);
  try {
    Json jtables = Json::array();
    // Tables in groups, so that a part of many tables keeps few files open.
    constexpr size_t kGroup = kMaxOpenFiles / 3;
    for (size_t g = 0; g < tables.size(); g += kGroup) {
      std::vector<OutFile> files;
      files.reserve(3 * kGroup);
      for (size_t i = g; i < std::min(tables.size(), g + kGroup); ++i) {
        const ExportTableSource& t = tables[i];
        const uint64_t dim = static_cast<uint64_t>(t.config->dim);
        const std::string prefix = "table-" + std::to_string(i);
        OutFile& keys = files.emplace_back(prefix + ".keys", File::create(join(staging, prefix + ".keys")));
        keys.unit_in = keys.unit_out = sizeof(int64_t);
        OutFile& rows = files.emplace_back(prefix + ".rows", File::create(join(staging, prefix + ".rows")));
        rows.unit_in = dim * sizeof(float);
        rows.unit_out = export_row_bytes(part.dtype, dim);
        rows.coded = part.dtype != ExportDtype::kFloat32;
        rows.dtype = part.dtype;
        rows.dim = static_cast<int64_t>(dim);
        for (const ExportRowSpan& s : t.spans) {
          keys.add(s.keys, s.rows);
          rows.add(s.weights, s.rows);
        }
        keys.bytes = keys.rows * keys.unit_out;
        rows.bytes = rows.rows * rows.unit_out;
        if (t.deleted && !t.deleted->empty()) {
          OutFile& d = files.emplace_back(prefix + ".deleted", File::create(join(staging, prefix + ".deleted")));
          d.unit_in = d.unit_out = sizeof(int64_t);
          d.add(t.deleted->data(), t.deleted->size());
          d.bytes = d.rows * d.unit_out;
        }
      }
      write_files(files);
      size_t at = 0;
      for (size_t i = g; i < std::min(tables.size(), g + kGroup); ++i) {
        const ExportTableSource& t = tables[i];
        Json jfiles = Json::object();
        jfiles["keys"] = file_json(files[at++]);
        const uint64_t rows = files[at - 1].rows;
        jfiles["rows"] = file_json(files[at++]);
        const uint64_t deleted = t.deleted ? t.deleted->size() : 0;
        if (deleted) jfiles["deleted"] = file_json(files[at++]);
        Json jt = Json::object();
        jt["name"] = t.config->name;
        jt["config"] = t.config->to_json();
        jt["seed"] = checksum_hex(t.seed);
        jt["rows"] = static_cast<int64_t>(rows);
        jt["deleted"] = static_cast<int64_t>(deleted);
        jt["files"] = std::move(jfiles);
        jtables.push_back(std::move(jt));
      }
    }
    Json m = Json::object();
    m["format"] = kFormat;
    m["format_version"] = kFormatVersion;
    m["kind"] = part.delta ? "delta" : "full";
    m["version"] = part.version;
    if (part.delta) m["since"] = part.since;
    m["part"] = part.part;
    m["num_parts"] = part.num_parts;
    m["dtype"] = export_dtype_name(part.dtype);
    m["block_bytes"] = static_cast<int64_t>(kBlockBytes);
    m["tables"] = std::move(jtables);
    const std::string text = m.dump(1);
    File manifest = File::create(join(staging, kManifest));
    manifest.write_all(text.data(), text.size());
    manifest.sync();
    manifest.close();
    commit_directory(staging, join(export_dir, target_name), /*files_synced=*/true);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
  return join(export_dir, target_name);
}

ExportPart read_export_part(const std::string& part_dir, bool keep_coded) {
  SC_CHECK(is_real_directory(part_dir), NotFound, "no export part at '", part_dir, "'");
  const std::vector<uint8_t> bytes = read_regular_file(join(part_dir, kManifest), kMaxManifestBytes);
  Json m;
  try {
    m = Json::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  } catch (const Error& e) {
    throw CorruptData("export manifest '" + join(part_dir, kManifest) + "' is not valid JSON: " + e.what());
  }
  const std::string where = "'" + join(part_dir, kManifest) + "'";
  SC_CHECK(text_field(m, "format", where) == kFormat, CorruptData, where, " is not a sparsecore export manifest");
  const int64_t format_version = bounded(field(m, "format_version", where), "format_version", 1, INT64_MAX);
  SC_CHECK(format_version >= kOldestFormatVersion && format_version <= kFormatVersion, CorruptData, where,
           ": export format version ", format_version, " is not supported (", kOldestFormatVersion, " to ",
           kFormatVersion, ")");
  const uint64_t block_bytes =
      format_version == 1
          ? 0
          : static_cast<uint64_t>(bounded(field(m, "block_bytes", where), "block_bytes",
                                          static_cast<int64_t>(kMinBlockBytes), static_cast<int64_t>(kMaxBlockBytes)));
  ExportPart part;
  const std::string& kind = text_field(m, "kind", where);
  SC_CHECK(kind == "full" || kind == "delta", CorruptData, where, ": unknown kind '", kind, "'");
  part.delta = kind == "delta";
  part.version = bounded(field(m, "version", where), "version", 0, INT64_MAX);
  if (part.delta) part.since = bounded(field(m, "since", where), "since", 0, part.version);
  part.num_parts = static_cast<int>(bounded(field(m, "num_parts", where), "num_parts", 1, kMaxParts));
  part.part = static_cast<int>(bounded(field(m, "part", where), "part", 0, part.num_parts - 1));
  try {
    part.dtype = export_dtype_from_name(text_field(m, "dtype", where));
  } catch (const InvalidArgument& e) {
    throw CorruptData(where + ": " + e.what());
  }
  const Json& tables = field(m, "tables", where);
  SC_CHECK(tables.is_array() && static_cast<int64_t>(tables.as_array().size()) <= kMaxTables, CorruptData, where,
           ": 'tables' is not an array of at most ", kMaxTables, " tables");
  std::map<std::string, int> seen;
  for (size_t i = 0; i < tables.as_array().size(); ++i) {
    const Json& jt = tables.as_array()[i];
    const std::string tw = where + " table " + std::to_string(i);
    ExportTable t;
    try {
      t.config = TableConfig::from_json(field(jt, "config", tw));
    } catch (const InvalidArgument& e) {
      throw CorruptData(tw + ": " + e.what());
    }
    SC_CHECK(text_field(jt, "name", tw) == t.config.name, CorruptData, tw, ": name and config disagree");
    SC_CHECK(seen.emplace(t.config.name, 0).second, CorruptData, where, " names table '", t.config.name, "' twice");
    t.seed = parse_checksum_hex(text_field(jt, "seed", tw));
    const uint64_t rows = static_cast<uint64_t>(bounded(field(jt, "rows", tw), "rows", 0, kMaxRows));
    const uint64_t deleted = static_cast<uint64_t>(bounded(field(jt, "deleted", tw), "deleted", 0, kMaxRows));
    SC_CHECK(part.delta || deleted == 0, CorruptData, tw, ": a full export deletes no keys");
    const uint64_t dim = static_cast<uint64_t>(t.config.dim);
    const Json& files = field(jt, "files", tw);
    const std::string prefix = "table-" + std::to_string(i);
    std::vector<uint8_t> keys =
        read_checked(part_dir, field(files, "keys", tw), prefix + ".keys", rows * 8, block_bytes);
    const uint64_t row_bytes = export_row_bytes(part.dtype, dim);
    std::vector<uint8_t> coded =
        read_checked(part_dir, field(files, "rows", tw), prefix + ".rows", rows * row_bytes, block_bytes);
    t.keys.resize(rows);
    if (rows) std::memcpy(t.keys.data(), keys.data(), rows * 8);
    if (keep_coded) {
      part.coded.push_back(std::move(coded));
    } else if (part.dtype == ExportDtype::kFloat32) {
      t.weights.resize(rows * dim);
      if (rows) std::memcpy(t.weights.data(), coded.data(), coded.size());
    } else {
      t.weights.resize(rows * dim);
      quant::dequantize_rows(coded.data(), static_cast<int64_t>(rows), static_cast<int64_t>(dim),
                             row_format(part.dtype), t.weights.data());
    }
    if (deleted) {
      std::vector<uint8_t> d =
          read_checked(part_dir, field(files, "deleted", tw), prefix + ".deleted", deleted * 8, block_bytes);
      t.deleted.resize(deleted);
      std::memcpy(t.deleted.data(), d.data(), d.size());
    } else {
      SC_CHECK(!files.get("deleted"), CorruptData, tw, ": a 'deleted' file is listed but no deleted keys");
    }
    part.tables.push_back(std::move(t));
  }
  return part;
}

std::vector<std::string> complete_export_parts(const std::string& export_dir) {
  std::map<int, std::string> parts;
  int expected = -1;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(export_dir, ec)) {
    const std::string name = entry.path().filename().string();
    int p = 0, n = 0;
    if (!parse_part_name(name, p, n)) continue;
    if (!is_real_directory(entry.path().string())) continue;
    SC_CHECK(expected < 0 || expected == n, CorruptData, "export '", export_dir, "' mixes parts of ", expected, " and ",
             n);
    expected = n;
    parts[p] = entry.path().string();
  }
  std::vector<std::string> out;
  if (expected < 0 || static_cast<int>(parts.size()) != expected) return out;
  for (auto& [p, path] : parts) out.push_back(path);
  return out;
}

}  // namespace sparsecore::serving
