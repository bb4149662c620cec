#include "sparsecore/io/libsvm_format.h"

#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/io/libffm_format.h"

namespace sparsecore::io {

namespace {

SampleBatch weighted_groups_batch(const std::vector<std::string>& names) {
  SampleBatch b;
  for (const auto& n : names) {
    FeatureGroupBatch g;
    g.name = n;
    g.weighted = true;
    b.groups.push_back(std::move(g));
  }
  return b;
}

// Parses "idx:value" (the tail of a libsvm or libffm token) into `group`.
bool parse_id_value(std::string_view s, FeatureGroupBatch& group, std::string& error) {
  size_t colon = s.find(':');
  int64_t id;
  float w;
  if (colon == std::string_view::npos) {
    error = "feature '" + std::string(s) + "' is not index:value";
    return false;
  }
  if (!text::parse_int64(s.substr(0, colon), id)) {
    error = "index '" + std::string(s.substr(0, colon)) + "' is not an integer";
    return false;
  }
  if (!text::parse_float(s.substr(colon + 1), w)) {
    error = "value '" + std::string(s.substr(colon + 1)) + "' is not a finite number";
    return false;
  }
  group.ids.push_back(id);
  group.weights.push_back(w);
  return true;
}

bool parse_leading_label(std::string_view& rest, bool binary, SampleBatch& out, std::string& error) {
  float label;
  if (!text::parse_label(text::next_token(rest), binary, label)) {
    error = "label is not a finite number";
    return false;
  }
  out.labels.push_back(label);
  return true;
}

}  // namespace

LibsvmFormat::LibsvmFormat(std::string group_name, bool binary_labels)
    : group_name_(std::move(group_name)), binary_labels_(binary_labels) {
  SC_CHECK_ARG(!group_name_.empty(), "libsvm: group_name must not be empty");
}

SampleBatch LibsvmFormat::empty_batch() const { return weighted_groups_batch({group_name_}); }

bool LibsvmFormat::parse(std::string_view line, SampleBatch& out, std::string& error) const {
  std::string_view rest = line;
  if (!parse_leading_label(rest, binary_labels_, out, error)) return false;
  for (auto tok = text::next_token(rest); !tok.empty(); tok = text::next_token(rest)) {
    if (tok.substr(0, 4) == "qid:") continue;
    if (!parse_id_value(tok, out.groups[0], error)) return false;
  }
  out.end_sample();
  return true;
}

LibffmFormat::LibffmFormat(std::vector<std::string> field_names, bool binary_labels)
    : field_names_(std::move(field_names)), binary_labels_(binary_labels) {
  SC_CHECK_ARG(!field_names_.empty(), "libffm: field_names must name at least one field");
  std::set<std::string> seen;
  for (const auto& n : field_names_) {
    SC_CHECK_ARG(!n.empty(), "libffm: field_names has an empty name");
    SC_CHECK_ARG(seen.insert(n).second, "libffm: field name '", n, "' repeats in field_names");
  }
}

SampleBatch LibffmFormat::empty_batch() const { return weighted_groups_batch(field_names_); }

bool LibffmFormat::parse(std::string_view line, SampleBatch& out, std::string& error) const {
  std::string_view rest = line;
  if (!parse_leading_label(rest, binary_labels_, out, error)) return false;
  const auto num_fields = static_cast<int64_t>(field_names_.size());
  for (auto tok = text::next_token(rest); !tok.empty(); tok = text::next_token(rest)) {
    size_t colon = tok.find(':');
    int64_t field;
    if (colon == std::string_view::npos || !text::parse_int64(tok.substr(0, colon), field)) {
      error = "feature '" + std::string(tok) + "' is not field:index:value";
      return false;
    }
    if (field < 0 || field >= num_fields) {
      error = "field " + std::to_string(field) + " outside [0, " + std::to_string(num_fields) + ")";
      return false;
    }
    if (!parse_id_value(tok.substr(colon + 1), out.groups[field], error)) return false;
  }
  out.end_sample();
  return true;
}

}  // namespace sparsecore::io
