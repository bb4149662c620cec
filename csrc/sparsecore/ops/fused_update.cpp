#include "sparsecore/ops/fused_update.h"

#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/half.h"
#include "sparsecore/ops/kernel_support.h"
#include "sparsecore/optim/update_rules.h"

namespace sparsecore::kernels {

using support::any_nonfinite;
using support::axpy;
using support::copy_floats;
using support::prefetch_bytes;

// Unique rows this far ahead are prefetched for writing (a whole record: weights, state, meta).
constexpr int64_t kUpdateAhead = 8;
// Gradient rows this many occurrences ahead are prefetched while a row's gradient is summed.
constexpr int32_t kGradientAhead = 16;

namespace {

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

// A sum of kDim-float rows held in registers: 8-float vectors, then a 4-float one, then
// scalars (the compiler does not keep a fixed-size float array in vector registers across a
// loop). Element d gets acc[d] + s * x[d], a product then a sum as axpy computes it, in
// every ISA clone (no contraction: -ffp-contract=off).
using Floats8 = float __attribute__((vector_size(32)));
using Floats4 = float __attribute__((vector_size(16)));
template <int kDim>
struct RowSum {
  static constexpr int kEights = kDim / 8, kFour = (kDim % 8) / 4, kOnes = kDim % 4;
  Floats8 eights[kEights > 0 ? kEights : 1] = {};
  Floats4 four = {};
  float ones[kOnes > 0 ? kOnes : 1] = {};

