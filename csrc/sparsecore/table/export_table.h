// ExportTable: one table's rows as an incremental export carries them (serving/export_format.h),
// in host memory. Defined here, beside the tables, so that every writer of exports (an
// embedded collection, a parameter-server shard) collects rows the same way
// (EmbeddingTable::collect_changed, deleted_keys) without knowing the file format.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore {

struct ExportTable {
  TableConfig config;
  uint64_t seed = 0;
  std::vector<int64_t> keys;     // (rows)
  std::vector<float> weights;    // (rows, config.dim) fp32 (read back: dequantized from the export's dtype)
  std::vector<int64_t> deleted;  // (deleted) ascending, deltas only

  int64_t rows() const { return static_cast<int64_t>(keys.size()); }
};

// One table's changed rows as EmbeddingTable::collect_changed gathers them: one segment per
// hash shard (one in all for a dense table), in shard order; the export's row order is the
// segments' in turn. Collecting again into the same ChangedRows reuses the segments' memory
// (PodVector: growing never zero-fills), so an exporter that keeps it between exports touches
// no fresh page once it has seen an export as large.
struct ChangedRows {
  struct Segment {
    PodVector<int64_t> keys;   // (rows)
    PodVector<float> weights;  // (rows, dim) fp32, host
  };
  std::vector<Segment> segments;

  uint64_t rows() const {
    uint64_t n = 0;
    for (const Segment& s : segments) n += s.keys.size();
    return n;
  }
  // Memory the segments hold (their capacity), for an exporter deciding whether to keep them.
  uint64_t capacity_bytes() const {
    uint64_t n = 0;
    for (const Segment& s : segments) n += s.keys.capacity() * sizeof(int64_t) + s.weights.capacity() * sizeof(float);
    return n;
  }
};

// Raises the table's step to `version` first, so that rows inserted from then on are stamped
// after it and travel in the next delta even if this collection missed them. Returns the keys
// removed after `since` (since >= 0; InvalidArgument when the table no longer retains them;
// since < 0: none). The caller then collects the rows with table.collect_changed.
std::vector<int64_t> begin_export(EmbeddingTable& table, int64_t since, int64_t version);

// One table's rows changed after `since` (since < 0: every row) and the keys removed after it
// (begin_export), as one ExportTable. Like the table's collect_changed, run it while no update
// runs.
ExportTable collect_export_table(EmbeddingTable& table, int64_t since, int64_t version);

}  // namespace sparsecore
