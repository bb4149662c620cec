// The AVX-512 build of the packed-Linear kernel (dense_linear_kernel.inc). Only this file's
// functions carry the target; the library's dispatch calls them after a CPU feature test.
#include <cstdint>

#include "sparsecore/serving/dense_linear.h"

#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
#include <immintrin.h>

namespace sparsecore::serving::detail {

#include "sparsecore/serving/dense_linear_kernel.inc"

namespace {
struct Avx512 {
  using Reg = __m512;
  static constexpr int kLanes = 16, kPerPanel = 1;
  static constexpr int kRows = 4, kPanels = 2, kGemvPanels = 8;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg broadcast(float v) { return _mm512_set1_ps(v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
};
}  // namespace

void linear_rows_avx512(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0,
                        int64_t r1, float* y) {
  rows<Avx512>(x, packed, bias, in, out, r0, r1, y);
}

}  // namespace sparsecore::serving::detail
#pragma GCC pop_options
#else
namespace sparsecore::serving::detail {
void linear_rows_avx512(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, float*) {}
}  // namespace sparsecore::serving::detail
#endif