  __attribute__((always_inline)) void add(const float* __restrict__ x, float s) {
    for (int i = 0; i < kEights; ++i) {
      Floats8 v;
      __builtin_memcpy(&v, x + 8 * i, sizeof(v));
      eights[i] += s * v;
    }
    if constexpr (kFour > 0) {
      Floats4 v;
      __builtin_memcpy(&v, x + 8 * kEights, sizeof(v));
      four += s * v;
    }
    for (int i = 0; i < kOnes; ++i) ones[i] += s * x[kDim - kOnes + i];
  }
  __attribute__((always_inline)) void store(float* __restrict__ out) const {
    for (int i = 0; i < kEights; ++i) __builtin_memcpy(out + 8 * i, &eights[i], sizeof(Floats8));
    if constexpr (kFour > 0) __builtin_memcpy(out + 8 * kEights, &four, sizeof(Floats4));
    for (int i = 0; i < kOnes; ++i) out[kDim - kOnes + i] = ones[i];
  }
};

// The gradient of unique row u of `g`: its occurrences' pooled-output gradients, each times
// its bag's scale (and its weight), in the order of kGradientChunk (embedding_collection.h):
// each chunk of the occurrence list summed from zero in ascending position order, the chunk
// sums added in chunk order. The one definition of that sum, for the fused backward and for
// callers that push the sums elsewhere. partial: dim floats of scratch (long lists only).
// kDim > 0: g.dim == kDim, and a chunk's sum is kept in registers (a sum in memory waits on
// its own store at every occurrence); the same additions in the same order either way.
template <int kDim>
__attribute__((always_inline)) inline void sum_row_gradient(const PreparedGroup& g, const float* grad,
                                                            const float* bag_scale, int64_t u, float* __restrict__ out,
                                                            float* __restrict__ partial) {
  const int dim = kDim > 0 ? kDim : g.dim;
  const float* weights = g.weights.empty() ? nullptr : g.weights.data();
  const int32_t* occ_pos = g.occurrence_positions.data();
  const int32_t* bag_of = g.bag_of_position.data();
  const bool sequence = g.pooling == Pooling::kNone;
  const int32_t num_occurrences = static_cast<int32_t>(g.num_ids);
  auto sum_chunk = [&](float* __restrict__ sum, int32_t k0, int32_t k1) __attribute__((always_inline)) {
    if constexpr (kDim > 0) {
      if (!sequence) {  // a bag's gradient row: the sum in registers
        RowSum<kDim> acc;
        for (int32_t k = k0; k < k1; ++k) {
          // Occurrences are in one array for all rows: the gradient row of a later one (of
          // this row or the next) is fetched while this one is added.
          if (k + kGradientAhead < num_occurrences) {
            const float* ahead = grad + int64_t{bag_of[occ_pos[k + kGradientAhead]]} * kDim;
            __builtin_prefetch(ahead);
            __builtin_prefetch(ahead + kDim - 1);
          }
          const int32_t pos = occ_pos[k];
          const int32_t b = bag_of[pos];
          const float s = weights ? bag_scale[b] * weights[pos] : bag_scale[b];
          acc.add(grad + int64_t{b} * kDim, s);
        }
        acc.store(sum);
        return;
      }
    }
    for (int d = 0; d < dim; ++d) sum[d] = 0.0f;
    for (int32_t k = k0; k < k1; ++k) {
      const int32_t pos = occ_pos[k];
      const int32_t b = bag_of[pos];
      float s = bag_scale[b];
      if (weights) s *= weights[pos];
      const float* src = sequence ? grad + (b * g.max_len + (pos - g.offsets[b])) * dim : grad + int64_t{b} * dim;
      axpy(sum, src, s, dim);
    }
  };
  const int32_t begin = g.occurrence_offsets[u], end = g.occurrence_offsets[u + 1];
  const int32_t first_end = end - begin > kGradientChunk ? begin + kGradientChunk : end;
  sum_chunk(out, begin, first_end);
  for (int32_t k = first_end; k < end; k += kGradientChunk) {
    sum_chunk(partial, k, end - k > kGradientChunk ? k + kGradientChunk : end);
    for (int d = 0; d < dim; ++d) out[d] += partial[d];
  }
}

// The widths with a fixed-size copy of the gradient sum and update.
template <typename F>
__attribute__((always_inline)) inline auto with_update_width(int dim, F f) {
  return support::with_fixed_dim<4, 8, 16, 18, 20, 32, 64>(dim, f);
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
  const rules::CallCoefficients coefficients = rules::call_coefficients(opt, step);  // once, not per row
  for (int64_t u = u_begin; u < u_end; ++u) {
    if (u + kUpdateAhead < u_end && rows[u + kUpdateAhead])
      prefetch_bytes(rows[u + kUpdateAhead], table.row_bytes(), 1);
    std::byte* row = rows[u];
    if (!row) continue;  // an id not admitted: its gradient is dropped (counted by the store)
    gradient_of(u, scratch);
    save_record<kStream>(undo + static_cast<size_t>(u - u_begin) * undo_stride(row_bytes), row,
                         row_bytes);  // the record as it was, in case the call is undone
    PackedRowMeta* meta = table.meta(row);
    meta->count_update();
    const uint32_t count = meta->update_count;
    float* state = table.state(row);
    if (half) {
      // fp32 math on a widened copy, rounded back once.
      float* w = scratch + dim;
      halves_to_floats(EmbeddingTable::weights_fp16(row), w, dim);
      rules::apply(opt, coefficients, w, state, scratch, dim, step, count);
      floats_to_halves(w, EmbeddingTable::weights_fp16(row), dim);
    } else {
      rules::apply(opt, coefficients, EmbeddingTable::weights(row), state, scratch, dim, step, count);
    }
    meta->set_last_step(step);
  }
  // Checked once the range is written (its rows are still in the cache): a check right after
  // each row's update would wait for that row's stores.
  uint32_t bad = 0;
  for (int64_t u = u_begin; u < u_end; ++u) {
    std::byte* row = rows[u];
    if (!row) continue;
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
  // Every step inlined, so that each ISA clone of the caller gets its own copy.
  return with_update_width(
      g.dim, [&](auto fixed) __attribute__((always_inline)) {
        return update_rows_as<kStream>(
            table, rows, u_begin, u_end, step, scratch,
            undo, [&](int64_t u, float* out) __attribute__((always_inline)) {
              // scratch[2 dim, 3 dim) is free (backward_scratch_floats).
              sum_row_gradient<decltype(fixed)::value>(g, grad, bag_scale, u, out, scratch + 2 * g.dim);
            });
      });
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
  thread_local std::vector<float> partial;
  if (partial.size() < static_cast<size_t>(g.dim)) partial.resize(static_cast<size_t>(g.dim));
  with_update_width(
      g.dim, [&](auto fixed) __attribute__((always_inline)) {
        for (int64_t u = u_begin; u < u_end; ++u)
          sum_row_gradient<decltype(fixed)::value>(g, grad, bag_scale, u, out + u * g.dim, partial.data());
      });
}

SC_DISPATCH
bool gather_rows(const float* src, int64_t src_stride, int dim, int64_t b_begin, int64_t b_end, float* dst) {
  for (int64_t b = b_begin; b < b_end; ++b) copy_floats(dst + b * dim, src + b * src_stride, dim);
  // Checked on the copy, which is still in the cache.
  return any_nonfinite(dst + b_begin * dim, (b_end - b_begin) * dim) == 0;
}

void undo_rows(std::byte* const* rows, int64_t u_begin, int64_t u_end, size_t row_bytes, const std::byte* undo) {
  for (int64_t u = u_begin; u < u_end; ++u)
    if (rows[u]) std::memcpy(rows[u], undo + static_cast<size_t>(u - u_begin) * undo_stride(row_bytes), row_bytes);
}

}  // namespace sparsecore::kernels
