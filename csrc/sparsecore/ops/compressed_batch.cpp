#include "sparsecore/ops/compressed_batch.h"

#include <algorithm>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/fused_update.h"
#include "sparsecore/ops/pooling_kernels.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {
namespace {

constexpr int64_t kRowsPerTask = 1024;

// Rows a component's core group gives per distinct id: keys_per_id for a table pooled
// "none" (each key's signed row kept apart), else 1 (already summed by the engine).
int64_t component_slots(const CompressedGroupPlan& p, int c) {
  if (p.layout->component_pooling[c] != Pooling::kNone) return 1;
  return p.bags.num_unique() ? p.layout->spec.keys_per_id() : 0;
}

int num_components(const CompressedGroupPlan& p) { return static_cast<int>(p.keys.size()); }

}  // namespace

void CompressedLayout::validate() const {
  spec.validate();
  const int count = spec.num_components();
  SC_CHECK_ARG(static_cast<int>(components.size()) == count && static_cast<int>(component_pooling.size()) == count,
               "compressed table '", name, "': ", count, " component tables expected, got ", components.size());
  SC_CHECK_ARG(dim >= 1 && component_dim >= 1, "compressed table '", name, "': dims must be >= 1");
  const int expected = spec.combine == CompressionCombine::kConcat ? dim / count : dim;
  SC_CHECK_ARG(component_dim == expected && (spec.combine != CompressionCombine::kConcat || dim % count == 0),
               "compressed table '", name, "': component dim ", component_dim, " does not compose dim ", dim);
  for (Pooling p : component_pooling)
    SC_CHECK_ARG(p != Pooling::kMean, "compressed table '", name, "': a component table pools by sum or none");
}

int64_t CompressedGroupPlan::core_output_size(int i) const {
  int64_t n = 1;
  for (int64_t s : core_output_shape(i)) n *= s;
  return n;
}

std::vector<int64_t> CompressedGroupPlan::core_output_shape(int i) const {
  if (per_position) {
    const bool none = i < num_components(*this) ? layout->component_pooling[i] == Pooling::kNone
                                                : layout->exact_pooling == Pooling::kNone;
    const int64_t m = i < num_components(*this) ? layout->spec.keys_per_id() : 1;
    const int64_t d = i < num_components(*this) ? layout->component_dim : layout->dim;
    if (none) return {bags.batch_size, bags.max_len * m, d};
    return {bags.batch_size, d};
  }
  const int64_t u = bags.num_unique();
  if (i < num_components(*this)) {
    if (layout->component_pooling[i] == Pooling::kNone) return {u, component_slots(*this, i), layout->component_dim};
    return {u, layout->component_dim};
  }
  if (layout->exact_pooling == Pooling::kNone) return {u, u ? 1 : 0, layout->dim};
  return {u, layout->dim};
}

std::vector<int64_t> CompressedGroupPlan::output_shape() const {
  if (bags.pooling == Pooling::kNone) return {bags.batch_size, bags.max_len, bags.dim};
  return {bags.batch_size, bags.dim};
}

