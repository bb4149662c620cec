// Raw feature values to ids, as the readers make them, for requests that send the values a
// log line or a table row holds instead of ids.
//
// A feature's spec (FeatureSpec::columns) names the raw columns that feed it; a value of
// column c becomes io::feature_value_id(io::feature_seed(c), its text) (io/feature_hash.h: the
// one hashing rule of every reader), integers as their decimal text. A sample's bag holds the
// ids of its values column after column, in value order; an empty value is missing (the
// readers' rule) and adds nothing.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

// One raw column of a batch: per sample, its values' texts (CSR: offsets (batch + 1)).
struct RawColumn {
  std::vector<std::string> values;
  std::vector<int64_t> offsets{0};
};

// The ids (CSR over `batch` samples) of feature `spec` from its columns, given in
// spec.columns order (one RawColumn each, every one of `batch` samples). InvalidArgument
// naming the column when its shape is wrong or the feature has no columns.
void raw_to_ids(const FeatureSpec& spec, const std::vector<const RawColumn*>& columns, int64_t batch,
                std::vector<int64_t>& ids, std::vector<int64_t>& offsets);

}  // namespace sparsecore::serving
