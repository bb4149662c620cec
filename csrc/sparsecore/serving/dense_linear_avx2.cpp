// The AVX2 build of the packed-Linear kernel (dense_linear_kernel.inc). Only this file's
// functions carry the target; the library's dispatch calls them after a CPU feature test.
#include <cstdint>

#include "sparsecore/serving/dense_linear.h"

#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>

namespace sparsecore::serving::detail {

#include "sparsecore/serving/dense_linear_kernel.inc"

namespace {
struct Avx2 {
  using Reg = __m256;
  static constexpr int kLanes = 8, kPerPanel = 2;
  static constexpr int kRows = 4, kPanels = 1, kGemvPanels = 4;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg broadcast(float v) { return _mm256_set1_ps(v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
};
}  // namespace

void linear_rows_avx2(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0,
                      int64_t r1, float* y) {
  rows<Avx2>(x, packed, bias, in, out, r0, r1, y);
}

}  // namespace sparsecore::serving::detail
#pragma GCC pop_options
#else
namespace sparsecore::serving::detail {
void linear_rows_avx2(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*) {}
}  // namespace sparsecore::serving::detail
#endif
