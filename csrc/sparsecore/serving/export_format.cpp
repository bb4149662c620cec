#include "sparsecore/serving/export_format.h"

#include <algorithm>
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
#include "sparsecore/quant/row_quantization.h"

namespace sparsecore::serving {
namespace {

static_assert(std::endian::native == std::endian::little, "export files are little-endian");

constexpr const char* kFormat = "sparsecore-export";
constexpr int64_t kFormatVersion = 1;
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

// Files of a part being written: each is written at once and synced together at the end,
// so the disk takes the data of every file while the next is encoded (the part is not
// visible before its directory is switched in, so the order of the syncs does not matter).
struct PartFiles {
  static constexpr size_t kMaxOpen = 64;
  std::string dir;
  std::vector<File> open;

  FileRecord write(const std::string& name, const void* data, uint64_t bytes) {
    if (open.size() >= kMaxOpen) sync_all();  // bounded descriptors, whatever the table count
    File f = File::create(join(dir, name));
    f.write_all(data, bytes);
    open.push_back(std::move(f));
    return {name, bytes, checksum64(data, bytes)};
  }
  void sync_all() {
    for (File& f : open) {
      f.sync();
      f.close();
    }
    open.clear();
  }
};

Json file_json(const FileRecord& r) {
  Json j = Json::object();
  j["name"] = r.name;
  j["bytes"] = static_cast<int64_t>(r.bytes);
  j["checksum"] = checksum_hex(r.checksum);
  return j;
}

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
// the table's counts imply) and against the file itself, then its checksum.
std::vector<uint8_t> read_checked(const std::string& dir, const Json& entry, const std::string& expect_name,
                                  uint64_t expected) {
  const std::string& name = text_field(entry, "name", expect_name);
  SC_CHECK(name == expect_name, CorruptData, "export manifest names file '", name, "' where '", expect_name,
           "' belongs");
  const uint64_t bytes = static_cast<uint64_t>(bounded(field(entry, "bytes", name), name + " bytes", 0, INT64_MAX));
  SC_CHECK(bytes == expected, CorruptData, "export file '", name, "': the manifest says ", bytes,
           " bytes, its counts imply ", expected);
  const uint64_t checksum = parse_checksum_hex(text_field(entry, "checksum", name));
  File f = File::open_regular(join(dir, name));
  const uint64_t actual = f.size();
  SC_CHECK(actual == bytes, CorruptData, "export file '", join(dir, name), "' has ", actual, " bytes, expected ", bytes,
           " (truncated or altered)");
  std::vector<uint8_t> data(bytes);
  if (bytes) f.read_exact(data.data(), bytes);
  SC_CHECK(checksum64(data.data(), data.size()) == checksum, CorruptData, "export file '", join(dir, name),
           "' fails its checksum (altered or damaged)");
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

std::string write_export_part(const ExportPart& part, const std::string& stream_dir) {
  SC_CHECK_ARG(part.version >= 0, "export version must be >= 0, got ", part.version);
  SC_CHECK_ARG(!part.delta || (part.since >= 0 && part.since <= part.version), "a delta since version ", part.since,
               " cannot lead to version ", part.version);
  SC_CHECK_ARG(part.num_parts >= 1 && part.num_parts <= kMaxParts && part.part >= 0 && part.part < part.num_parts,
               "export part ", part.part, " of ", part.num_parts, " is out of range");
  const std::string export_dir = join(stream_dir, export_name({part.delta, part.since, part.version}));
  make_directories(export_dir);
  sync_directory(stream_dir);
  const std::string target_name = part_name(part.part, part.num_parts);
  const std::string staging = join(export_dir, "." + target_name + "." + random_suffix());
  make_directory(staging);
  try {
    PartFiles files_out{staging, {}};
    Json tables = Json::array();
    for (size_t i = 0; i < part.tables.size(); ++i) {
      const ExportTable& t = part.tables[i];
      const uint64_t dim = static_cast<uint64_t>(t.config.dim);
      const uint64_t rows = t.keys.size();
      SC_CHECK_ARG(t.weights.size() == rows * dim, "export of table '", t.config.name, "': ", rows, " keys but ",
                   t.weights.size(), " weights (dim ", dim, ")");
      const std::string prefix = "table-" + std::to_string(i);
      Json files = Json::object();
      files["keys"] = file_json(files_out.write(prefix + ".keys", t.keys.data(), rows * sizeof(int64_t)));
      const uint64_t row_bytes = export_row_bytes(part.dtype, dim);
      if (part.dtype == ExportDtype::kFloat32) {
        files["rows"] = file_json(files_out.write(prefix + ".rows", t.weights.data(), rows * row_bytes));
      } else {
        std::vector<uint8_t> coded(rows * row_bytes);
        quant::quantize_rows(t.weights.data(), static_cast<int64_t>(rows), static_cast<int64_t>(dim),
                             row_format(part.dtype), coded.data());
        files["rows"] = file_json(files_out.write(prefix + ".rows", coded.data(), coded.size()));
      }
      if (!t.deleted.empty())
        files["deleted"] =
            file_json(files_out.write(prefix + ".deleted", t.deleted.data(), t.deleted.size() * sizeof(int64_t)));
      Json jt = Json::object();
      jt["name"] = t.config.name;
      jt["config"] = t.config.to_json();
      jt["seed"] = checksum_hex(t.seed);
      jt["rows"] = static_cast<int64_t>(rows);
      jt["deleted"] = static_cast<int64_t>(t.deleted.size());
      jt["files"] = std::move(files);
      tables.push_back(std::move(jt));
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
    m["tables"] = std::move(tables);
    const std::string text = m.dump(1);
    files_out.write(kManifest, text.data(), text.size());
    files_out.sync_all();
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
  SC_CHECK(bounded(field(m, "format_version", where), "format_version", 1, INT64_MAX) == kFormatVersion, CorruptData,
           where, ": export format version ", field(m, "format_version", where).as_int(), " is not supported (",
           kFormatVersion, ")");
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
    std::vector<uint8_t> keys = read_checked(part_dir, field(files, "keys", tw), prefix + ".keys", rows * 8);
    const uint64_t row_bytes = export_row_bytes(part.dtype, dim);
    std::vector<uint8_t> coded = read_checked(part_dir, field(files, "rows", tw), prefix + ".rows", rows * row_bytes);
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
      std::vector<uint8_t> d = read_checked(part_dir, field(files, "deleted", tw), prefix + ".deleted", deleted * 8);
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
