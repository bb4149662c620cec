#include "sparsecore/ops/pooling_kernels.h"

// No fused multiply-add contraction in the x86-64-v3/v4 clones: every clone, the default
// x86-64 build and the CUDA emulation layer then round each product and sum alike, so
// results do not depend on the CPU's ISA and match the emulated CUDA backend bit for bit.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/half.h"
#include "sparsecore/optim/update_rules.h"

namespace sparsecore::kernels {
namespace {

__attribute__((always_inline)) inline void axpy(float* __restrict__ y, const float* __restrict__ x, float a, int dim) {
  for (int d = 0; d < dim; ++d) y[d] += a * x[d];
}

// Rows are not cache-line aligned (any dim, one record with the state): touch every line.
__attribute__((always_inline)) inline void prefetch_bytes(const void* p, size_t bytes, int rw = 0) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  for (const char* line = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t{63}); line < end;
       line += 64) {
    if (rw)
      __builtin_prefetch(line, 1);
    else
      __builtin_prefetch(line, 0);
  }
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
// ten ids, so a distance counted inside one bag would leave most rows unprefetched).
constexpr int64_t kPoolAhead = 16;

template <int kDim, bool kHalf>
__attribute__((always_inline)) inline void pool_range(const PreparedGroup& g, const std::byte* const* rows, int64_t b0,
                                                      int64_t b1, float* __restrict__ out, float* __restrict__ tmp) {
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
    float* acc = kDim > 0 ? acc_fixed : out + b * dim;
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
    float* o = out + b * dim;
    for (int d = 0; d < dim; ++d) o[d] = acc[d] * scale;
  }
}

// Index slots are prefetched this many ids ahead of the row probe, rows this many ahead of
// their accumulation: two dependent misses per id overlap with the work on earlier ids.
constexpr int64_t kSlotAhead = 32;
constexpr int64_t kRowAhead = 16;

