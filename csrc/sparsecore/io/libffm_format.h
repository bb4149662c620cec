// libffm: `label field:idx:value field:idx:value ...`, blank-separated.
//
// Output: labels float32[B] and one weighted group per field (field k feeds group k, named by
// `field_names`): ids = the indices as written (not hashed), weights = the values; a field
// absent from a line is an empty bag. Malformed: a field outside [0, num_fields), a
// non-integer index, a non-finite value or label, a token without two ':'.
#pragma once

#include <vector>

#include "sparsecore/io/line_format.h"

namespace sparsecore::io {

class LibffmFormat final : public LineFormat {
 public:
  // field_names.size() is the number of fields; throws InvalidArgument when empty or a name
  // repeats.
  explicit LibffmFormat(std::vector<std::string> field_names, bool binary_labels = true);

  SampleBatch empty_batch() const override;
  bool parse(std::string_view line, SampleBatch& out, std::string& error) const override;

 private:
  std::vector<std::string> field_names_;
  bool binary_labels_;
};

}  // namespace sparsecore::io
