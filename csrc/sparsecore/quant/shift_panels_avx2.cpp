// The Avx2 build of the panel shift-matmul kernel (shift_panels_kernel.inc). Only this
// file's functions carry the target; shift_panels.cpp calls them after a CPU feature test.
#include <cstdint>

#include "sparsecore/quant/shift_panels.h"

#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include <algorithm>

#include "sparsecore/quant/detail/shift_kernels.h"

namespace sparsecore::quant::detail {

namespace {
struct Avx2 {
  using Reg = __m256;
  using Codes = __m256i;
  static constexpr int kHalves = 2;
  static constexpr int kRows = 4, kPanels = 1;
  static constexpr int kGemvPanels = 2;
  static Codes load_codes(const uint8_t* d, int h) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32 * h));
  }
  // vpermps reads 3 index bits: the magnitude comes from the low 3 bits of the low (or, with
  // `high`, the second) nibble, its sign bit is moved to bit 31 and xor-ed in.
  static Reg decode(Codes d, int high, const float* lut) {
    const __m256 t = _mm256_load_ps(lut);
    const __m256i n = high ? _mm256_srli_epi32(d, 4) : d;
    const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(n, 28), _mm256_set1_epi32(INT32_MIN));
    return _mm256_xor_ps(_mm256_permutevar8x32_ps(t, n), _mm256_castsi256_ps(sign));
  }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg fma(float x, Reg w, Reg acc) { return _mm256_fmadd_ps(_mm256_set1_ps(x), w, acc); }
  static void store(float* y, const float* alpha, Reg acc, int h, int64_t n) {
    alignas(32) float lane[8];
    _mm256_store_ps(lane, acc);
    for (int64_t i = 8 * h; i < std::min<int64_t>(n, 8 * h + 8); ++i) y[i] = alpha[i] * lane[i - 8 * h];
  }
};
}  // namespace

#include "sparsecore/quant/shift_panels_kernel.inc"

void panels_avx2(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                 int64_t cols, int64_t p0, int64_t p1, float* y) {
  run<Avx2>(x, b0, b1, panels, alpha, rows, cols, p0, p1, y);
}

}  // namespace sparsecore::quant::detail
#pragma GCC pop_options
#else
namespace sparsecore::quant::detail {
void panels_avx2(const float*, int64_t, int64_t, const uint32_t*, const float*, int64_t, int64_t, int64_t, int64_t,
                 float*) {}
}  // namespace sparsecore::quant::detail
#endif
