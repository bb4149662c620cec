#include "sparsecore/quant/shift_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::quant {

namespace {

// ---------------------------------------------------------------------------------------
// Decoding tables shared by the kernels.

struct Tables {
  alignas(64) float value[16];     // nibble -> ±2^k or 0
  alignas(64) float pair[256][2];  // byte -> (low nibble value, high nibble value)
  Tables() {
    for (int n = 0; n < 16; ++n) {
      value[n] = code_value(static_cast<uint8_t>(n));
    }
    for (int b = 0; b < 256; ++b) {
      pair[b][0] = value[b & 15];
      pair[b][1] = value[b >> 4];
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

void check_shapes(int64_t batch, int64_t rows, int64_t cols) {
  SC_CHECK_ARG(batch >= 0 && rows >= 0 && cols >= 0, "shift_matmul shapes must be non-negative: batch ", batch,
               ", rows ", rows, ", cols ", cols);
}

// Dot product of one packed row with x over columns [c0, cols), portable.
inline float dot_tail(const uint8_t* row, const float* x, int64_t c0, int64_t cols) {
  const Tables& t = tables();
  float s = 0.0f;
  for (int64_t c = c0; c < cols; ++c) {
    uint8_t byte = row[c / 2];
    s += x[c] * t.value[(c & 1) ? (byte >> 4) : (byte & 15)];
  }
  return s;
}

// x permuted for the SIMD GEMV: within each block of `block` columns the even columns come
// first, then the odd ones, matching the order in which the kernels decode low and high
// nibbles. Only whole blocks are permuted; the tail is read from x itself.
void permute_even_odd(const float* x, int64_t cols, int64_t block, float* xp) {
  int64_t whole = cols / block * block;
  for (int64_t b0 = 0; b0 < whole; b0 += block) {
    for (int64_t i = 0; i < block / 2; ++i) {
      xp[b0 + i] = x[b0 + 2 * i];
      xp[b0 + block / 2 + i] = x[b0 + 2 * i + 1];
    }
  }
}

// ---------------------------------------------------------------------------------------
// GEMV kernels: y[r] = alpha[r] · Σ x[c] code[r, c] for rows [r0, r1).

void gemv_portable(const float* x, const uint8_t* codes, const float* alpha, int64_t pc, int64_t cols, int64_t r0,
                   int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; ++r) y[r] = alpha[r] * dot_tail(codes + r * pc, x, 0, cols);
}

constexpr int kGemvRows = 4;  // rows decoded together: independent FMA chains, x loaded once

__attribute__((target("avx2,fma"))) void gemv_avx2(const float* x, const float* xp, const uint8_t* codes,
                                                   const float* alpha, int64_t pc, int64_t cols, int64_t r0, int64_t r1,
                                                   float* y) {
  // 16 columns (8 bytes) per step: the bytes widen to 8 int32 lanes; vpermps looks up the
  // magnitude by the low 3 bits, the sign bit is moved to bit 31 and xor-ed in.
  const __m256 lut = _mm256_load_ps(tables().value);  // entries 0..7: 0, 1, 2, ..., 64
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const int64_t steps = cols / 16;
  int64_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) {
    __m256 even[kGemvRows], odd[kGemvRows];
    for (int i = 0; i < kGemvRows; ++i) even[i] = odd[i] = _mm256_setzero_ps();
    const uint8_t* row0 = codes + r * pc;
    for (int64_t s = 0; s < steps; ++s) {
      __m256 xe = _mm256_loadu_ps(xp + 16 * s), xo = _mm256_loadu_ps(xp + 16 * s + 8);
      for (int i = 0; i < kGemvRows; ++i) {
        __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row0 + i * pc + 8 * s));
        __m256i v = _mm256_cvtepu8_epi32(raw);
        __m256i hi = _mm256_srli_epi32(v, 4);
        __m256 wl = _mm256_permutevar8x32_ps(lut, v);
        __m256 wh = _mm256_permutevar8x32_ps(lut, hi);
        wl = _mm256_xor_ps(wl, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(v, 28), sign)));
        wh = _mm256_xor_ps(wh, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(v, 24), sign)));
        even[i] = _mm256_fmadd_ps(wl, xe, even[i]);
        odd[i] = _mm256_fmadd_ps(wh, xo, odd[i]);
      }
    }
    for (int i = 0; i < kGemvRows; ++i) {
      __m256 s8 = _mm256_add_ps(even[i], odd[i]);
      __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
      s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
      s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
      float sum = _mm_cvtss_f32(s4) + dot_tail(row0 + i * pc, x, steps * 16, cols);
      y[r + i] = alpha[r + i] * sum;
    }
  }
  if (r < r1) gemv_portable(x, codes, alpha, pc, cols, r, r1, y);
}