CompressedGroupPlan plan_compressed_group(const CompressedLayout& layout, const GroupInput& in) {
  GroupInput probe = in;
  probe.table = 0;
  validate_group_inputs({probe}, 1, [&](int) -> const std::string& { return layout.name; });
  CompressedGroupPlan p;
  p.layout = &layout;
  PreparedGroup& g = p.bags;
  g.dim = layout.dim;
  g.pooling = layout.pooling;
  g.num_ids = in.num_ids;
  g.batch_size = in.batch_size;
  g.offsets.assign(in.offsets, in.offsets + in.batch_size + 1);
  if (in.weights) g.weights.assign(in.weights, in.weights + in.num_ids);
  g.max_len = 0;
  for (int64_t b = 0; b < in.batch_size; ++b) g.max_len = std::max(g.max_len, in.offsets[b + 1] - in.offsets[b]);
  const CompressionSpec& spec = layout.spec;
  const int64_t m = spec.keys_per_id();
  const bool signed_keys = spec.kind == CompressionKind::kRandomCoding && spec.is_signed;
  // A "none" component of a mul table (a checkpoint of an older layout) keeps per-id rows.
  p.per_position = spec.combine != CompressionCombine::kMul &&
                   (layout.pooling == Pooling::kNone) == (layout.component_pooling[0] == Pooling::kNone);
  if (p.per_position) {
    const int64_t n = in.num_ids;
    p.ids.assign(in.ids, in.ids + n);
    p.keys.resize(spec.num_components());
    if (signed_keys) p.signs.resize(n * m);
    for (int c = 0; c < spec.num_components(); ++c) {
      p.keys[c].resize(n * m);
      compressed_component_keys(spec, c, layout.base_seed, in.ids, n, p.keys[c].data(),
                                signed_keys ? p.signs.data() : nullptr);
    }
    // Each key's weight: the position's weight (over the bag's weight sum for mean) times its sign.
    if (in.weights || layout.pooling == Pooling::kMean) {
      std::vector<float> bag_scale(in.batch_size);
      bag_gradient_scales(layout.pooling, in.offsets, in.batch_size, in.weights, bag_scale.data());
      if (!signed_keys) p.signs.assign(n * m, 1.0f);
      for (int64_t b = 0; b < in.batch_size; ++b)
        for (int64_t i = in.offsets[b]; i < in.offsets[b + 1]; ++i) {
          const float w = (in.weights ? in.weights[i] : 1.0f) * bag_scale[b];
          for (int64_t j = 0; j < m; ++j) p.signs[i * m + j] *= w;
        }
    }
    p.key_offsets.resize(in.batch_size + 1);
    for (int64_t b = 0; b <= in.batch_size; ++b) p.key_offsets[b] = in.offsets[b] * m;
    return p;
  }
  g.unique_keys.resize(in.num_ids);
  g.inverse.resize(in.num_ids);
  ShardedDedup dedup;
  const int64_t u = dedup.run(in.ids, in.num_ids, 1, g.unique_keys.data(), g.inverse.data());
  g.unique_keys.resize(u);
  g.shard_starts = {0, u};
  if (signed_keys) p.signs.resize(u * m);
  p.keys.resize(spec.num_components());
  for (int c = 0; c < spec.num_components(); ++c) {
    p.keys[c].resize(u * m);
    compressed_component_keys(spec, c, layout.base_seed, g.unique_keys.data(), u, p.keys[c].data(),
                              signed_keys ? p.signs.data() : nullptr);
  }
  p.key_offsets.resize(u + 1);
  p.unit_offsets.resize(u + 1);
  for (int64_t i = 0; i <= u; ++i) {
    p.key_offsets[i] = i * m;
    p.unit_offsets[i] = i;
  }
  return p;
}

void append_core_inputs(const CompressedGroupPlan& p, std::vector<GroupInput>& out) {
  const int64_t u = p.per_position ? p.bags.batch_size : p.bags.num_unique();
  for (int c = 0; c < num_components(p); ++c) {
    GroupInput in;
    in.table = p.layout->components[c];
    in.ids = p.keys[c].data();
    in.num_ids = static_cast<int64_t>(p.keys[c].size());
    in.offsets = p.key_offsets.data();
    in.batch_size = u;
    in.weights = p.signs.empty() ? nullptr : p.signs.data();
    out.push_back(in);
  }
  if (p.layout->exact >= 0 && p.per_position) {
    GroupInput in;
    in.table = p.layout->exact;
    in.ids = p.ids.data();
    in.num_ids = p.bags.num_ids;
    in.offsets = p.bags.offsets.data();
    in.batch_size = p.bags.batch_size;
    in.weights = p.bags.weights.empty() ? nullptr : p.bags.weights.data();
    out.push_back(in);
  } else if (p.layout->exact >= 0) {
    GroupInput in;
    in.table = p.layout->exact;
    in.ids = p.bags.unique_keys.data();
    in.num_ids = u;
    in.offsets = p.unit_offsets.data();
    in.batch_size = u;
    out.push_back(in);
  }
}

