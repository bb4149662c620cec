// The Avx512 build of the panel shift-matmul kernel (shift_panels_kernel.inc). Only this
// file's functions carry the target; shift_panels.cpp calls them after a CPU feature test.
#include <cstdint>

#include "sparsecore/quant/shift_panels.h"

#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#include <algorithm>

#include "sparsecore/quant/detail/shift_kernels.h"

namespace sparsecore::quant::detail {

namespace {
// One ISA's vector operations on a panel of 16 outputs, kHalves registers per panel.
struct Avx512 {
  using Reg = __m512;
  using Codes = __m512i;
  static constexpr int kHalves = 1;
  static constexpr int kRows = 8, kPanels = 2;  // GEMM tile: 16 accumulators
  static constexpr int kGemvPanels = 8;         // one row of x: 8 independent chains
  static Codes load_codes(const uint8_t* d, int) { return _mm512_loadu_si512(d); }
  // The values of the low (or, with `high`, the second) nibble of each dword: vpermps reads
  // only the low 4 bits of each index.
  static Reg decode(Codes d, int high, const float* lut) {
    const __m512 t = _mm512_load_ps(lut);
    return _mm512_permutexvar_ps(high ? _mm512_srli_epi32(d, 4) : d, t);
  }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg fma(float x, Reg w, Reg acc) { return _mm512_fmadd_ps(_mm512_set1_ps(x), w, acc); }
  // y[0 .. n) = alpha[0 .. n) · acc
  static void store(float* y, const float* alpha, Reg acc, int h, int64_t n) {
    (void)h;
    const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(y, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, alpha), acc));
  }
};
}  // namespace

#include "sparsecore/quant/shift_panels_kernel.inc"

void panels_avx512(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                   int64_t cols, int64_t p0, int64_t p1, float* y) {
  run<Avx512>(x, b0, b1, panels, alpha, rows, cols, p0, p1, y);
}

}  // namespace sparsecore::quant::detail
#pragma GCC pop_options
#else
namespace sparsecore::quant::detail {
void panels_avx512(const float*, int64_t, int64_t, const uint32_t*, const float*, int64_t, int64_t, int64_t, int64_t,
                   float*) {}
}  // namespace sparsecore::quant::detail
#endif