__attribute__((target("avx512f"))) void gemv_avx512(const float* x, const float* xp, const uint8_t* codes,
                                                    const float* alpha, int64_t pc, int64_t cols, int64_t r0,
                                                    int64_t r1, float* y) {
  // 32 columns (16 bytes) per step: the bytes widen to 16 int32 lanes and vpermps looks up
  // the whole 16-entry table by the low 4 bits (low nibbles) and after a shift (high nibbles).
  const __m512 lut = _mm512_load_ps(tables().value);
  const int64_t steps = cols / 32;
  int64_t r = r0;
  for (; r + kGemvRows <= r1; r += kGemvRows) {
    __m512 even[kGemvRows], odd[kGemvRows];
    for (int i = 0; i < kGemvRows; ++i) even[i] = odd[i] = _mm512_setzero_ps();
    const uint8_t* row0 = codes + r * pc;
    for (int64_t s = 0; s < steps; ++s) {
      __m512 xe = _mm512_loadu_ps(xp + 32 * s), xo = _mm512_loadu_ps(xp + 32 * s + 16);
      for (int i = 0; i < kGemvRows; ++i) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row0 + i * pc + 16 * s)));
        __m512 wl = _mm512_permutexvar_ps(v, lut);
        __m512 wh = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
        even[i] = _mm512_fmadd_ps(wl, xe, even[i]);
        odd[i] = _mm512_fmadd_ps(wh, xo, odd[i]);
      }
    }
    for (int i = 0; i < kGemvRows; ++i) {
      float sum = _mm512_reduce_add_ps(_mm512_add_ps(even[i], odd[i])) + dot_tail(row0 + i * pc, x, steps * 32, cols);
      y[r + i] = alpha[r + i] * sum;
    }
  }
  if (r < r1) gemv_portable(x, codes, alpha, pc, cols, r, r1, y);
}

enum class Isa { kPortable, kAvx2, kAvx512 };

