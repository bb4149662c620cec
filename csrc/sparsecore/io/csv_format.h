// Delimited text with a declared schema: every column is a label, a dense float, a
// categorical value, a list of categorical values, or ignored.
//
// Output: labels float32[B] when the schema has a label column; dense float32[B, k] (k dense
// columns in schema order, an empty field reads as 0); one group per distinct `group` name of
// the categorical columns, in order of first appearance (a group fed by several columns gets
// their values in column order). Ids: feature_value_id(feature_seed(column name), value text)
// (feature_hash.h); an empty field, or an empty item of a list, adds no id. Fields may be
// double-quoted ("" inside quotes is one quote); a quoted field cannot span lines.
// Malformed: a field count other than the schema's, an empty or non-numeric label or dense
// value, a broken quote.
#pragma once

#include <vector>

#include "sparsecore/io/line_format.h"

namespace sparsecore::io {

enum class CsvColumnType { kLabel, kDense, kCategorical, kMultiCategorical, kIgnore };

// "label", "dense", "categorical", "multi_categorical", "ignore"; throws InvalidArgument
// naming `column` for anything else.
CsvColumnType parse_csv_column_type(const std::string& type, const std::string& column);

struct CsvColumn {
  std::string name;
  CsvColumnType type = CsvColumnType::kIgnore;
  std::string group;  // categorical columns: the group they feed; empty = the column name
};

struct CsvSchema {
  std::vector<CsvColumn> columns;
  char delimiter = ',';
  char multi_separator = '|';  // between the values of a multi_categorical field
  bool header = false;         // the first line of every file names the columns; skipped
};

class CsvFormat final : public LineFormat {
 public:
  // Throws InvalidArgument for a bad schema: no columns, an empty or repeated name, more than
  // one label, a delimiter that is a quote or line break or equals multi_separator.
  explicit CsvFormat(CsvSchema schema);

  SampleBatch empty_batch() const override;
  bool parse(std::string_view line, SampleBatch& out, std::string& error) const override;
  bool has_header() const override { return schema_.header; }

 private:
  CsvSchema schema_;
  bool has_labels_ = false;
  int64_t dense_dim_ = 0;
  std::vector<std::string> group_names_;
  std::vector<int> column_group_;      // per column: its group index, or -1
  std::vector<uint64_t> column_seed_;  // per column: feature_seed(name)
};

}  // namespace sparsecore::io
