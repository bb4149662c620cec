// The incremental export format: what a training process (embedded collection or parameter
// servers) writes for serving processes to apply, one export after another.
//
// A stream directory holds exports, each a directory named for what it holds:
//   full-<version>                 every row at `version` (20-digit, zero-padded)
//   delta-<since>-<version>        the rows changed after version `since` and the keys removed
//                                  after it, as of `version`
// An export is made of parts, one per writer (1 embedded, one per server shard in a
// cluster), each a directory part-<p>-of-<n>; the export is complete once all n parts are
// there. A part holds manifest.json and, per table i of the manifest:
//   table-<i>.keys     int64[rows]                  the keys of the rows, little-endian
//   table-<i>.rows     rows in the part's dtype:    fp32: float32[rows, dim]
//                                                   fp16: IEEE half[rows, dim]
//                                                   int8: per row uint8 q[dim], float32 scale,
//                                                         float32 bias (quant/row_quantization.h)
//                                                   int4: per row uint8 q[ceil(dim/2)] (two
//                                                         values a byte, low nibble first),
//                                                         float32 scale, float32 bias
//   table-<i>.deleted  int64[deleted] ascending     deltas only (absent when empty)
// manifest.json (written last): format "sparsecore-export", format_version 2, kind
// ("full" | "delta"), version, since (deltas), part, num_parts, dtype, block_bytes, and per
// table its name, config, seed, rows, deleted and every file's bytes and checksums: one
// checksum (core/checksum.h) per block_bytes of the file in order, the last block shorter
// (none for an empty file), so that blocks are checksummed and checked in parallel. Format
// version 1 (still read) held one checksum of each whole file instead ("checksum").
//
// Applying: a full export replaces everything; a delta(since, version) first removes its
// deleted keys, then upserts its rows. A delta applies to any state at a version c with
// since <= c <= version (it carries everything that changed after `since`), and applying it
// twice changes nothing: replay is idempotent.
//
// Every part is written to a fresh hidden sibling directory, fsynced, and renamed into place
// in one step (core/file.h commit_directory), so a crash leaves a part whole or absent. The
// writer encodes, checksums and writes the blocks of every file in parallel on the thread pool
// (each block with one positioned write, its writeback started at once), then syncs the files.
// read_export_part trusts nothing: sizes are checked against the manifest and the files
// before anything is read, files must be regular (no symlinks, FIFOs or devices), checksums
// must match; CorruptData names what was wrong, NotFound a missing part.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/table/export_table.h"

namespace sparsecore::serving {

enum class ExportDtype : uint8_t { kFloat32 = 0, kFloat16 = 1, kInt8 = 2, kInt4 = 3 };

// Tolerances of the stored rows (exports are applied as fp32): fp16 rounds each value to 11
// significant bits; int8 and int4 store per row q * scale + bias with scale = (max - min) /
// 255 (int8) or / 15 (int4), so each value is within scale / 2 of the trained one (plus fp32
// rounding): |x - x'| <= (max - min) / 510 for int8, (max - min) / 30 for int4.

const char* export_dtype_name(ExportDtype dtype);
ExportDtype export_dtype_from_name(const std::string& name);  // "fp32" | "fp16" | "int8" | "int4"
// Bytes of one stored row of `dim` values.
uint64_t export_row_bytes(ExportDtype dtype, uint64_t dim);

// What an export part is, beside its tables.
struct ExportHeader {
  bool delta = false;
  int64_t version = 0;
  int64_t since = 0;  // deltas only
  int part = 0;
  int num_parts = 1;
  ExportDtype dtype = ExportDtype::kFloat32;
};

struct ExportPart : ExportHeader {
  std::vector<ExportTable> tables;
  // Read with keep_coded only: per table, its rows as the file stores them
  // (rows x export_row_bytes(dtype, dim) bytes), and the tables' weights are left empty.
  std::vector<std::vector<uint8_t>> coded;
};

// One table of a part being written, from memory the caller owns and keeps unchanged until
// write_export_part returns: the rows are the spans' in order.
struct ExportRowSpan {
  const int64_t* keys = nullptr;   // (rows)
  const float* weights = nullptr;  // (rows, config.dim) fp32
  uint64_t rows = 0;
};
struct ExportTableSource {
  const TableConfig* config = nullptr;
  uint64_t seed = 0;
  std::vector<ExportRowSpan> spans;
  const std::vector<int64_t>* deleted = nullptr;  // ascending, deltas only (nullptr: none)
};

// The name of an export and its parse; parse_export_name returns false for any other name.
struct ExportName {
  bool delta = false;
  int64_t since = 0;
  int64_t version = 0;
};
std::string export_name(const ExportName& name);
bool parse_export_name(const std::string& text, ExportName& out);
std::string part_name(int part, int num_parts);  // part-<p>-of-<n>
bool parse_part_name(const std::string& text, int& part, int& num_parts);

// Writes `part` as <stream_dir>/<export name>/<part name>, crash-safe (above); creates the
// directories it needs. An existing part of the same name is replaced in one step (the same
// export taken again at the same step). Returns the part's directory.
std::string write_export_part(const ExportPart& part, const std::string& stream_dir);
// The same from tables given as spans (an exporter's collection buffers, no copy).
std::string write_export_part(const ExportHeader& header, const std::vector<ExportTableSource>& tables,
                              const std::string& stream_dir);

// Reads and checks one part directory. keep_coded: the rows stay as stored (ExportPart::coded)
// instead of being dequantized into each table's weights.
ExportPart read_export_part(const std::string& part_dir, bool keep_coded = false);

// The part directories of the export `export_dir` in part order, when all of its parts are
// there; empty while it is incomplete. Hidden entries (writes in progress) are ignored.
std::vector<std::string> complete_export_parts(const std::string& export_dir);

}  // namespace sparsecore::serving