Isa detect_isa() {
  if (const char* forced = std::getenv("SPARSECORE_QUANT_KERNEL")) {  // for tests of every path
    if (std::strcmp(forced, "portable") == 0) return Isa::kPortable;
    if (std::strcmp(forced, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return Isa::kAvx2;
  }
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
  return Isa::kPortable;
}

Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

void gemv(const float* x, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols, float* y) {
  const int64_t pc = packed_cols(cols);
  const Isa which = isa();
  const int64_t block = which == Isa::kAvx512 ? 32 : 16;
  PodVector<float> xp(static_cast<size_t>(cols / block * block + 1));
  if (which != Isa::kPortable) permute_even_odd(x, cols, block, xp.data());
  parallel_for(rows, 64, [&](int64_t r0, int64_t r1) {
    switch (which) {
      case Isa::kAvx512:
        gemv_avx512(x, xp.data(), codes, alpha, pc, cols, r0, r1, y);
        break;
      case Isa::kAvx2:
        gemv_avx2(x, xp.data(), codes, alpha, pc, cols, r0, r1, y);
        break;
      default:
        gemv_portable(x, codes, alpha, pc, cols, r0, r1, y);
    }
  });
}

// ---------------------------------------------------------------------------------------
// GEMM: rows are decoded to float once per block of columns and multiplied against x
// transposed, six rows by two vectors of batch entries at a time (register outer product).

constexpr int kGemmRows = 6;
constexpr int64_t kGemmCols = 256;

template <typename V>
__attribute__((always_inline)) inline void gemm_block(const float* xt, int64_t batch, const float* wd, int64_t kn,
                                                      int64_t nrows, float* yt) {
  // yt (nrows, batch) += wd (nrows, kn) · xt (kn, batch)[, b-range]; wd rows are kGemmCols apart.
  constexpr int64_t L = sizeof(V) / sizeof(float);
  int64_t b = 0;
  for (; b + 2 * L <= batch; b += 2 * L) {
    V acc[kGemmRows][2];
    for (int i = 0; i < kGemmRows; ++i) {
      if (i < nrows) {
        std::memcpy(&acc[i][0], yt + i * batch + b, sizeof(V));
        std::memcpy(&acc[i][1], yt + i * batch + b + L, sizeof(V));
      } else {
        acc[i][0] = acc[i][1] = V{};
      }
    }
    for (int64_t k = 0; k < kn; ++k) {
      V x0, x1;
      std::memcpy(&x0, xt + k * batch + b, sizeof(V));
      std::memcpy(&x1, xt + k * batch + b + L, sizeof(V));
      for (int i = 0; i < kGemmRows; ++i) {
        float w = wd[i * kGemmCols + k];
        acc[i][0] += x0 * w;
        acc[i][1] += x1 * w;
      }
    }
    for (int i = 0; i < nrows; ++i) {
      std::memcpy(yt + i * batch + b, &acc[i][0], sizeof(V));
      std::memcpy(yt + i * batch + b + L, &acc[i][1], sizeof(V));
    }
  }
  for (; b < batch; ++b) {
    for (int i = 0; i < nrows; ++i) {
      float s = yt[i * batch + b];
      for (int64_t k = 0; k < kn; ++k) s += wd[i * kGemmCols + k] * xt[k * batch + b];
      yt[i * batch + b] = s;
    }
  }
}

template <typename V>
__attribute__((always_inline)) inline void gemm_rows(const float* xt, int64_t batch, const uint8_t* codes, int64_t pc,
                                                     int64_t cols, int64_t r0, int64_t r1, float* yt) {
  const Tables& t = tables();
  alignas(64) float wd[kGemmRows * kGemmCols];
  for (int64_t r = r0; r < r1; r += kGemmRows) {
    const int64_t nrows = std::min<int64_t>(kGemmRows, r1 - r);
    for (int64_t c0 = 0; c0 < cols; c0 += kGemmCols) {
      const int64_t kn = std::min(kGemmCols, cols - c0);
      for (int64_t i = 0; i < nrows; ++i) {
        const uint8_t* row = codes + (r + i) * pc + c0 / 2;
        float* out = wd + i * kGemmCols;
        for (int64_t j = 0; j < (kn + 1) / 2; ++j) std::memcpy(out + 2 * j, t.pair[row[j]], 2 * sizeof(float));
      }
      gemm_block<V>(xt + c0 * batch, batch, wd, kn, nrows, yt + r * batch);
    }
  }
}

typedef float v8sf __attribute__((vector_size(32)));
typedef float v16sf __attribute__((vector_size(64)));
typedef float v4sf __attribute__((vector_size(16)));

void gemm_rows_portable(const float* xt, int64_t batch, const uint8_t* codes, int64_t pc, int64_t cols, int64_t r0,
                        int64_t r1, float* yt) {
  gemm_rows<v4sf>(xt, batch, codes, pc, cols, r0, r1, yt);
}
__attribute__((target("avx2,fma"))) void gemm_rows_avx2(const float* xt, int64_t batch, const uint8_t* codes,
                                                        int64_t pc, int64_t cols, int64_t r0, int64_t r1, float* yt) {
  gemm_rows<v8sf>(xt, batch, codes, pc, cols, r0, r1, yt);
}
__attribute__((target("avx512f"))) void gemm_rows_avx512(const float* xt, int64_t batch, const uint8_t* codes,
                                                         int64_t pc, int64_t cols, int64_t r0, int64_t r1, float* yt) {
  gemm_rows<v16sf>(xt, batch, codes, pc, cols, r0, r1, yt);
}

void gemm(const float* x, int64_t batch, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
          float* y) {
  const int64_t pc = packed_cols(cols);
  PodVector<float> xt(static_cast<size_t>(cols * batch));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t c = 0; c < cols; ++c) xt[c * batch + b] = x[b * cols + c];
  std::vector<float> yt(static_cast<size_t>(rows * batch), 0.0f);
  const Isa which = isa();
  // Tasks own whole blocks of kGemmRows rows, so each output is summed in one fixed order.
  int64_t blocks = (rows + kGemmRows - 1) / kGemmRows;
  parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
    int64_t r0 = b0 * kGemmRows, r1 = std::min(rows, b1 * kGemmRows);
    switch (which) {
      case Isa::kAvx512:
        gemm_rows_avx512(xt.data(), batch, codes, pc, cols, r0, r1, yt.data());
        break;
      case Isa::kAvx2:
        gemm_rows_avx2(xt.data(), batch, codes, pc, cols, r0, r1, yt.data());
        break;
      default:
        gemm_rows_portable(xt.data(), batch, codes, pc, cols, r0, r1, yt.data());
    }
  });
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) y[b * rows + r] = alpha[r] * yt[r * batch + b];
}

