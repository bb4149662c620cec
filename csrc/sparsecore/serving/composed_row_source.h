// ComposedRowSource: serves the rows of compressed tables (table/compressed_ids.h) by name, as
// if they were tables of full rows, over a source that holds their component tables (an
// export stream holds only those). A read of a compressed table maps its ids to component
// keys, reads every component row (and a mixed table's exact rows) in the same consistent
// read of the underlying source as the other tables of the request, and composes each id's
// row: the signed sum over its keys per component, then sum, concatenation or element-wise
// product of the components, plus its exact row. Component rows the source does not hold read
// its default row, as in the training collection's evaluation.
//
// Thread-safety: read() may run concurrently (scratch is per call); the specs are immutable.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sparsecore/serving/predictor.h"
#include "sparsecore/table/compressed_ids.h"

namespace sparsecore::serving {

// One compressed table as model.json names it.
struct CompressedTableSpec {
  std::string name;
  CompressionSpec compression;
  uint64_t seed = 0;                    // the mapping's base seed
  int dim = 0;                          // of the composed row
  std::vector<std::string> components;  // component table names, in order
  std::string exact;                    // a mixed table's exact rows ("" when none)

  // {"spec": {...CompressionSpec}, "seed", "dim", "components": [...], "exact"?}; CorruptData
  // naming the table when malformed.
  static CompressedTableSpec from_json(const std::string& name, const Json& j);
};

class ComposedRowSource : public RowSource {
 public:
  ComposedRowSource(std::shared_ptr<const RowSource> base, std::vector<CompressedTableSpec> tables);
  int dim(const std::string& table) const override;
  void read(const RowRead* reads, size_t count) const override;

 private:
  const CompressedTableSpec* find(const std::string& table) const;

  std::shared_ptr<const RowSource> base_;
  std::vector<CompressedTableSpec> tables_;
};

}  // namespace sparsecore::serving
