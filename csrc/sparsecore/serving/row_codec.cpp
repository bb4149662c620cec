#include "sparsecore/serving/row_codec.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/half.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SPARSECORE_NO_DISPATCH)
#define SC_ROWS_AVX2 1
#include <immintrin.h>
#endif

namespace sparsecore::serving {
namespace {

constexpr int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }

// Rows are prefetched this many ids before they are read: the probes that found them touched
// only the index, so each row is a miss of its own.
constexpr int64_t kRowsAhead = 12;

inline void prefetch_row(const std::byte* row, size_t bytes) {
  if (row == nullptr) return;
  __builtin_prefetch(row);
  __builtin_prefetch(row + bytes - 1);
}

std::atomic<bool> g_force_portable{false};

// ---- portable loops -------------------------------------------------------------------------

float scalar_of(const std::byte* row, size_t at) {
  float v;
  std::memcpy(&v, row + at, sizeof(v));
  return v;
}

// Value c of a stored row.
template <ExportDtype D>
inline float value_at(const std::byte* row, int c) {
  if constexpr (D == ExportDtype::kFloat32) {
    return scalar_of(row, 4 * static_cast<size_t>(c));
  } else if constexpr (D == ExportDtype::kFloat16) {
    uint16_t h;
    std::memcpy(&h, row + 2 * static_cast<size_t>(c), 2);
    return half_to_float(h);
  } else {
    const auto* q = reinterpret_cast<const uint8_t*>(row) + 8;
    const uint8_t code =
        D == ExportDtype::kInt8 ? q[c] : static_cast<uint8_t>((c & 1) ? q[c >> 1] >> 4 : q[c >> 1] & 15);
    const float v = static_cast<float>(code) * scalar_of(row, 0);
    return v + scalar_of(row, 4);
  }
}

template <ExportDtype D>
void pool_portable(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, float fill, bool mean,
                   float* out) {
  const int dim = codec.dim();
  const int64_t end = bags.offsets[b1];
  for (int64_t b = b0; b < b1; ++b) {
    float* o = out + (b - b0) * dim;
    std::fill(o, o + dim, 0.0f);
    float total = 0.0f;
    for (int64_t i = bags.offsets[b]; i < bags.offsets[b + 1]; ++i) {
      if (i + kRowsAhead < end) prefetch_row(bags.rows[i + kRowsAhead], codec.row_bytes());
      const float s = bags.weights ? bags.weights[i] : 1.0f;
      total += s;
      const std::byte* r = bags.rows[i];
      for (int c = 0; c < dim; ++c) {
        const float v = s * (r ? value_at<D>(r, c) : fill);
        o[c] += v;
      }
    }
    if (mean && bags.offsets[b + 1] > bags.offsets[b] && total != 0.0f)
      for (int c = 0; c < dim; ++c) o[c] /= total;
  }
}

template <ExportDtype D>
void row_portable(const std::byte* r, int dim, float s, float fill, float* out) {
  for (int c = 0; c < dim; ++c) out[c] = s * (r ? value_at<D>(r, c) : fill);
}

// ---- AVX2 + F16C ----------------------------------------------------------------------------

#if defined(SC_ROWS_AVX2)
#define SC_AVX2 __attribute__((target("avx2,f16c")))

bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  }();
  return has;
}

// The first `lanes` (1..8) lanes set.
SC_AVX2 inline __m256i lane_mask(int lanes) {
  alignas(32) static const int32_t bits[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + 8 - lanes));
}

// Values [8k, 8k + 8) of a stored row (lanes past dim: anything; `mask` guards the fp32 tail,
// the only layout without padding).
template <ExportDtype D>
SC_AVX2 inline __m256 load8(const std::byte* row, int k, bool last, __m256i mask) {
  if constexpr (D == ExportDtype::kFloat32) {
    const float* p = reinterpret_cast<const float*>(row) + 8 * k;
    return last ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
  } else if constexpr (D == ExportDtype::kFloat16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * k)));
  } else {
    __m128i q;
    if constexpr (D == ExportDtype::kInt8) {
      q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 + 8 * k));
    } else {
      int32_t word;
      std::memcpy(&word, row + 8 + 4 * k, 4);
      const __m128i bytes = _mm_cvtsi32_si128(word), low4 = _mm_set1_epi8(15);
      q = _mm_unpacklo_epi8(_mm_and_si128(bytes, low4), _mm_and_si128(_mm_srli_epi16(bytes, 4), low4));
    }
    const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)),
                                   _mm256_broadcast_ss(reinterpret_cast<const float*>(row)));
    return _mm256_add_ps(v, _mm256_broadcast_ss(reinterpret_cast<const float*>(row) + 1));
  }
}

