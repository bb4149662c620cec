// Float shift-matmul kernels behind shift_matmul (shift_matmul.h), one set per ISA. Not
// installed: callers go through shift_matmul, which validates shapes and alpha.
//
// Exactness. A product x · code is x · (0 or ±2^k, 0 <= k <= 6): exact whenever it does not
// overflow, so a fused multiply-add, a multiply then add, and a lookup of the rounded product
// all give the same bits. The kernels therefore agree bit for bit across ISAs as long as they
// add the products in the same order; exact_products() says when that holds (every x finite
// with |x| < 2^121), and for any other x shift_matmul runs the portable kernels on every CPU.
//
// Summation orders (the contract each kernel keeps, per output element y[b, r]):
//   GEMV (batch < kGemmMinBatch): over the whole 128-column blocks s in order, lane j < 16
//     takes columns c = 128s + 8j + i for i = 0..7 in order, even i into the sum e_j and odd i
//     into o_j (each from +0); q_j = e_j + o_j; then the fixed tree of reduce_lanes() over q;
//     plus the tail u = Σ over the last cols % 128 columns in order from +0:
//     y = alpha · (tree(q) + u).
//   GEMM (batch >= kGemmMinBatch): one running sum from +0 over the columns in order:
//     y = alpha · (((x0·w0 + x1·w1) + x2·w2) + ...); the panel kernels of shift_panels.h.
// The two orders differ, so a row of a GEMM result may differ from the GEMV of that row by
// float32 rounding of the sum (bounded by cols · 2^-24 · Σ|x·w|).
#pragma once

#include <cstdint>

namespace sparsecore::quant::detail {

enum class Isa { kPortable, kAvx2, kAvx512 };

inline constexpr int64_t kGemmMinBatch = 4;  // below this, one GEMV per row of x
inline constexpr int kGemvLanes = 16;        // lane sums of the GEMV order
inline constexpr int kGemvBlock = 128;       // columns per block of the GEMV order

// The ISA of the float kernels on this CPU (SPARSECORE_QUANT_KERNEL=portable|avx2 forces a
// lower one, for tests), and the one for this x: the portable kernels wherever a product could
// overflow or x holds Inf/NaN (see exact_products). Defined in shift_matmul.cpp.
Isa float_isa();
Isa isa_for(const float* x, int64_t n);

// The 16 nibble values for alpha = 1 (code_value), 64-byte aligned.
const float* code_values();

// True when every |x[i]| < 2^121 and finite (no product can overflow or be NaN).
bool exact_products(const float* x, int64_t n);

// The fixed reduction of the 16 GEMV lanes: halves added pairwise, 8 then 4, 2, 1.
inline float reduce_lanes(const float* q) {
  float t8[8], t4[4];
  for (int i = 0; i < 8; ++i) t8[i] = q[i] + q[i + 8];
  for (int i = 0; i < 4; ++i) t4[i] = t8[i] + t8[i + 4];
  return (t4[0] + t4[2]) + (t4[1] + t4[3]);
}

// y[r] = alpha[r] · (GEMV order) for rows [r0, r1) of codes (rows, pc); x (cols);
// xp: x with each whole 128-column block permuted by permute_x.
void gemv_portable(const float* x, const uint8_t* codes, const float* alpha, int64_t pc, int64_t cols, int64_t r0,
                   int64_t r1, float* y);
void gemv_avx2(const float* x, const float* xp, const uint8_t* codes, const float* alpha, int64_t pc, int64_t rows,
               int64_t cols, int64_t r0, int64_t r1, float* y);
void gemv_avx512(const float* x, const float* xp, const uint8_t* codes, const float* alpha, int64_t pc, int64_t rows,
                 int64_t cols, int64_t r0, int64_t r1, float* y);
// xp (cols / 128 · 128) written.
void permute_x(const float* x, int64_t cols, float* xp);

// Fixed-point GEMM on AVX-512 VNNI dot products (fixed_kernels.cpp): the same int32 sums as
// the portable loop, bit for bit. Only where fixed_vnni_supported(); shapes as
// shift_matmul_fixed, the range of x already checked.
bool fixed_vnni_supported();
void fixed_gemm_vnni(const int8_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc);
void fixed_gemm_vnni(const int16_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc);

}  // namespace sparsecore::quant::detail