template <int kDim, bool kHalf>
__attribute__((always_inline)) inline void pool_from_ids(const HashTable& table, int dim_runtime, Pooling pooling,
                                                         const GroupInput& in, int64_t max_len, int64_t b0, int64_t b1,
                                                         float* __restrict__ out, uint64_t* __restrict__ hashes,
                                                         const std::byte** __restrict__ rows, float* __restrict__ tmp) {
  const int dim = kDim > 0 ? kDim : dim_runtime;
  const int64_t* off = in.offsets;
  const int64_t p0 = off[b0], n = off[b1] - p0;
  const int64_t* ids = in.ids + p0;
  const float* weights = in.weights ? in.weights + p0 : nullptr;
  const size_t row_bytes = static_cast<size_t>(dim) * kWeightBytes<kHalf>;
  const size_t out_row_bytes = static_cast<size_t>(dim) * sizeof(float);
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

template <bool kHalf>
__attribute__((always_inline)) inline void pool_bags_from_ids_as(const HashTable& table, int dim, Pooling pooling,
                                                                 const GroupInput& in, int64_t max_len, int64_t b0,
                                                                 int64_t b1, float* out, uint64_t* hashes,
                                                                 const std::byte** rows, float* tmp) {
  switch (pooling == Pooling::kNone ? 0 : dim) {
    case 4:
      pool_from_ids<4, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
    case 8:
      pool_from_ids<8, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
    case 16:
      pool_from_ids<16, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
    case 32:
      pool_from_ids<32, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
    case 64:
      pool_from_ids<64, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
    default:
      pool_from_ids<0, kHalf>(table, dim, pooling, in, max_len, b0, b1, out, hashes, rows, tmp);
      break;
  }
}

template <bool kHalf>
__attribute__((always_inline)) inline void pool_bags_as(const PreparedGroup& g, const std::byte* const* rows,
                                                        int64_t bag_begin, int64_t bag_end, float* out, float* tmp) {
  const int dim = g.dim;
  if (g.pooling == Pooling::kNone) {
    const int64_t out_row_bytes = static_cast<int64_t>(dim) * sizeof(float);
    for (int64_t b = bag_begin; b < bag_end; ++b) {
      const int64_t start = g.offsets[b], len = g.offsets[b + 1] - start;
      float* o = out + b * g.max_len * dim;
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
  switch (dim) {
    case 4:
      pool_range<4, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    case 8:
      pool_range<8, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    case 16:
      pool_range<16, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    case 32:
      pool_range<32, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    case 64:
      pool_range<64, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    case 128:
      pool_range<128, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
    default:
      pool_range<0, kHalf>(g, rows, bag_begin, bag_end, out, tmp);
      break;
  }
}

}  // namespace

SC_DISPATCH
void pool_bags_from_ids(const HashTable& table, int dim, Pooling pooling, RowStorage storage, const GroupInput& in,
                        int64_t max_len, int64_t bag_begin, int64_t bag_end, float* out, uint64_t* hashes,
                        const std::byte** rows, float* tmp) {
  if (storage == RowStorage::kFloat16)
    pool_bags_from_ids_as<true>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows, tmp);
  else
    pool_bags_from_ids_as<false>(table, dim, pooling, in, max_len, bag_begin, bag_end, out, hashes, rows, tmp);
}

SC_DISPATCH
void pool_bags(const PreparedGroup& g, RowStorage storage, const std::byte* const* rows, int64_t bag_begin,
               int64_t bag_end, float* out, float* tmp) {
  if (storage == RowStorage::kFloat16)
    pool_bags_as<true>(g, rows, bag_begin, bag_end, out, tmp);
  else
    pool_bags_as<false>(g, rows, bag_begin, bag_end, out, tmp);
}

// Unique rows this far ahead are prefetched for writing (a whole record: weights, state, meta).
constexpr int64_t kUpdateAhead = 8;

namespace {

// 1 when any of the n floats is Inf or NaN (exponent bits all ones). An OR of per-element
// flags vectorises where a float reduction would not.
__attribute__((always_inline)) inline uint32_t any_nonfinite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad;
}

// Copies a record into its undo slot (16-byte aligned, undo_stride(bytes) long). A log larger
// than the caches is written with non-temporal stores: it is written once and read only when
// a call is undone, so it should neither be read in first (write-allocate) nor push rows out
// of the cache; a small one stays in the cache, where plain stores are cheaper.
template <bool kStream>
__attribute__((always_inline)) inline void save_record(std::byte* __restrict__ dst, const std::byte* __restrict__ src,
                                                       size_t bytes) {
#if defined(__x86_64__)
  if constexpr (kStream) {
    size_t i = 0;
    for (; i + 16 <= bytes; i += 16)
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    for (; i < bytes; i += 8) {  // records are a multiple of 8 bytes
      long long v;
      std::memcpy(&v, src + i, sizeof(v));
      _mm_stream_si64(reinterpret_cast<long long*>(dst + i), v);
    }
    return;
  }
  for (size_t i = 0; i + 16 <= bytes; i += 16)  // inline: a libc call per row costs more than the copy
    _mm_store_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  if (bytes % 16) std::memcpy(dst + bytes - 8, src + bytes - 8, 8);
#else
  std::memcpy(dst, src, bytes);
#endif
}

__attribute__((always_inline)) inline uint32_t any_nonfinite_half(const uint16_t* x, int n) {
  uint32_t bad = 0;
  for (int i = 0; i < n; ++i) bad |= static_cast<uint32_t>((x[i] & 0x7c00u) == 0x7c00u);
  return bad;
}

// The gradient of unique row u of `g`: its occurrences' pooled-output gradients, each times
// its bag's scale (and its weight), summed from zero in ascending position order. The one
// definition of that sum, for the fused backward and for callers that push the sums elsewhere.
__attribute__((always_inline)) inline void sum_row_gradient(const PreparedGroup& g, const float* grad,
                                                            const float* bag_scale, int64_t u,
                                                            float* __restrict__ out) {
  const int dim = g.dim;
  const float* weights = g.weights.empty() ? nullptr : g.weights.data();
  const int32_t* occ_off = g.occurrence_offsets.data();
  const int32_t* occ_pos = g.occurrence_positions.data();
  const int32_t* bag_of = g.bag_of_position.data();
  const bool sequence = g.pooling == Pooling::kNone;
  for (int d = 0; d < dim; ++d) out[d] = 0.0f;
  for (int32_t k = occ_off[u]; k < occ_off[u + 1]; ++k) {
    const int32_t pos = occ_pos[k];
    const int32_t b = bag_of[pos];
    float s = bag_scale[b];
    if (weights) s *= weights[pos];
    const float* src = sequence ? grad + (b * g.max_len + (pos - g.offsets[b])) * dim : grad + int64_t{b} * dim;
    axpy(out, src, s, dim);
  }
}

// Applies the table's update rule once to each of rows [u_begin, u_end), with the gradient
// that gradient_of(u, scratch) writes into scratch[0, dim). Each record is saved to `undo`
// first; a row left non-finite is put back at once and false is returned.
template <bool kStream, typename GradientOf>
__attribute__((always_inline)) inline bool update_rows_as(const EmbeddingTable& table, std::byte* const* rows,
                                                          int64_t u_begin, int64_t u_end, int64_t step, float* scratch,
                                                          std::byte* undo, GradientOf gradient_of) {
  const int dim = table.dim();
  const OptimizerConfig& opt = table.config().optimizer;
  const bool half = table.storage() == RowStorage::kFloat16;
  const size_t row_bytes = table.row_bytes();
  const int state_dim = table.state_dim();
  for (int64_t u = u_begin; u < u_end; ++u) {
    if (u + kUpdateAhead < u_end) prefetch_bytes(rows[u + kUpdateAhead], table.row_bytes(), 1);
    gradient_of(u, scratch);
    std::byte* row = rows[u];
    save_record<kStream>(undo + static_cast<size_t>(u - u_begin) * undo_stride(row_bytes), row,
                         row_bytes);  // the record as it was, in case the call is undone
    PackedRowMeta* meta = table.meta(row);
    meta->count_update();
    const int64_t t = opt.use_global_step ? step : static_cast<int64_t>(meta->update_count);
    float* state = table.state(row);
    if (half) {
      // fp32 math on a widened copy, rounded back once.
      float* w = scratch + dim;
      halves_to_floats(EmbeddingTable::weights_fp16(row), w, dim);
      rules::apply(opt, w, state, scratch, dim, t);
      floats_to_halves(w, EmbeddingTable::weights_fp16(row), dim);
    } else {
      rules::apply(opt, EmbeddingTable::weights(row), state, scratch, dim, t);
    }
    meta->set_last_step(step);
  }
  // Checked once the range is written (its rows are still in the cache): a check right after
  // each row's update would wait for that row's stores.
  uint32_t bad = 0;
  for (int64_t u = u_begin; u < u_end; ++u) {
    std::byte* row = rows[u];
    uint32_t row_bad = half ? any_nonfinite_half(EmbeddingTable::weights_fp16(row), dim)
                            : any_nonfinite(EmbeddingTable::weights(row), dim);
    row_bad |= any_nonfinite(table.state(row), state_dim);
    if (__builtin_expect(row_bad != 0, 0)) {  // put back at once
#if defined(__x86_64__)
      if constexpr (kStream) _mm_sfence();
#endif
      std::memcpy(row, undo + static_cast<size_t>(u - u_begin) * undo_stride(row_bytes), row_bytes);
    }
    bad |= row_bad;
  }
#if defined(__x86_64__)
  if constexpr (kStream) _mm_sfence();  // the log is then visible to whichever thread undoes the call
#endif
  return bad == 0;
}

template <bool kStream>
__attribute__((always_inline)) inline bool backward_update_as(const PreparedGroup& g, const EmbeddingTable& table,
                                                              std::byte* const* rows, const float* grad,
                                                              const float* bag_scale, int64_t u_begin, int64_t u_end,
                                                              int64_t step, float* scratch, std::byte* undo) {
  return update_rows_as<kStream>(table, rows, u_begin, u_end, step, scratch, undo,
                                 [&](int64_t u, float* out) { sum_row_gradient(g, grad, bag_scale, u, out); });
}

template <bool kStream>
__attribute__((always_inline)) inline bool apply_row_gradients_as(const EmbeddingTable& table, std::byte* const* rows,
                                                                  const float* grads, int64_t u_begin, int64_t u_end,
                                                                  int64_t step, float* scratch, std::byte* undo) {
  const size_t row_floats = static_cast<size_t>(table.dim());
  return update_rows_as<kStream>(table, rows, u_begin, u_end, step, scratch, undo, [&](int64_t u, float* out) {
    std::memcpy(out, grads + static_cast<size_t>(u) * row_floats, row_floats * sizeof(float));
  });
}

}  // namespace