// NV (1..4) vectors of accumulators held in registers.
template <ExportDtype D, int NV>
SC_AVX2 void pool_avx2(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, float fill, bool mean,
                       float* out) {
  const int dim = codec.dim();
  const size_t rb = codec.row_bytes();
  const __m256i mask = lane_mask(dim - 8 * (NV - 1));
  const __m256 fills = _mm256_set1_ps(fill);
  const int64_t end = bags.offsets[b1];
  for (int64_t b = b0; b < b1; ++b) {
    __m256 acc[NV];
    for (int k = 0; k < NV; ++k) acc[k] = _mm256_setzero_ps();
    float total = 0.0f;
    for (int64_t i = bags.offsets[b]; i < bags.offsets[b + 1]; ++i) {
      if (i + kRowsAhead < end) prefetch_row(bags.rows[i + kRowsAhead], rb);
      const std::byte* r = bags.rows[i];
      __m256 v[NV];
      for (int k = 0; k < NV; ++k) v[k] = r ? load8<D>(r, k, k == NV - 1, mask) : fills;
      if (bags.weights) {
        total += bags.weights[i];
        const __m256 s = _mm256_set1_ps(bags.weights[i]);
        for (int k = 0; k < NV; ++k) v[k] = _mm256_mul_ps(s, v[k]);
      } else {
        total += 1.0f;
      }
      for (int k = 0; k < NV; ++k) acc[k] = _mm256_add_ps(acc[k], v[k]);
    }
    if (mean && bags.offsets[b + 1] > bags.offsets[b] && total != 0.0f) {
      const __m256 t = _mm256_set1_ps(total);
      for (int k = 0; k < NV; ++k) acc[k] = _mm256_div_ps(acc[k], t);
    }
    float* o = out + (b - b0) * dim;
    for (int k = 0; k + 1 < NV; ++k) _mm256_storeu_ps(o + 8 * k, acc[k]);
    _mm256_maskstore_ps(o + 8 * (NV - 1), mask, acc[NV - 1]);
  }
}

// Any dim: the accumulators live in `out` (L1) between ids.
template <ExportDtype D>
SC_AVX2 void pool_avx2_wide(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, float fill, bool mean,
                            float* out) {
  const int dim = codec.dim();
  const int nv = (dim + 7) / 8;
  const size_t rb = codec.row_bytes();
  const __m256i mask = lane_mask(dim - 8 * (nv - 1)), all = lane_mask(8);
  const __m256 fills = _mm256_set1_ps(fill);
  const int64_t end = bags.offsets[b1];
  for (int64_t b = b0; b < b1; ++b) {
    float* o = out + (b - b0) * dim;
    std::fill(o, o + dim, 0.0f);
    float total = 0.0f;
    for (int64_t i = bags.offsets[b]; i < bags.offsets[b + 1]; ++i) {
      if (i + kRowsAhead < end) prefetch_row(bags.rows[i + kRowsAhead], rb);
      const std::byte* r = bags.rows[i];
      const float s = bags.weights ? bags.weights[i] : 1.0f;
      total += s;
      const __m256 sv = _mm256_set1_ps(s);
      for (int k = 0; k < nv; ++k) {
        const bool last = k == nv - 1;
        __m256 v = r ? load8<D>(r, k, last, mask) : fills;
        if (bags.weights) v = _mm256_mul_ps(sv, v);
        const __m256i m = last ? mask : all;
        _mm256_maskstore_ps(o + 8 * k, m, _mm256_add_ps(_mm256_maskload_ps(o + 8 * k, m), v));
      }
    }
    if (mean && bags.offsets[b + 1] > bags.offsets[b] && total != 0.0f)
      for (int c = 0; c < dim; ++c) o[c] /= total;
  }
}

// out (dim) = s · row (fill for an absent row).
template <ExportDtype D>
SC_AVX2 void row_avx2(const std::byte* r, int dim, float s, float fill, float* out) {
  const int nv = (dim + 7) / 8;
  const __m256i mask = lane_mask(dim - 8 * (nv - 1));
  const __m256 sv = _mm256_set1_ps(s), fills = _mm256_set1_ps(fill);
  for (int k = 0; k < nv; ++k) {
    const bool last = k == nv - 1;
    const __m256 v = _mm256_mul_ps(sv, r ? load8<D>(r, k, last, mask) : fills);
    if (last)
      _mm256_maskstore_ps(out + 8 * k, mask, v);
    else
      _mm256_storeu_ps(out + 8 * k, v);
  }
}
#endif  // SC_ROWS_AVX2

using PoolFn = void (*)(const RowCodec&, const BagRows&, int64_t, int64_t, float, bool, float*);
using RowFn = void (*)(const std::byte*, int, float, float, float*);

bool use_vectors() {
#if defined(SC_ROWS_AVX2)
  return !g_force_portable.load(std::memory_order_relaxed) && cpu_has_avx2();
#else
  return false;
#endif
}

template <ExportDtype D>
PoolFn pool_fn(int dim) {
#if defined(SC_ROWS_AVX2)
  if (use_vectors()) {
    switch ((dim + 7) / 8) {
      case 1:
        return pool_avx2<D, 1>;
      case 2:
        return pool_avx2<D, 2>;
      case 3:
        return pool_avx2<D, 3>;
      case 4:
        return pool_avx2<D, 4>;
      default:
        return pool_avx2_wide<D>;
    }
  }
#endif
  (void)dim;
  return pool_portable<D>;
}

