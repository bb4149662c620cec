// Power-of-two weight codes: projection onto α·codebook and the packed 4-bit format that the
// shift matmul reads.
//
// Packed format. A weight matrix W (rows, cols), rows = output channels, is stored as
//   codes  uint8 (rows, packed_cols(cols)), host: byte j of a row holds column 2j in its low
//          nibble and column 2j+1 in its high nibble (an odd last column leaves the high
//          nibble 0);
//   alpha  float32 (rows), host: the scale of each row (a per-layer scale is repeated).
// A nibble n decodes to  alpha · s · 2^(m−1)  with m = n & 7 and s = −1 if n & 8 else +1;
// m = 0 is zero (nibble 8, a "negative zero", also decodes to 0 and is never written).
// So one row holds {0, ±1, ±2, ..., ±64}·alpha: any codebook of zero and signed powers of two
// spanning at most 7 octaves, with alpha absorbing the smallest power.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "sparsecore/core/host_device.h"

namespace sparsecore::quant {

inline constexpr int kCodeBits = 4;
inline constexpr int kMaxExponent = 6;  // magnitudes 2^0 .. 2^6

inline int64_t packed_cols(int64_t cols) { return (cols + 1) / 2; }

// The value of nibble `n` (its low 4 bits) for alpha = 1: the float ±2^(m−1) is built from
// its bits (exponent m − 1, sign bit n & 8), or 0 for m = 0. Shared by the CPU kernels and
// the CUDA kernels (csrc/cuda/shift_matmul.cuh).
SC_HOST_DEVICE float code_value(uint32_t n) {
  const uint32_t m = n & 7u;
  const uint32_t bits = m ? ((m + 126u) << 23) | ((n & 8u) << 28) : 0u;
  float v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// The exact fixed-point product x · code(n): the true shift ±(x << (m − 1)), or 0 for m = 0.
// No overflow check: callers bound |x| (see shift_matmul_fixed).
SC_HOST_DEVICE int32_t code_shift(int32_t x, uint32_t n) {
  const uint32_t m = n & 7u;
  if (m == 0) return 0;
  const int32_t t = static_cast<int32_t>(static_cast<uint32_t>(x) << (m - 1));
  return (n & 8u) ? -t : t;
}

// Packs W = alpha[r] · (0 or ±2^k, 0 <= k <= 6) into codes. Throws InvalidArgument naming the
// first element that is not of that form (or NaN), or an alpha that is not finite and > 0.
//   w      (rows, cols) float32, host
//   alpha  (rows) float32, host
//   codes  (rows, packed_cols(cols)) uint8, host, written
void pack_pow2(const float* w, const float* alpha, int64_t rows, int64_t cols, uint8_t* codes);

// The inverse: w[r, c] = alpha[r] · code_value(nibble). Throws on non-positive alpha.
void unpack_pow2(const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols, float* w);

// Projection of W onto {alpha · c : c in codebook} by alternating closed forms:
//   codes given alpha: each w/alpha goes to the nearest codebook value (float32 division; ties
//                      go to the smaller codebook value);
//   alpha given codes: alpha = Σ w·q / Σ q² (accumulated in double, rounded to float32)
// starting from alpha = mean|w| / mean|c ≠ 0|, until the codes stop changing (or max_iter).
// With per_channel each row has its own alpha, otherwise one alpha for the whole matrix.
// A group of all zeros keeps alpha = 1 (its codes are the value nearest 0).
//   codebook   sorted ascending, distinct, finite, at least one non-zero value
//   w          (rows, cols) float32, host; NaN/Inf throw InvalidArgument
//   projected  (rows, cols) float32, host, written: alpha · q
//   alpha      (per_channel ? rows : 1) float32, host, written
// Returns the number of iterations run (the largest over rows).
int project_pow2(const float* w, int64_t rows, int64_t cols, const std::vector<float>& codebook, bool per_channel,
                 int max_iter, float* projected, float* alpha);

// InvalidArgument naming the first alpha that is not finite and > 0.
void check_alpha(const float* alpha, int64_t rows);

// Checks a codebook for project_pow2 (sorted, distinct, finite, a non-zero value).
void check_codebook(const std::vector<float>& codebook);

}  // namespace sparsecore::quant