// ---------------------------------------------------------------------------------------
// Fixed-point activations.

template <typename T>
__attribute__((always_inline)) inline void fixed_rows(const T* x, int64_t batch, const uint8_t* codes, int64_t pc,
                                                      int64_t cols, int64_t r0, int64_t r1, int32_t* acc,
                                                      int64_t rows) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* xb = x + b * cols;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = codes + r * pc;
      uint32_t sum = 0;  // wraps like int32 two's complement; the caller rules overflow out
      for (int64_t c = 0; c < cols; ++c) {
        uint8_t byte = row[c >> 1];
        uint32_t n = (c & 1) ? (byte >> 4) : (byte & 15u);
        sum += static_cast<uint32_t>(code_shift(xb[c], n));
      }
      acc[b * rows + r] = static_cast<int32_t>(sum);
    }
  }
}

SC_DISPATCH void fixed_rows_int8(const int8_t* x, int64_t batch, const uint8_t* codes, int64_t pc, int64_t cols,
                                 int64_t r0, int64_t r1, int32_t* acc, int64_t rows) {
  fixed_rows(x, batch, codes, pc, cols, r0, r1, acc, rows);
}
SC_DISPATCH void fixed_rows_int16(const int16_t* x, int64_t batch, const uint8_t* codes, int64_t pc, int64_t cols,
                                  int64_t r0, int64_t r1, int32_t* acc, int64_t rows) {
  fixed_rows(x, batch, codes, pc, cols, r0, r1, acc, rows);
}

template <typename T>
void check_fixed_range_of(const T* x, int64_t batch, int64_t cols) {
  for (int64_t b = 0; b < batch; ++b) {
    int64_t total = 0;
    for (int64_t c = 0; c < cols; ++c) total += std::abs(static_cast<int64_t>(x[b * cols + c]));
    SC_CHECK_ARG(total <= (int64_t{std::numeric_limits<int32_t>::max()} >> kMaxExponent), "fixed-point x row ", b,
                 " has sum |x| = ", total, ", which times 2^", kMaxExponent,
                 " could overflow the int32 accumulator; scale x down or split the columns");
  }
}

template <typename T, typename Fn>
void fixed_matmul(const T* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc,
                  Fn rows_fn) {
  check_shapes(batch, rows, cols);
  check_fixed_range_of(x, batch, cols);
  const int64_t pc = packed_cols(cols);
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) { rows_fn(x, batch, codes, pc, cols, r0, r1, acc, rows); });
}

}  // namespace

void check_fixed_range(const int8_t* x, int64_t batch, int64_t cols) { check_fixed_range_of(x, batch, cols); }
void check_fixed_range(const int16_t* x, int64_t batch, int64_t cols) { check_fixed_range_of(x, batch, cols); }

void shift_matmul(const float* x, int64_t batch, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
                  float* y) {
  check_shapes(batch, rows, cols);
  check_alpha(alpha, rows);
  // Up to a few batch rows, streaming the codes once per row beats transposing x.
  if (batch < 4) {
    for (int64_t b = 0; b < batch; ++b) gemv(x + b * cols, codes, alpha, rows, cols, y + b * rows);
  } else {
    gemm(x, batch, codes, alpha, rows, cols, y);
  }
}

void shift_matmul_fixed(const int8_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols,
                        int32_t* acc) {
  fixed_matmul(x, batch, codes, rows, cols, acc, fixed_rows_int8);
}

void shift_matmul_fixed(const int16_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols,
                        int32_t* acc) {
  fixed_matmul(x, batch, codes, rows, cols, acc, fixed_rows_int16);
}

void fixed_to_float(const int32_t* acc, int64_t batch, const float* alpha, int64_t rows, float x_scale, float* y) {
  check_alpha(alpha, rows);
  SC_CHECK_ARG(std::isfinite(x_scale) && x_scale > 0.0f, "x_scale = ", x_scale, " must be finite and > 0");
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      float v = static_cast<float>(acc[b * rows + r]) * alpha[r];
      y[b * rows + r] = v * x_scale;
    }
}

const char* shift_matmul_kernel() {
  switch (isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace sparsecore::quant
