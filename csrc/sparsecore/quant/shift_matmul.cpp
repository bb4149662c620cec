#include "sparsecore/quant/shift_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/detail/shift_kernels.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_panels.h"

namespace sparsecore::quant {

namespace {

void check_shapes(int64_t batch, int64_t rows, int64_t cols) {
  SC_CHECK_ARG(batch >= 0 && rows >= 0 && cols >= 0, "shift_matmul shapes must be non-negative: batch ", batch,
               ", rows ", rows, ", cols ", cols);
}

using detail::Isa;
using detail::isa_for;

Isa detect_isa() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (const char* forced = std::getenv("SPARSECORE_QUANT_KERNEL")) {  // for tests of every path
    if (std::strcmp(forced, "portable") == 0) return Isa::kPortable;
    if (std::strcmp(forced, "avx2") == 0 && avx2) return Isa::kAvx2;
  }
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  return avx2 ? Isa::kAvx2 : Isa::kPortable;
}

}  // namespace

namespace detail {

Isa float_isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

// The CPU's kernel, or the portable one where a product could overflow or x holds Inf/NaN
// (only then could the ISAs round differently).
Isa isa_for(const float* x, int64_t n) {
  return float_isa() == Isa::kPortable || exact_products(x, n) ? float_isa() : Isa::kPortable;
}

}  // namespace detail

namespace {

using detail::float_isa;

void gemv(const float* x, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols, float* y) {
  const int64_t pc = packed_cols(cols);
  const Isa which = isa_for(x, cols);
  PodVector<float> xp(static_cast<size_t>(cols / detail::kGemvBlock * detail::kGemvBlock + 1));
  if (which != Isa::kPortable) detail::permute_x(x, cols, xp.data());
  // Rows in multiples of 4 per task, so that each row is computed by the same kernel body
  // whatever the split.
  parallel_for((rows + 3) / 4, 32, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = 4 * b0, r1 = std::min(rows, 4 * b1);
    switch (which) {
      case Isa::kAvx512:
        detail::gemv_avx512(x, xp.data(), codes, alpha, pc, rows, cols, r0, r1, y);
        break;
      case Isa::kAvx2:
        detail::gemv_avx2(x, xp.data(), codes, alpha, pc, rows, cols, r0, r1, y);
        break;
      default:
        detail::gemv_portable(x, codes, alpha, pc, cols, r0, r1, y);
    }
  });
}

// The GEMM order through the panel kernel (shift_panels.h): the codes are regrouped into
// 16-row panels once per call (one pass over them, against batch passes of multiply-adds).
void gemm(const float* x, int64_t batch, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
          float* y) {
  PodVector<uint32_t> panels(static_cast<size_t>(std::max<int64_t>(shift_panels_size(rows, cols), 1)));
  pack_shift_panels(codes, rows, cols, panels.data());
  shift_panels_matmul(x, batch, panels.data(), alpha, nullptr, rows, cols, y);
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

// The VNNI dot-product kernels where the CPU has them and no other kernel is forced.
bool use_vnni() {
  static const bool yes = float_isa() == Isa::kAvx512 && detail::fixed_vnni_supported();
  return yes;
}

template <typename T, typename Fn>
void fixed_matmul(const T* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc,
                  Fn rows_fn) {
  check_shapes(batch, rows, cols);
  check_fixed_range_of(x, batch, cols);
  if (use_vnni()) return detail::fixed_gemm_vnni(x, batch, codes, rows, cols, acc);
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
  if (batch < detail::kGemmMinBatch) {
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

const char* shift_matmul_fixed_kernel() { return use_vnni() ? "avx512vnni" : "portable"; }

const char* shift_matmul_kernel() {
  switch (float_isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace sparsecore::quant
