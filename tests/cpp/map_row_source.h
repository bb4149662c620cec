// A RowSource over tables held in maps, for the serving tests; unknown ids read zeros.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

class MapSource : public RowSource {
 public:
  std::vector<std::string> names{"ta", "tb"};
  std::vector<int> dims{3, 2};
  std::vector<std::map<int64_t, std::vector<float>>> rows{{}, {}};

  int index(const std::string& table) const {
    for (size_t t = 0; t < names.size(); ++t)
      if (names[t] == table) return static_cast<int>(t);
    throw NotFound("table '" + table + "'");
  }
  int dim(const std::string& table) const override { return dims[index(table)]; }
  void read(const RowRead* reads, size_t count) const override {
    for (size_t r = 0; r < count; ++r) {
      const RowRead& rr = reads[r];
      const int t = index(*rr.table), d = dims[t];
      for (int64_t i = 0; i < rr.n; ++i) {
        const auto it = rows[t].find(rr.ids[i]);
        for (int c = 0; c < d; ++c) rr.out[i * d + c] = it == rows[t].end() ? 0.0f : it->second[c];
      }
    }
  }
};

}  // namespace sparsecore::serving