namespace {

// The shape compose_positions and split_positions share: output width, component width and
// count, whether components are concatenated, keys per id of a "none" position, output rows.
struct PositionShape {
  explicit PositionShape(const CompressedGroupPlan& p)
      : dim(p.layout->dim),
        dc(p.layout->component_dim),
        count(num_components(p)),
        concat(p.layout->spec.combine == CompressionCombine::kConcat),
        m(p.layout->pooling == Pooling::kNone ? p.layout->spec.keys_per_id() : 1),
        rows(p.layout->pooling == Pooling::kNone ? p.bags.batch_size * p.bags.max_len : p.bags.batch_size) {}
  int dim, dc, count;
  bool concat;
  int64_t m, rows;
};

// compose and split of a per-position plan: output row r (a bag, or a bag's place for "none")
// is the sum or concatenation of each component's row r (for "none", of its keys_per_id
// rows r * m .. r * m + m - 1), plus the exact group's row r.
void compose_positions(const CompressedGroupPlan& p, const std::vector<const float*>& core_outputs, float* out) {
  const PositionShape sh(p);
  const CompressedLayout& layout = *p.layout;
  const int dim = sh.dim, dc = sh.dc, count = sh.count;
  const bool concat = sh.concat;
  const int64_t m = sh.m, rows = sh.rows;
  parallel_for(rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* dst = out + r * dim;
      for (int c = 0; c < count; ++c) {
        const float* src = core_outputs[c] + r * m * dc;
        float* at = concat ? dst + c * dc : dst;
        for (int64_t j = 0; j < m; ++j) {
          if (j == 0 && (concat || c == 0))
            std::copy(src, src + dc, at);
          else
            for (int d = 0; d < dc; ++d) at[d] += src[j * dc + d];
        }
      }
      if (layout.exact >= 0) {
        const float* exact = core_outputs[count] + r * dim;
        for (int d = 0; d < dim; ++d) dst[d] += exact[d];
      }
    }
  });
}

void split_positions(const CompressedGroupPlan& p, const float* grad, const std::vector<float*>& core_grads) {
  const PositionShape sh(p);
  const CompressedLayout& layout = *p.layout;
  const int dim = sh.dim, dc = sh.dc, count = sh.count;
  const bool concat = sh.concat;
  const int64_t m = sh.m, rows = sh.rows;
  parallel_for(rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* src = grad + r * dim;
      for (int c = 0; c < count; ++c) {
        const float* part = concat ? src + c * dc : src;
        for (int64_t j = 0; j < m; ++j) std::copy(part, part + dc, core_grads[c] + (r * m + j) * dc);
      }
      if (layout.exact >= 0) std::copy(src, src + dim, core_grads[count] + r * dim);
    }
  });
}

}  // namespace

void compose_compressed_group(CompressedGroupPlan& p, const std::vector<const float*>& core_outputs, float* out) {
  const CompressedLayout& layout = *p.layout;
  PreparedGroup& g = p.bags;
  SC_CHECK_ARG(static_cast<int>(core_outputs.size()) == p.num_core_groups(), "compressed table '", layout.name,
               "': ", p.num_core_groups(), " core outputs expected, got ", core_outputs.size());
  if (p.per_position) {
    compose_positions(p, core_outputs, out);
    p.is_composed = true;
    return;
  }
  const int64_t u_count = g.num_unique();
  const int dim = layout.dim, dc = layout.component_dim, count = num_components(p);
  const CompressionCombine combine = layout.spec.combine;
  p.composed.resize(u_count * dim);
  if (combine == CompressionCombine::kMul) {
    p.rows.resize(count);
    for (auto& r : p.rows) r.resize(u_count * dc);
  }
  parallel_for(u_count, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<float> summed(dc);
    for (int64_t u = begin; u < end; ++u) {
      float* dst = p.composed.data() + u * dim;
      for (int c = 0; c < count; ++c) {
        const int64_t slots = component_slots(p, c);
        const float* src = core_outputs[c] + u * std::max<int64_t>(slots, 1) * dc;
        if (slots > 1) {  // a "none" component keeps the keys' rows apart: add them in key order
          std::copy(src, src + dc, summed.begin());
          for (int64_t j = 1; j < slots; ++j)
            for (int d = 0; d < dc; ++d) summed[d] += src[j * dc + d];
          src = summed.data();
        }
        if (combine == CompressionCombine::kConcat) {
          std::copy(src, src + dc, dst + c * dc);
        } else if (c == 0) {
          std::copy(src, src + dc, dst);
        } else if (combine == CompressionCombine::kSum) {
          for (int d = 0; d < dc; ++d) dst[d] += src[d];
        } else {
          for (int d = 0; d < dc; ++d) dst[d] *= src[d];
        }
        if (combine == CompressionCombine::kMul) std::copy(src, src + dc, p.rows[c].data() + u * dc);
      }
      if (layout.exact >= 0) {
        const float* exact = core_outputs[count] + u * dim;
        for (int d = 0; d < dim; ++d) dst[d] += exact[d];
      }
    }
  });
  g.unique_rows.resize(u_count);
  for (int64_t u = 0; u < u_count; ++u) g.unique_rows[u] = reinterpret_cast<std::byte*>(p.composed.data() + u * dim);
  p.is_composed = true;
  const std::byte* const* rows = g.unique_rows.data();
  parallel_for(g.batch_size, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<float> tmp(dim);
    const int64_t row = g.pooling == Pooling::kNone ? g.max_len * dim : dim;
    kernels::pool_bags(g, RowStorage::kFloat32, rows, begin, end, out + begin * row, dim, tmp.data());
  });
}

