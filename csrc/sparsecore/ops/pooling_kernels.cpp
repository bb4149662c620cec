#include "sparsecore/ops/pooling_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/optim/update_rules.h"

namespace sparsecore::kernels {
namespace {

__attribute__((always_inline)) inline void axpy(float* __restrict__ y, const float* __restrict__ x, float a,
                                                int dim) {
  for (int d = 0; d < dim; ++d) y[d] += a * x[d];
}

// Rows are not cache-line aligned (any dim, one record with the state): touch every line.
__attribute__((always_inline)) inline void prefetch_bytes(const void* p, size_t bytes, int rw = 0) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  for (const char* line = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t{63});
       line < end; line += 64) {
    if (rw) __builtin_prefetch(line, 1);
    else __builtin_prefetch(line, 0);
  }
}

// Rows of the positions this far ahead are prefetched, across bag boundaries (bags hold about
// ten ids, so a distance counted inside one bag would leave most rows unprefetched).
constexpr int64_t kPoolAhead = 16;

template <int kDim>
__attribute__((always_inline)) inline void pool_range(const PreparedGroup& g, const std::byte* const* rows,
                                                      int64_t b0, int64_t b1, float* __restrict__ out) {
  const int dim = kDim > 0 ? kDim : g.dim;
  const float* weights = g.weights.empty() ? nullptr : g.weights.data();
  const int32_t* inv = g.inverse.data();
  const int64_t* off = g.offsets.data();
  const int64_t last = off[b1];
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  for (int64_t p = off[b0]; p < std::min(last, off[b0] + kPoolAhead); ++p)
    if (const std::byte* r = rows[inv[p]]) prefetch_bytes(r, row_bytes);
  // A fixed width keeps the bag's sum in vector registers.
  float acc_fixed[kDim > 0 ? kDim : 1];
  for (int64_t b = b0; b < b1; ++b) {
    float* acc = kDim > 0 ? acc_fixed : out + b * dim;
    for (int d = 0; d < dim; ++d) acc[d] = 0.0f;
    float weight_sum = 0.0f;
    for (int64_t p = off[b], end = off[b + 1]; p < end; ++p) {
      if (p + kPoolAhead < last) {
        if (const std::byte* ahead = rows[inv[p + kPoolAhead]]) prefetch_bytes(ahead, row_bytes);
      }
      const float w = weights ? weights[p] : 1.0f;
      weight_sum += w;
      if (const std::byte* row = rows[inv[p]]) axpy(acc, reinterpret_cast<const float*>(row), w, dim);
    }
    float scale = 1.0f;
    if (g.pooling == Pooling::kMean) {
      const float denom = weights ? weight_sum : static_cast<float>(off[b + 1] - off[b]);
      scale = denom != 0.0f ? 1.0f / denom : 0.0f;
    }
    float* o = out + b * dim;
    for (int d = 0; d < dim; ++d) o[d] = acc[d] * scale;
  }
}

// Index slots are prefetched this many ids ahead of the row probe, rows this many ahead of
// their accumulation: two dependent misses per id overlap with the work on earlier ids.
constexpr int64_t kSlotAhead = 32;
constexpr int64_t kRowAhead = 16;

template <int kDim>
__attribute__((always_inline)) inline void pool_from_ids(const HashTable& table, int dim_runtime, Pooling pooling,
                                                         const GroupInput& in, int64_t max_len, int64_t b0,
                                                         int64_t b1, float* __restrict__ out,
                                                         uint64_t* __restrict__ hashes,
                                                         const std::byte** __restrict__ rows) {
  const int dim = kDim > 0 ? kDim : dim_runtime;
  const int64_t* off = in.offsets;
  const int64_t p0 = off[b0], n = off[b1] - p0;
  const int64_t* ids = in.ids + p0;
  const float* weights = in.weights ? in.weights + p0 : nullptr;
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  auto hash_ahead = [&](int64_t i) {
    const uint64_t h = key_hash(ids[i]);
    hashes[i] = h;
    table.shard(table.shard_of_hash(h)).prefetch(h);
  };
  auto probe_ahead = [&](int64_t i) {
    const uint64_t h = hashes[i];
    const std::byte* r = table.shard(table.shard_of_hash(h)).find(ids[i], h);
    rows[i] = r;
    if (r) prefetch_bytes(r, row_bytes);
  };
  for (int64_t i = 0; i < std::min(n, kSlotAhead + kRowAhead); ++i) hash_ahead(i);
  for (int64_t i = 0; i < std::min(n, kRowAhead); ++i) probe_ahead(i);
  auto advance = [&](int64_t i) {
    if (i + kRowAhead < n) probe_ahead(i + kRowAhead);
    if (i + kSlotAhead + kRowAhead < n) hash_ahead(i + kSlotAhead + kRowAhead);
  };

  if (pooling == Pooling::kNone) {
    for (int64_t b = b0; b < b1; ++b) {
      float* o = out + b * max_len * dim;
      const int64_t len = off[b + 1] - off[b];
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = off[b] - p0 + j;
        advance(i);
        float* dst = o + j * dim;
        const float* src = reinterpret_cast<const float*>(rows[i]);
        const float w = weights ? weights[i] : 1.0f;
        if (src) {
          for (int d = 0; d < dim; ++d) dst[d] = w * src[d];
        } else {
          std::memset(dst, 0, row_bytes);
        }
      }
      std::memset(o + len * dim, 0, (max_len - len) * row_bytes);
    }
    return;
  }
  // A fixed width keeps the bag's sum in vector registers.
  float acc_fixed[kDim > 0 ? kDim : 1];
  float* acc = kDim > 0 ? acc_fixed : out;
  for (int64_t b = b0; b < b1; ++b) {
    if (kDim == 0) acc = out + b * dim;
    for (int d = 0; d < dim; ++d) acc[d] = 0.0f;
    float weight_sum = 0.0f;
    for (int64_t i = off[b] - p0, e = off[b + 1] - p0; i < e; ++i) {
      advance(i);
      const float w = weights ? weights[i] : 1.0f;
      weight_sum += w;
      if (const float* src = reinterpret_cast<const float*>(rows[i])) axpy(acc, src, w, dim);
    }
    float scale = 1.0f;
    if (pooling == Pooling::kMean) {
      const float denom = weights ? weight_sum : static_cast<float>(off[b + 1] - off[b]);
      scale = denom != 0.0f ? 1.0f / denom : 0.0f;
    }
    float* o = out + b * dim;
    for (int d = 0; d < dim; ++d) o[d] = acc[d] * scale;
  }
}

}  // namespace

