// What the reader and the writer of the export format (export_format.h) share: its constants
// and the row quantization of each dtype. Not installed; include only from serving/.
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/serving/export_format.h"

namespace sparsecore::serving::detail {

inline constexpr const char* kFormat = "sparsecore-export";
inline constexpr int64_t kFormatVersion = 2;
// Format version 1 (one checksum per file) is still read.
inline constexpr int64_t kOldestFormatVersion = 1;
// The checksummed unit of a file, and of each positioned write: large enough that a write
// is one efficient system call, small enough that a block stays in the core's cache between
// its encoding, its checksum and its write, and that an 80 MB file splits across many cores.
inline constexpr uint64_t kBlockBytes = 1ull << 20;
inline constexpr const char* kManifest = "manifest.json";
inline constexpr int64_t kMaxParts = 1 << 20;

// The row quantization of a coded dtype (every one but fp32); InvalidArgument for fp32.
quant::RowFormat row_format(ExportDtype dtype);
std::string join_path(const std::string& dir, const std::string& name);

}  // namespace sparsecore::serving::detail
