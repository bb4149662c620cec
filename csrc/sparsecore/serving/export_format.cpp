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
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/serving/export_format_internal.h"

namespace sparsecore::serving {
namespace {

static_assert(std::endian::native == std::endian::little, "export files are little-endian");

using detail::kFormat;
using detail::kFormatVersion;
using detail::kManifest;
using detail::kMaxParts;
using detail::kOldestFormatVersion;
using detail::row_format;
// What a reader accepts (a manifest cannot make it checksum in tiny steps or huge ones).
constexpr uint64_t kMinBlockBytes = 4096, kMaxBlockBytes = 1ull << 30;
constexpr uint64_t kMaxManifestBytes = 64ull << 20;
constexpr int64_t kMaxTables = 1 << 16;
constexpr int64_t kMaxRows = int64_t{1} << 40;

std::string join(const std::string& dir, const std::string& name) { return detail::join_path(dir, name); }

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

namespace detail {

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

std::string join_path(const std::string& dir, const std::string& name) {
  return (std::filesystem::path(dir) / name).string();
}

}  // namespace detail

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
