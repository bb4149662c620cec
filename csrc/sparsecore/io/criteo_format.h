// Criteo's TSV layout: label, 13 integer features I1..I13, 26 categorical features C1..C26
// (8-digit hex strings), tab-separated, any field but the label may be empty.
//
// Output: labels float32[B] (0 or 1), dense float32[B, 13] (the integers as floats, missing
// = 0), and 26 groups "C1".."C26" with one id per present value (a missing value is an empty
// bag). Ids: feature_value_id(feature_seed("C<k>"), the hex text as written), see
// feature_hash.h. Malformed: a field count other than 40 (39 without labels), a label other
// than 0/1, a non-integer I field, a non-hex C field.
#pragma once

#include <array>

#include "sparsecore/io/line_format.h"

namespace sparsecore::io {

class CriteoFormat final : public LineFormat {
 public:
  static constexpr int kNumDense = 13;
  static constexpr int kNumCategorical = 26;

  // has_labels = false reads the unlabelled test-set layout (39 fields).
  explicit CriteoFormat(bool has_labels = true);

  SampleBatch empty_batch() const override;
  bool parse(std::string_view line, SampleBatch& out, std::string& error) const override;

 private:
  bool has_labels_;
  std::array<uint64_t, kNumCategorical> seeds_;
};

}  // namespace sparsecore::io
