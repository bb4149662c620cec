// Shift matmul over weights pre-packed into panels: the GEMM form of shift_matmul.h, and the
// kernel of the serving layer's shift_linear (serving/dense_graph.h).
//
// Panel layout. The codes of pow2_codes.h (rows, packed_cols(cols)) are regrouped so that one
// vector load gives 16 output rows at once: panel p (rows 16p .. 16p + 15), group g (columns
// 8g .. 8g + 7) is 16 dwords, dword o holding the 8 nibbles of row 16p + o for those columns,
// column 8g + k in bits 4k .. 4k + 3. That dword is bytes 4g .. 4g + 3 of the packed row read
// little-endian, so packing is a transpose of dwords; rows past `rows` and columns past `cols`
// hold code 0. A kernel broadcasts x[b, 8g + k], decodes nibble k of the 16 dwords with one
// in-register table lookup (the group loaded k / 2 bytes further on; odd k one shift by 4
// more), and adds the 16 products into 16 outputs: no horizontal sums, and R rows of x share
// each decoded vector (the register-blocked tile). On AVX-512, whole blocks of 16 rows of x run a
// batch-lane tile instead: x transposed so that a register holds one column of 16 rows of x,
// one accumulator per output and block, the code a scalar (read from the same panel dword) whose
// value is broadcast; no in-register lookup, which shares the multiply-add pipe on Zen 4.
//
// Summation contract, every output: y[b, r] = alpha[r] · s, s = Σ_c x[b, c] · code[r, c] added
// in order of c from +0 (a running sum; columns past `cols` are never added). This is the GEMM
// order of shift_matmul (detail/shift_kernels.h), and it does not depend on the batch around a
// row, the tile a row falls into, the ISA or the number of threads: every product is exact
// (x · ±2^k), so a fused multiply-add and a multiply then add give the same bits whenever no
// product overflows; for x with |x| >= 2^121, Inf or NaN the portable kernel runs on every CPU.
#pragma once

#include <cstdint>

namespace sparsecore::quant {

inline constexpr int64_t kPanelRows = 16;  // output rows per panel
inline constexpr int64_t kGroupCols = 8;   // columns per dword (one nibble each)

inline int64_t shift_panel_count(int64_t rows) { return (rows + kPanelRows - 1) / kPanelRows; }
inline int64_t shift_panel_groups(int64_t cols) { return (cols + kGroupCols - 1) / kGroupCols; }

// uint32 count of the panels of a (rows, cols) code matrix, plus one dword of padding: the
// kernels load each group again 1, 2 and 3 bytes further on (so that every byte of a dword comes
// to its bottom without a shift), reading up to 3 bytes past the last group.
int64_t shift_panels_size(int64_t rows, int64_t cols);

// codes (rows, packed_cols(cols)) uint8 -> panels (shift_panels_size(rows, cols)) uint32.
void pack_shift_panels(const uint8_t* codes, int64_t rows, int64_t cols, uint32_t* panels);

// y (batch, rows) = alpha[r] · Σ_c x[b, c] · code[r, c] (+ bias[r] when bias is not null, added
// after the product, a second rounding). x (batch, cols) float32; alpha (rows), finite and > 0
// (checked by the caller: shift_matmul, or DenseGraph at load). Large calls are split over the
// global thread pool by outputs; every output is computed by one task, in the order above.
void shift_panels_matmul(const float* x, int64_t batch, const uint32_t* panels, const float* alpha, const float* bias,
                         int64_t rows, int64_t cols, float* y);

namespace detail {
// Rows [b0, b1) of x against panels [p0, p1), without bias; per ISA (shift_panels.cpp).
void panels_portable(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                     int64_t cols, int64_t p0, int64_t p1, float* y);
void panels_avx2(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                 int64_t cols, int64_t p0, int64_t p1, float* y);
void panels_avx512(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                   int64_t cols, int64_t p0, int64_t p1, float* y);
}  // namespace detail

}  // namespace sparsecore::quant
