// Shift matmul: y = x · Wᵀ with W in the packed power-of-two format of pow2_codes.h, so each
// product is the activation scaled by a power of two.
//
// Float activations. Each nibble is looked up in a 16-entry table of ±2^k (the weight's
// exponent applied to the activation in an FMA), rows are summed in float32 and scaled by
// alpha at the end: y[b, r] = alpha[r] · Σ_c x[b, c] · code[r, c]. Summation order differs
// from NumPy's, so results agree with it to float32 rounding. AVX-512 and AVX2 kernels are
// picked at run time (SPARSECORE_QUANT_KERNEL=portable|avx2 forces one, for tests); any
// x86-64 gets a portable loop, and all of them give the same bits for the same call: every
// product is exact, and each kernel adds them in one documented order
// (detail/shift_kernels.h). With fewer than 4 rows of x each row is a GEMV (16 lane sums over
// 128-column blocks, then a fixed tree), from 4 rows on a GEMM (one running sum per output
// over the columns in order; the panel micro-kernel of shift_panels.h), so a row's result may
// differ in the last bits between the two.
//
// Fixed-point activations (int8 or int16). Each product is a true shift, x << k, negated by the
// sign bit, summed exactly in int32: acc[b, r] = Σ_c s·(x[b, c] << k). Where the CPU has
// AVX-512 VNNI the same sums come from dot-product instructions on the decoded weights (64
// int8 or 32 int16 products per instruction; detail/shift_kernels.h), bit for bit. The call refuses
// inputs whose worst case could overflow int32 (max|x| · 64 · cols > 2^31 − 1). The float
// result is fixed_to_float: y = float32(acc) · alpha[r] · x_scale, rounded after each of the
// conversion and the two products (round to nearest even).
//
// All pointers are host memory; shapes in the comments. Work is split over rows on the
// global thread pool; every output is computed by one task, so results do not depend on the
// number of threads.
#pragma once

#include <cstdint>

#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::quant {

// x (batch, cols) float32; codes (rows, packed_cols(cols)); alpha (rows); y (batch, rows).
void shift_matmul(const float* x, int64_t batch, const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
                  float* y);

// x (batch, cols) int8 or int16; codes (rows, packed_cols(cols)); acc (batch, rows) int32.
void shift_matmul_fixed(const int8_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc);
void shift_matmul_fixed(const int16_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols,
                        int32_t* acc);

// y (batch, rows) = float32(acc) · alpha[r] · x_scale.
void fixed_to_float(const int32_t* acc, int64_t batch, const float* alpha, int64_t rows, float x_scale, float* y);

// Shared with the CUDA twin (sparsecore/cuda/device_packed_weights.h): InvalidArgument for a
// row of fixed-point x whose Σ|x| · 2^kMaxExponent exceeds the int32 range.
void check_fixed_range(const int8_t* x, int64_t batch, int64_t cols);
void check_fixed_range(const int16_t* x, int64_t batch, int64_t cols);

// Which fixed-point kernel shift_matmul_fixed uses: "avx512vnni" (dot-product instructions,
// the same int32 sums) or "portable" (SPARSECORE_QUANT_KERNEL=portable|avx2 forces it).
const char* shift_matmul_fixed_kernel();

// Which float kernel shift_matmul uses on this CPU: "avx512", "avx2" or "portable".
const char* shift_matmul_kernel();

}  // namespace sparsecore::quant