SC_DISPATCH
void pool_bags_from_ids(const HashTable& table, int dim, Pooling pooling, const GroupInput& in, int64_t max_len,
                        int64_t bag_begin, int64_t bag_end, float* out, uint64_t* hashes, const std::byte** rows) {
  switch (pooling == Pooling::kNone ? 0 : dim) {
    case 4: pool_from_ids<4>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
    case 8: pool_from_ids<8>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
    case 16: pool_from_ids<16>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
    case 32: pool_from_ids<32>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
    case 64: pool_from_ids<64>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
    default: pool_from_ids<0>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows); break;
  }
}

SC_DISPATCH
void pool_bags(const PreparedGroup& g, const std::byte* const* rows, int64_t bag_begin, int64_t bag_end,
               float* out) {
  const int dim = g.dim;
  if (g.pooling == Pooling::kNone) {
    const int64_t row_bytes = static_cast<int64_t>(dim) * sizeof(float);
    for (int64_t b = bag_begin; b < bag_end; ++b) {
      const int64_t start = g.offsets[b], len = g.offsets[b + 1] - start;
      float* o = out + b * g.max_len * dim;
      for (int64_t j = 0; j < len; ++j) {
        const std::byte* row = rows[g.inverse[start + j]];
        float w = g.weights.empty() ? 1.0f : g.weights[start + j];
        float* dst = o + j * dim;
        if (!row) {
          std::memset(dst, 0, row_bytes);
        } else {
          const float* src = reinterpret_cast<const float*>(row);
          for (int d = 0; d < dim; ++d) dst[d] = w * src[d];
        }
      }
      std::memset(o + len * dim, 0, (g.max_len - len) * row_bytes);
    }
    return;
  }
  // Fixed-size copies of the common widths let the compiler keep a bag's sum in registers.
  switch (dim) {
    case 4: pool_range<4>(g, rows, bag_begin, bag_end, out); break;
    case 8: pool_range<8>(g, rows, bag_begin, bag_end, out); break;
    case 16: pool_range<16>(g, rows, bag_begin, bag_end, out); break;
    case 32: pool_range<32>(g, rows, bag_begin, bag_end, out); break;
    case 64: pool_range<64>(g, rows, bag_begin, bag_end, out); break;
    case 128: pool_range<128>(g, rows, bag_begin, bag_end, out); break;
    default: pool_range<0>(g, rows, bag_begin, bag_end, out); break;
  }
}

// Unique rows this far ahead are prefetched for writing (a whole record: weights, state, meta).
constexpr int64_t kUpdateAhead = 8;

SC_DISPATCH
void backward_update(const PreparedGroup& g, const EmbeddingTable& table, std::byte* const* rows,
                     const float* grad, const float* bag_scale, int64_t u_begin, int64_t u_end, int64_t step,
                     float* scratch) {
  const int dim = g.dim;
  const OptimizerConfig& opt = table.config().optimizer;
  const float* weights = g.weights.empty() ? nullptr : g.weights.data();
  const int32_t* occ_off = g.occurrence_offsets.data();
  const int32_t* occ_pos = g.occurrence_positions.data();
  const int32_t* bag_of = g.bag_of_position.data();
  const bool sequence = g.pooling == Pooling::kNone;
  for (int64_t u = u_begin; u < u_end; ++u) {
    if (u + kUpdateAhead < u_end) prefetch_bytes(rows[u + kUpdateAhead], table.row_bytes(), 1);
    for (int d = 0; d < dim; ++d) scratch[d] = 0.0f;
    for (int32_t k = occ_off[u]; k < occ_off[u + 1]; ++k) {
      const int32_t pos = occ_pos[k];
      const int32_t b = bag_of[pos];
      float s = bag_scale[b];
      if (weights) s *= weights[pos];
      const float* src = sequence ? grad + (b * g.max_len + (pos - g.offsets[b])) * dim : grad + int64_t{b} * dim;
      axpy(scratch, src, s, dim);
    }
    std::byte* row = rows[u];
    PackedRowMeta* meta = table.meta(row);
    meta->count_update();
    int64_t t = opt.use_global_step ? step : static_cast<int64_t>(meta->update_count);
    float* w = EmbeddingTable::weights(row);
    rules::apply(opt, w, w + dim, scratch, dim, t);
    meta->set_last_step(step);
  }
}

SC_DISPATCH
bool all_finite(const float* x, int64_t n) {
  // Inf and NaN are exactly the floats whose exponent bits are all ones; an OR of per-element
  // flags vectorises where a float reduction would not.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace sparsecore::kernels