SC_DISPATCH
bool backward_update(const PreparedGroup& g, const EmbeddingTable& table, std::byte* const* rows, const float* grad,
                     const float* bag_scale, int64_t u_begin, int64_t u_end, int64_t step, float* scratch,
                     std::byte* undo, bool stream_undo) {
  return stream_undo ? backward_update_as<true>(g, table, rows, grad, bag_scale, u_begin, u_end, step, scratch, undo)
                     : backward_update_as<false>(g, table, rows, grad, bag_scale, u_begin, u_end, step, scratch, undo);
}

SC_DISPATCH
bool apply_row_gradients(const EmbeddingTable& table, std::byte* const* rows, const float* grads, int64_t u_begin,
                         int64_t u_end, int64_t step, float* scratch, std::byte* undo, bool stream_undo) {
  return stream_undo ? apply_row_gradients_as<true>(table, rows, grads, u_begin, u_end, step, scratch, undo)
                     : apply_row_gradients_as<false>(table, rows, grads, u_begin, u_end, step, scratch, undo);
}

SC_DISPATCH
void sum_unique_gradients(const PreparedGroup& g, const float* grad, const float* bag_scale, int64_t u_begin,
                          int64_t u_end, float* out) {
  for (int64_t u = u_begin; u < u_end; ++u) sum_row_gradient(g, grad, bag_scale, u, out + u * g.dim);
}

void undo_rows(std::byte* const* rows, int64_t u_begin, int64_t u_end, size_t row_bytes, const std::byte* undo) {
  for (int64_t u = u_begin; u < u_end; ++u)
    std::memcpy(rows[u], undo + static_cast<size_t>(u - u_begin) * undo_stride(row_bytes), row_bytes);
}

SC_DISPATCH
bool all_finite(const float* x, int64_t n) { return any_nonfinite(x, n) == 0; }

}  // namespace sparsecore::kernels
