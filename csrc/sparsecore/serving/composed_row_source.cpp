#include "sparsecore/serving/composed_row_source.h"

#include <algorithm>

#include "sparsecore/core/error.h"

namespace sparsecore::serving {

CompressedTableSpec CompressedTableSpec::from_json(const std::string& name, const Json& j) {
  CompressedTableSpec t;
  t.name = name;
  try {
    t.compression = CompressionSpec::from_json(j.at("spec"));
    t.seed = static_cast<uint64_t>(j.at("seed").as_int("seed"));
    t.dim = static_cast<int>(j.at("dim").as_int("dim"));
    for (const Json& c : j.at("components").as_array("components")) t.components.push_back(c.as_string("component"));
    if (const Json* e = j.get("exact")) t.exact = e->as_string("exact");
  } catch (const Error& e) {
    throw CorruptData("model.json: compressed table '" + name + "': " + e.what());
  }
  if (static_cast<int>(t.components.size()) != t.compression.num_components() || t.dim < 1)
    throw CorruptData("model.json: compressed table '" + name + "' names " + std::to_string(t.components.size()) +
                      " component tables for " + std::to_string(t.compression.num_components()));
  return t;
}

ComposedRowSource::ComposedRowSource(std::shared_ptr<const RowSource> base, std::vector<CompressedTableSpec> tables)
    : base_(std::move(base)), tables_(std::move(tables)) {
  SC_CHECK_ARG(base_ != nullptr, "ComposedRowSource: no row source");
}

const CompressedTableSpec* ComposedRowSource::find(const std::string& table) const {
  for (const auto& t : tables_)
    if (t.name == table) return &t;
  return nullptr;
}

int ComposedRowSource::dim(const std::string& table) const {
  const CompressedTableSpec* t = find(table);
  if (!t) return base_->dim(table);
  const bool concat = t->compression.combine == CompressionCombine::kConcat;
  const int parts = t->compression.num_components();
  for (const auto& c : t->components) {
    const int d = base_->dim(c);
    if (d != (concat ? t->dim / parts : t->dim) || (concat && t->dim % parts != 0))
      throw InvalidArgument("compressed table '" + t->name + "': component '" + c + "' has dim " + std::to_string(d) +
                            ", which does not compose dim " + std::to_string(t->dim));
  }
  if (!t->exact.empty() && base_->dim(t->exact) != t->dim)
    throw InvalidArgument("compressed table '" + t->name + "': its exact rows have another dim");
  return t->dim;
}

void ComposedRowSource::read(const RowRead* reads, size_t count) const {
  // Per compressed read: the keys, signs and rows of each component, then the exact rows.
  struct Part {
    std::vector<int64_t> keys;
    std::vector<float> signs, rows;
    int dim = 0;
  };
  std::vector<std::vector<Part>> parts(count);
  std::vector<RowRead> base_reads;
  for (size_t r = 0; r < count; ++r) {
    const CompressedTableSpec* t = find(*reads[r].table);
    if (!t) {
      base_reads.push_back(reads[r]);
      continue;
    }
    const CompressionSpec& spec = t->compression;
    const int m = spec.keys_per_id();
    const int64_t n = reads[r].n;
    const int components = spec.num_components();
    parts[r].resize(components + (t->exact.empty() ? 0 : 1));
    for (int c = 0; c < components; ++c) {
      Part& p = parts[r][c];
      p.dim = spec.combine == CompressionCombine::kConcat ? t->dim / components : t->dim;
      p.keys.resize(static_cast<size_t>(n * m));
      p.signs.assign(static_cast<size_t>(n * m), 1.0f);
      compressed_component_keys(spec, c, t->seed, reads[r].ids, n, p.keys.data(), p.signs.data());
      p.rows.resize(static_cast<size_t>(n * m * p.dim));
      base_reads.push_back({&t->components[c], p.keys.data(), n * m, p.rows.data()});
    }
    if (!t->exact.empty()) {
      Part& p = parts[r].back();
      p.dim = t->dim;
      p.rows.resize(static_cast<size_t>(n * t->dim));
      base_reads.push_back({&t->exact, reads[r].ids, n, p.rows.data()});
    }
  }
  base_->read(base_reads.data(), base_reads.size());
  std::vector<float> part_row, row;
  for (size_t r = 0; r < count; ++r) {
    if (parts[r].empty()) continue;
    const CompressedTableSpec& t = *find(*reads[r].table);
    const CompressionSpec& spec = t.compression;
    const int m = spec.keys_per_id(), components = spec.num_components();
    for (int64_t i = 0; i < reads[r].n; ++i) {
      float* out = reads[r].out + i * t.dim;
      row.assign(t.dim, spec.combine == CompressionCombine::kMul ? 1.0f : 0.0f);
      for (int c = 0; c < components; ++c) {
        const Part& p = parts[r][c];
        part_row.assign(p.dim, 0.0f);
        for (int j = 0; j < m; ++j) {
          const float s = p.signs[i * m + j];
          const float* src = p.rows.data() + (i * m + j) * p.dim;
          for (int d = 0; d < p.dim; ++d) part_row[d] += s * src[d];
        }
        if (spec.combine == CompressionCombine::kConcat)
          std::copy(part_row.begin(), part_row.end(), row.begin() + c * p.dim);
        else if (spec.combine == CompressionCombine::kMul)
          for (int d = 0; d < p.dim; ++d) row[d] *= part_row[d];
        else
          for (int d = 0; d < p.dim; ++d) row[d] += part_row[d];
      }
      if (!t.exact.empty()) {
        const float* ex = parts[r].back().rows.data() + i * t.dim;
        for (int d = 0; d < t.dim; ++d) row[d] += ex[d];
      }
      std::copy(row.begin(), row.end(), out);
    }
  }
}

}  // namespace sparsecore::serving