bool compressed_gradient_is_finite(const CompressedGroupPlan& p, const float* grad) {
  return kernels::all_finite(grad, p.bags.output_size());
}

void split_compressed_gradient(const CompressedGroupPlan& p, const float* grad, const std::vector<float*>& core_grads) {
  const CompressedLayout& layout = *p.layout;
  const PreparedGroup& g = p.bags;
  SC_CHECK_ARG(static_cast<int>(core_grads.size()) == p.num_core_groups(), "compressed table '", layout.name,
               "': ", p.num_core_groups(), " core gradients expected, got ", core_grads.size());
  SC_CHECK_ARG(compressed_gradient_is_finite(p, grad), "gradient of group '", layout.name,
               "' contains NaN or Inf; no row was updated");
  SC_CHECK_ARG(!p.needs_rows(), "compressed table '", layout.name,
               "': the batch must be composed (forward) before its gradient is split");
  if (p.per_position) {
    split_positions(p, grad, core_grads);
    return;
  }
  const int64_t u_count = g.num_unique();
  if (static_cast<int64_t>(g.occurrence_offsets.size()) != u_count + 1) build_occurrences(g);
  std::vector<float> bag_scale(g.batch_size);
  bag_gradient_scales(g.pooling, g.offsets.data(), g.batch_size, g.weights.empty() ? nullptr : g.weights.data(),
                      bag_scale.data());
  const int dim = layout.dim, dc = layout.component_dim, count = num_components(p);
  const CompressionCombine combine = layout.spec.combine;
  PodVector<float> per_id(u_count * dim);
  parallel_for(u_count, kRowsPerTask, [&](int64_t begin, int64_t end) {
    kernels::sum_unique_gradients(g, grad, bag_scale.data(), begin, end, per_id.data());
    std::vector<float> part(dc);
    for (int64_t u = begin; u < end; ++u) {
      const float* d_row = per_id.data() + u * dim;
      for (int c = 0; c < count; ++c) {
        const float* src = combine == CompressionCombine::kConcat ? d_row + c * dc : d_row;
        if (combine == CompressionCombine::kMul) {
          std::copy(d_row, d_row + dc, part.begin());
          for (int o = 0; o < count; ++o) {
            if (o == c) continue;
            const float* other = p.rows[o].data() + u * dc;
            for (int d = 0; d < dc; ++d) part[d] *= other[d];
          }
          src = part.data();
        }
        const int64_t slots = std::max<int64_t>(component_slots(p, c), 1);
        float* dst = core_grads[c] + u * slots * dc;
        for (int64_t j = 0; j < slots; ++j) std::copy(src, src + dc, dst + j * dc);
      }
      if (layout.exact >= 0) std::copy(d_row, d_row + dim, core_grads[count] + u * dim);
    }
  });
}

}  // namespace sparsecore
