#include "sparsecore/io/criteo_format.h"

#include <algorithm>
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/io/feature_hash.h"

namespace sparsecore::io {

namespace {
std::string categorical_name(int k) { return detail::concat('C', k + 1); }
}  // namespace

CriteoFormat::CriteoFormat(bool has_labels) : has_labels_(has_labels) {
  for (int k = 0; k < kNumCategorical; ++k) seeds_[k] = feature_seed(categorical_name(k));
}

SampleBatch CriteoFormat::empty_batch() const {
  SampleBatch b;
  b.has_labels = has_labels_;
  b.dense_dim = kNumDense;
  for (int k = 0; k < kNumCategorical; ++k) {
    FeatureGroupBatch g;
    g.name = categorical_name(k);
    b.groups.push_back(std::move(g));
  }
  return b;
}

namespace {
bool is_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
  return true;
}
}  // namespace

bool CriteoFormat::parse(std::string_view line, SampleBatch& out, std::string& error) const {
  const int expected = kNumDense + kNumCategorical + (has_labels_ ? 1 : 0);
  // The count first: a line of another layout (another delimiter, too few columns) says so
  // instead of naming whichever field happens to fail first.
  const auto fields = static_cast<int64_t>(std::count(line.begin(), line.end(), '\t')) + 1;
  if (fields != expected) {
    error = detail::concat("expected ", expected, " fields, found ", fields, " (tab-separated)");
    return false;
  }
  int field = 0;
  size_t start = 0;
  while (true) {
    size_t tab = line.find('\t', start);
    std::string_view f = line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start);
    int k = has_labels_ ? field - 1 : field;  // index among the features; -1 is the label
    if (k < 0) {
      if (f != "0" && f != "1") {
        error = "label must be 0 or 1";
        return false;
      }
      out.labels.push_back(f[0] == '1' ? 1.0f : 0.0f);
    } else if (k < kNumDense) {
      int64_t v = 0;
      if (!f.empty() && !text::parse_int64(f, v)) {
        error = detail::concat('I', k + 1, " is not an integer");
        return false;
      }
      out.dense.push_back(static_cast<float>(v));
    } else if (!f.empty()) {
      const int c = k - kNumDense;
      if (!is_hex(f)) {
        error = categorical_name(c) + " is not hexadecimal";
        return false;
      }
      out.groups[c].ids.push_back(feature_value_id(seeds_[c], f));
    }
    ++field;
    if (tab == std::string_view::npos) break;
    start = tab + 1;
  }
  out.end_sample();
  return true;
}

}  // namespace sparsecore::io
