#include "sparsecore/serving/raw_features.h"

#include "sparsecore/core/error.h"
#include "sparsecore/io/feature_hash.h"

namespace sparsecore::serving {

void raw_to_ids(const FeatureSpec& spec, const std::vector<const RawColumn*>& columns, int64_t batch,
                std::vector<int64_t>& ids, std::vector<int64_t>& offsets) {
  SC_CHECK_ARG(!spec.columns.empty(), "feature '", spec.input, "' takes ids only (the model names no raw columns)");
  SC_CHECK_ARG(columns.size() == spec.columns.size(), "feature '", spec.input, "' needs ", spec.columns.size(),
               " raw columns, got ", columns.size());
  std::vector<uint64_t> seeds;
  for (size_t c = 0; c < columns.size(); ++c) {
    const RawColumn& col = *columns[c];
    const std::string& name = spec.columns[c];
    SC_CHECK_ARG(static_cast<int64_t>(col.offsets.size()) == batch + 1 && col.offsets[0] == 0 &&
                     col.offsets[batch] == static_cast<int64_t>(col.values.size()),
                 "raw column '", name, "' must hold one list of values for each of the ", batch, " samples");
    for (int64_t b = 0; b < batch; ++b)
      SC_CHECK_ARG(col.offsets[b + 1] >= col.offsets[b], "raw column '", name, "': offsets decrease at ", b);
    seeds.push_back(io::feature_seed(name));
  }
  ids.clear();
  offsets.assign(1, 0);
  for (int64_t b = 0; b < batch; ++b) {
    for (size_t c = 0; c < columns.size(); ++c) {
      const RawColumn& col = *columns[c];
      for (int64_t i = col.offsets[b]; i < col.offsets[b + 1]; ++i) {
        const std::string& v = col.values[static_cast<size_t>(i)];
        if (!v.empty()) ids.push_back(io::feature_value_id(seeds[c], v));
      }
    }
    offsets.push_back(static_cast<int64_t>(ids.size()));
  }
}

}  // namespace sparsecore::serving
