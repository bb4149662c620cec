// ExportTable: one table's rows as an incremental export carries them (serving/export_format.h),
// in host memory. Defined here, beside the tables, so that every writer of exports (an
// embedded collection, a parameter-server shard) collects rows the same way
// (EmbeddingTable::collect_changed, deleted_keys) without knowing the file format.
#pragma once

#include <cstdint>
#include <vector>

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

// One table's rows changed after `since` (since < 0: every row; the keys removed after it
// only for since >= 0, InvalidArgument when the table no longer retains them). First raises
// the table's step to `version`, so that rows inserted from then on are stamped after it and
// travel in the next delta even if this collection missed them. Like the table's
// collect_changed, run it while no update runs.
ExportTable collect_export_table(EmbeddingTable& table, int64_t since, int64_t version);

}  // namespace sparsecore