template <ExportDtype D>
RowFn row_fn() {
#if defined(SC_ROWS_AVX2)
  if (use_vectors()) return row_avx2<D>;
#endif
  return row_portable<D>;
}

PoolFn pool_for(const RowCodec& codec) {
  switch (codec.dtype()) {
    case ExportDtype::kFloat32:
      return pool_fn<ExportDtype::kFloat32>(codec.dim());
    case ExportDtype::kFloat16:
      return pool_fn<ExportDtype::kFloat16>(codec.dim());
    case ExportDtype::kInt8:
      return pool_fn<ExportDtype::kInt8>(codec.dim());
    default:
      return pool_fn<ExportDtype::kInt4>(codec.dim());
  }
}

RowFn row_for(const RowCodec& codec) {
  switch (codec.dtype()) {
    case ExportDtype::kFloat32:
      return row_fn<ExportDtype::kFloat32>();
    case ExportDtype::kFloat16:
      return row_fn<ExportDtype::kFloat16>();
    case ExportDtype::kInt8:
      return row_fn<ExportDtype::kInt8>();
    default:
      return row_fn<ExportDtype::kInt4>();
  }
}

}  // namespace

RowCodec::RowCodec(ExportDtype dtype, int dim) : dtype_(dtype), dim_(dim) {
  SC_CHECK_ARG(dim >= 1, "RowCodec: dim must be >= 1, got ", dim);
  switch (dtype) {
    case ExportDtype::kFloat32:
      row_bytes_ = 4 * static_cast<size_t>(dim);
      break;
    case ExportDtype::kFloat16:
      row_bytes_ = 2 * static_cast<size_t>(round8(dim));
      break;
    case ExportDtype::kInt8:
      row_bytes_ = 8 + static_cast<size_t>(round8(dim));
      break;
    case ExportDtype::kInt4:
      row_bytes_ = 8 + static_cast<size_t>(round8(dim)) / 2;
      break;
    default:
      throw InvalidArgument("RowCodec: unknown dtype " + std::to_string(static_cast<int>(dtype)));
  }
}

void RowCodec::store(const uint8_t* exported, std::byte* row) const {
  const size_t dim = static_cast<size_t>(dim_);
  auto* out = reinterpret_cast<uint8_t*>(row);
  switch (dtype_) {
    case ExportDtype::kFloat32:
      std::memcpy(out, exported, 4 * dim);
      return;
    case ExportDtype::kFloat16:
      std::memcpy(out, exported, 2 * dim);
      std::memset(out + 2 * dim, 0, row_bytes_ - 2 * dim);
      return;
    default: {
      const size_t data = dtype_ == ExportDtype::kInt8 ? dim : (dim + 1) / 2;
      std::memcpy(out, exported + data, 8);  // scale, bias
      std::memcpy(out + 8, exported, data);
      std::memset(out + 8 + data, 0, row_bytes_ - 8 - data);
    }
  }
}

void RowCodec::decode(const std::byte* row, float* out) const { decode_rows(*this, &row, 1, 0.0f, out); }

void pool_bags(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, float fill, bool mean, float* out) {
  if (b0 >= b1) return;
  pool_for(codec)(codec, bags, b0, b1, fill, mean, out);
}

void sequence_bags(const RowCodec& codec, const BagRows& bags, int64_t b0, int64_t b1, int64_t max_len, float fill,
                   float* out) {
  const RowFn row = row_for(codec);
  const int dim = codec.dim();
  const size_t rb = codec.row_bytes();
  const int64_t end = bags.offsets[b1];
  for (int64_t b = b0; b < b1; ++b) {
    float* o = out + (b - b0) * max_len * dim;
    const int64_t len = bags.offsets[b + 1] - bags.offsets[b];
    for (int64_t t = 0; t < len; ++t) {
      const int64_t i = bags.offsets[b] + t;
      if (i + kRowsAhead < end) prefetch_row(bags.rows[i + kRowsAhead], rb);
      row(bags.rows[i], dim, bags.weights ? bags.weights[i] : 1.0f, fill, o + t * dim);
    }
    std::fill(o + len * dim, o + max_len * dim, 0.0f);
  }
}

void decode_rows(const RowCodec& codec, const std::byte* const* rows, int64_t n, float fill, float* out) {
  const RowFn row = row_for(codec);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kRowsAhead < n) prefetch_row(rows[i + kRowsAhead], codec.row_bytes());
    row(rows[i], codec.dim(), 1.0f, fill, out + i * codec.dim());
  }
}

namespace detail {

void force_portable_rows(bool portable) { g_force_portable.store(portable, std::memory_order_relaxed); }

bool vector_rows_available() {
#if defined(SC_ROWS_AVX2)
  return cpu_has_avx2();
#else
  return false;
#endif
}

}  // namespace detail
}  // namespace sparsecore::serving
