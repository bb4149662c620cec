// libsvm: `label idx:value idx:value ...`, blank-separated; `qid:N` tokens are ignored.
//
// Output: labels float32[B] and one weighted group (default name "features"): ids = the
// indices as written (already integer ids, not hashed), weights = the values. Malformed: a
// label or value that is not a finite number, an index that is not an int64, a token
// without ':'.
#pragma once

#include "sparsecore/io/line_format.h"

namespace sparsecore::io {

class LibsvmFormat final : public LineFormat {
 public:
  // binary_labels: labels > 0 read as 1, others as 0 (-1/+1 files); false keeps them raw.
  explicit LibsvmFormat(std::string group_name = "features", bool binary_labels = true);

  SampleBatch empty_batch() const override;
  bool parse(std::string_view line, SampleBatch& out, std::string& error) const override;

 private:
  std::string group_name_;
  bool binary_labels_;
};

}  // namespace sparsecore::io
