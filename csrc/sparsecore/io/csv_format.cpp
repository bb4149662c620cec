#include "sparsecore/io/csv_format.h"

#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/io/feature_hash.h"

namespace sparsecore::io {

CsvColumnType parse_csv_column_type(const std::string& type, const std::string& column) {
  if (type == "label") return CsvColumnType::kLabel;
  if (type == "dense") return CsvColumnType::kDense;
  if (type == "categorical") return CsvColumnType::kCategorical;
  if (type == "multi_categorical") return CsvColumnType::kMultiCategorical;
  if (type == "ignore") return CsvColumnType::kIgnore;
  throw InvalidArgument(detail::concat("schema: column '", column, "' has unknown type '", type,
                                       "' (label, dense, categorical, multi_categorical, ignore)"));
}

CsvFormat::CsvFormat(CsvSchema schema) : schema_(std::move(schema)) {
  SC_CHECK_ARG(!schema_.columns.empty(), "schema: no columns");
  const char d = schema_.delimiter;
  SC_CHECK_ARG(d != '"' && d != '\n' && d != '\r', "schema: delimiter cannot be a quote or line break");
  SC_CHECK_ARG(d != schema_.multi_separator, "schema: delimiter and multi_separator are both '", d, "'");
  std::set<std::string> names;
  int labels = 0;
  for (const auto& c : schema_.columns) {
    SC_CHECK_ARG(!c.name.empty(), "schema: a column has an empty name");
    SC_CHECK_ARG(names.insert(c.name).second, "schema: column '", c.name, "' appears twice");
    int group = -1;
    if (c.type == CsvColumnType::kLabel) ++labels;
    if (c.type == CsvColumnType::kDense) ++dense_dim_;
    if (c.type == CsvColumnType::kCategorical || c.type == CsvColumnType::kMultiCategorical) {
      const std::string& g = c.group.empty() ? c.name : c.group;
      for (size_t i = 0; i < group_names_.size(); ++i)
        if (group_names_[i] == g) group = static_cast<int>(i);
      if (group < 0) {
        group = static_cast<int>(group_names_.size());
        group_names_.push_back(g);
      }
    }
    column_group_.push_back(group);
    column_seed_.push_back(feature_seed(c.name));
  }
  SC_CHECK_ARG(labels <= 1, "schema: ", labels, " label columns, at most one allowed");
  has_labels_ = labels == 1;
}

SampleBatch CsvFormat::empty_batch() const {
  SampleBatch b;
  b.has_labels = has_labels_;
  b.dense_dim = dense_dim_;
  for (const auto& n : group_names_) {
    FeatureGroupBatch g;
    g.name = n;
    b.groups.push_back(std::move(g));
  }
  return b;
}

namespace {

// Splits one line into fields. Quoted fields are returned without their quotes; those with
// an escaped quote are unescaped into `storage` (stable addresses: reserved up front).
bool split_fields(std::string_view line, char delim, std::vector<std::string_view>& fields,
                  std::vector<std::string>& storage, std::string& error) {
  fields.clear();
  storage.clear();
  storage.reserve(line.size() / 2 + 1);
  size_t i = 0;
  while (true) {
    if (i < line.size() && line[i] == '"') {
      size_t j = i + 1;
      bool escaped = false;
      while (true) {
        size_t q = line.find('"', j);
        if (q == std::string_view::npos) {
          error = "unterminated quote";
          return false;
        }
        if (q + 1 < line.size() && line[q + 1] == '"') {
          escaped = true;
          j = q + 2;
          continue;
        }
        j = q;
        break;
      }
      std::string_view inner = line.substr(i + 1, j - i - 1);
      if (escaped) {
        std::string s;
        for (size_t k = 0; k < inner.size(); ++k) {
          s.push_back(inner[k]);
          if (inner[k] == '"') ++k;
        }
        storage.push_back(std::move(s));
        inner = storage.back();
      }
      fields.push_back(inner);
      i = j + 1;
      if (i == line.size()) return true;
      if (line[i] != delim) {
        error = "text after a closing quote";
        return false;
      }
      ++i;
    } else {
      size_t e = line.find(delim, i);
      fields.push_back(line.substr(i, e == std::string_view::npos ? std::string_view::npos : e - i));
      if (e == std::string_view::npos) return true;
      i = e + 1;
    }
  }
}

}  // namespace

bool CsvFormat::parse(std::string_view line, SampleBatch& out, std::string& error) const {
  thread_local std::vector<std::string_view> fields;
  thread_local std::vector<std::string> storage;
  if (!split_fields(line, schema_.delimiter, fields, storage, error)) return false;
  if (fields.size() != schema_.columns.size()) {
    const char d = schema_.delimiter;
    error = detail::concat("expected ", schema_.columns.size(), " fields, found ", fields.size(), " (delimiter ",
                           d == '\t' ? std::string("tab") : detail::concat("'", d, "'"), ")");
    return false;
  }
  for (size_t c = 0; c < fields.size(); ++c) {
    const auto& col = schema_.columns[c];
    std::string_view f = fields[c];
    switch (col.type) {
      case CsvColumnType::kLabel: {
        float v;
        if (!text::parse_float(text::trim(f), v)) {
          error = "label '" + col.name + "' is not a finite number";
          return false;
        }
        out.labels.push_back(v);
        break;
      }
      case CsvColumnType::kDense: {
        float v = 0.0f;
        f = text::trim(f);
        if (!f.empty() && !text::parse_float(f, v)) {
          error = "dense column '" + col.name + "' is not a finite number";
          return false;
        }
        out.dense.push_back(v);
        break;
      }
      case CsvColumnType::kCategorical:
        if (!f.empty()) out.groups[column_group_[c]].ids.push_back(feature_value_id(column_seed_[c], f));
        break;
      case CsvColumnType::kMultiCategorical: {
        auto& ids = out.groups[column_group_[c]].ids;
        size_t s = 0;
        while (s <= f.size()) {
          size_t e = f.find(schema_.multi_separator, s);
          if (e == std::string_view::npos) e = f.size();
          if (e > s) ids.push_back(feature_value_id(column_seed_[c], f.substr(s, e - s)));
          s = e + 1;
        }
        break;
      }
      case CsvColumnType::kIgnore:
        break;
    }
  }
  out.end_sample();
  return true;
}

}  // namespace sparsecore::io
