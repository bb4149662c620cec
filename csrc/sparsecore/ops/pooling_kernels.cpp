#include "sparsecore/ops/pooling_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/half.h"
#include "sparsecore/ops/kernel_support.h"

namespace sparsecore::kernels {
namespace {

using support::any_nonfinite;
using support::axpy;
using support::prefetch_bytes;

// The widths pool_bags keeps a bag's sum of in registers (pools_in_registers answers from the
// same list).
template <typename F>
__attribute__((always_inline)) inline auto with_pooled_width(int dim, F f) {
  return support::with_fixed_dim<4, 8, 16, 18, 20, 32, 64, 128>(dim, f);
}

// A row's weights as fp32: the row itself (fp32 storage) or `tmp` (dim floats) filled by an
// exact widening (fp16 storage; F16C in the x86-64-v3/v4 clones).
template <bool kHalf>
__attribute__((always_inline)) inline const float* row_weights(const std::byte* row, float* __restrict__ tmp, int dim) {
  if constexpr (kHalf) {
    halves_to_floats(reinterpret_cast<const uint16_t*>(row), tmp, dim);
    return tmp;
  } else {
    return reinterpret_cast<const float*>(row);
  }
}

template <bool kHalf>
constexpr size_t kWeightBytes = kHalf ? sizeof(uint16_t) : sizeof(float);

// Rows of the positions this far ahead are prefetched, across bag boundaries (bags hold about
// ten ids, so a distance counted inside one bag would leave most rows unprefetched). The rows
// were resolved at prepare, so all the misses in flight are rows': as far ahead as by index.
constexpr int64_t kPoolAhead = 32;

template <int kDim, bool kHalf>
__attribute__((always_inline)) inline void pool_range(const PreparedGroup& g, const std::byte* const* rows, int64_t b0,
                                                      int64_t b1, float* __restrict__ out, int64_t stride,
                                                      float* __restrict__ tmp) {
  const int dim = kDim > 0 ? kDim : g.dim;
  const float* weights = g.weights.empty() ? nullptr : g.weights.data();
  const int32_t* inv = g.inverse.data();
  const int64_t* off = g.offsets.data();
  const int64_t last = off[b1];
  const size_t row_bytes = static_cast<size_t>(dim) * kWeightBytes<kHalf>;
  for (int64_t p = off[b0]; p < std::min(last, off[b0] + kPoolAhead); ++p)
    if (const std::byte* r = rows[inv[p]]) prefetch_bytes(r, row_bytes);
  // A fixed width keeps the bag's sum in vector registers.
  float acc_fixed[kDim > 0 ? kDim : 1];
  for (int64_t b = b0; b < b1; ++b) {
    float* acc = kDim > 0 ? acc_fixed : out + (b - b0) * stride;
    for (int d = 0; d < dim; ++d) acc[d] = 0.0f;
    float weight_sum = 0.0f;
    for (int64_t p = off[b], end = off[b + 1]; p < end; ++p) {
      if (p + kPoolAhead < last) {
        if (const std::byte* ahead = rows[inv[p + kPoolAhead]]) prefetch_bytes(ahead, row_bytes);
      }
      const float w = weights ? weights[p] : 1.0f;
      weight_sum += w;
      if (const std::byte* row = rows[inv[p]]) axpy(acc, row_weights<kHalf>(row, tmp, dim), w, dim);
    }
    float scale = 1.0f;
    if (g.pooling == Pooling::kMean) {
      const float denom = weights ? weight_sum : static_cast<float>(off[b + 1] - off[b]);
      scale = denom != 0.0f ? 1.0f / denom : 0.0f;
    }
    float* o = out + (b - b0) * stride;
    for (int d = 0; d < dim; ++d) o[d] = acc[d] * scale;
  }
}

// Index slots are prefetched this many ids ahead of the row probe, rows this many ahead of
// their accumulation: two dependent misses per id overlap with the work on earlier ids.
constexpr int64_t kSlotAhead = 32;
constexpr int64_t kRowAhead = 16;
// Rows by index have no slot phase: the misses the hash path spends on slots go to rows further ahead.
constexpr int64_t kDenseRowAhead = 32;

// Where pool_from_ids finds rows. A hash table: the slot of id i is hashed and prefetched
// (ahead), then probed (find). Rows by index: nothing to do ahead, find reads the presence bit.
struct HashedIds {
  const HashTable& table;
  const int64_t* ids;
  uint64_t* __restrict__ hashes;
  static constexpr int64_t kRowsAhead = kRowAhead;
  // Inlined into each ISA clone of the loop (left to the compiler, both were calls per id).
  __attribute__((always_inline)) void ahead(int64_t i) const {
    const uint64_t h = key_hash(ids[i]);
    hashes[i] = h;
    table.shard(table.shard_of_hash(h)).prefetch(h);
  }
  __attribute__((always_inline)) const std::byte* find(int64_t i) const {
    const uint64_t h = hashes[i];
    return table.shard(table.shard_of_hash(h)).find(ids[i], h);
  }
};

struct DenseIds {
  const DenseRows& rows;
  const int64_t* ids;
  __attribute__((always_inline)) void ahead(int64_t) const {}
  __attribute__((always_inline)) const std::byte* find(int64_t i) const { return rows.find(ids[i]); }
  static constexpr int64_t kRowsAhead = kDenseRowAhead;
};

template <int kDim, bool kHalf, typename Ids>
__attribute__((always_inline)) inline void pool_from_ids(const Ids& lookup, int dim_runtime, Pooling pooling,
                                                         const GroupInput& in, int64_t max_len, int64_t b0, int64_t b1,
                                                         float* __restrict__ out, const std::byte** __restrict__ rows,
                                                         float* __restrict__ tmp, const std::byte* default_row) {
  const int dim = kDim > 0 ? kDim : dim_runtime;
  const int64_t* off = in.offsets;
  const int64_t p0 = off[b0], n = off[b1] - p0;
  const float* weights = in.weights ? in.weights + p0 : nullptr;
  const size_t row_bytes = static_cast<size_t>(dim) * kWeightBytes<kHalf>;
  const size_t out_row_bytes = static_cast<size_t>(dim) * sizeof(float);
  auto hash_ahead = [&](int64_t i) __attribute__((always_inline)) { lookup.ahead(i); };
  auto probe_ahead = [&](int64_t i) __attribute__((always_inline)) {
    const std::byte* r = lookup.find(i);
    rows[i] = r ? r : default_row;
    if (r) prefetch_bytes(r, row_bytes);
  };
  for (int64_t i = 0; i < std::min(n, kSlotAhead + Ids::kRowsAhead); ++i) hash_ahead(i);
  for (int64_t i = 0; i < std::min(n, Ids::kRowsAhead); ++i) probe_ahead(i);
  auto advance = [&](int64_t i) __attribute__((always_inline)) {
    if (i + Ids::kRowsAhead < n) probe_ahead(i + Ids::kRowsAhead);
    if (i + kSlotAhead + Ids::kRowsAhead < n) hash_ahead(i + kSlotAhead + Ids::kRowsAhead);
  };

  if (pooling == Pooling::kNone) {
    for (int64_t b = b0; b < b1; ++b) {
      float* o = out + b * max_len * dim;
      const int64_t len = off[b + 1] - off[b];
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = off[b] - p0 + j;
        advance(i);
        float* dst = o + j * dim;
        const float w = weights ? weights[i] : 1.0f;
        if (rows[i]) {
          const float* src = row_weights<kHalf>(rows[i], tmp, dim);
          for (int d = 0; d < dim; ++d) dst[d] = w * src[d];
        } else {
          std::memset(dst, 0, out_row_bytes);
        }
      }
      std::memset(o + len * dim, 0, (max_len - len) * out_row_bytes);
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
      if (rows[i]) axpy(acc, row_weights<kHalf>(rows[i], tmp, dim), w, dim);
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

template <bool kHalf, typename Ids>
__attribute__((always_inline)) inline void pool_bags_from_ids_as(const Ids& lookup, int dim, Pooling pooling,
                                                                 const GroupInput& in, int64_t max_len, int64_t b0,
                                                                 int64_t b1, float* out, const std::byte** rows,
                                                                 float* tmp, const std::byte* default_row) {
  // Fixed-size copies of the common widths (pooling "none" copies rows: the runtime width).
  support::with_fixed_dim<4, 8, 16, 32, 64>(
      pooling == Pooling::kNone ? 0 : dim, [&](auto fixed) __attribute__((always_inline)) {
        pool_from_ids<decltype(fixed)::value, kHalf>(lookup, dim, pooling, in, max_len, b0, b1, out, rows, tmp,
                                                     default_row);
      });
}

template <bool kHalf>
__attribute__((always_inline)) inline void pool_bags_as(const PreparedGroup& g, const std::byte* const* rows,
                                                        int64_t bag_begin, int64_t bag_end, float* out, int64_t stride,
                                                        float* tmp) {
  const int dim = g.dim;
  if (g.pooling == Pooling::kNone) {
    const int64_t out_row_bytes = static_cast<int64_t>(dim) * sizeof(float);
    for (int64_t b = bag_begin; b < bag_end; ++b) {
      const int64_t start = g.offsets[b], len = g.offsets[b + 1] - start;
      float* o = out + (b - bag_begin) * g.max_len * dim;
      for (int64_t j = 0; j < len; ++j) {
        const std::byte* row = rows[g.inverse[start + j]];
        float w = g.weights.empty() ? 1.0f : g.weights[start + j];
        float* dst = o + j * dim;
        if (!row) {
          std::memset(dst, 0, out_row_bytes);
        } else {
          const float* src = row_weights<kHalf>(row, tmp, dim);
          for (int d = 0; d < dim; ++d) dst[d] = w * src[d];
        }
      }
      std::memset(o + len * dim, 0, (g.max_len - len) * out_row_bytes);
    }
    return;
  }
  // Fixed-size copies of the common widths let the compiler keep a bag's sum in registers.
  with_pooled_width(
      dim, [&](auto fixed) __attribute__((always_inline)) {
        pool_range<decltype(fixed)::value, kHalf>(g, rows, bag_begin, bag_end, out, stride, tmp);
      });
}

}  // namespace

SC_DISPATCH
void pool_bags_from_ids(const HashTable& table, int dim, Pooling pooling, RowStorage storage, const GroupInput& in,
                        int64_t max_len, int64_t bag_begin, int64_t bag_end, float* out, uint64_t* hashes,
                        const std::byte** rows, float* tmp, const std::byte* default_row) {
  const int64_t p0 = in.offsets[bag_begin];
  const HashedIds lookup{table, in.ids + p0, hashes};
  if (storage == RowStorage::kFloat16)
    pool_bags_from_ids_as<true>(lookup, dim, pooling, in, max_len, bag_begin, bag_end, out, rows, tmp, default_row);
  else
    pool_bags_from_ids_as<false>(lookup, dim, pooling, in, max_len, bag_begin, bag_end, out, rows, tmp, default_row);
}

SC_DISPATCH
void pool_bags_from_dense_ids(const DenseRows& dense, int dim, Pooling pooling, RowStorage storage,
                              const GroupInput& in, int64_t max_len, int64_t bag_begin, int64_t bag_end, float* out,
                              const std::byte** rows, float* tmp, const std::byte* default_row) {
  const DenseIds lookup{dense, in.ids + in.offsets[bag_begin]};
  if (storage == RowStorage::kFloat16)
    pool_bags_from_ids_as<true>(lookup, dim, pooling, in, max_len, bag_begin, bag_end, out, rows, tmp, default_row);
  else
    pool_bags_from_ids_as<false>(lookup, dim, pooling, in, max_len, bag_begin, bag_end, out, rows, tmp, default_row);
}

SC_DISPATCH
void pool_bags(const PreparedGroup& g, RowStorage storage, const std::byte* const* rows, int64_t bag_begin,
               int64_t bag_end, float* out, int64_t out_stride, float* tmp) {
  if (storage == RowStorage::kFloat16)
    pool_bags_as<true>(g, rows, bag_begin, bag_end, out, out_stride, tmp);
  else
    pool_bags_as<false>(g, rows, bag_begin, bag_end, out, out_stride, tmp);
}

// Not an ISA clone: the answer is the same on every CPU (the widths of with_pooled_width).
bool pools_in_registers(int dim, Pooling pooling) {
  return pooling != Pooling::kNone && with_pooled_width(dim, [](auto fixed) { return decltype(fixed)::value != 0; });
}

bool all_finite(const float* x, int64_t n) { return any_nonfinite(x, n) == 0; }

}  // namespace sparsecore::kernels
