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
#include <vector>

namespace sparsecore::quant {

inline constexpr int kCodeBits = 4;
inline constexpr int kMaxExponent = 6;  // magnitudes 2^0 .. 2^6

inline int64_t packed_cols(int64_t cols) { return (cols + 1) / 2; }

// The value of nibble `n` for alpha = 1.
inline float code_value(uint8_t n) {
  int m = n & 7;
  if (m == 0) return 0.0f;
  float v = static_cast<float>(1 << (m - 1));
  return (n & 8) ? -v : v;
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

// Checks a codebook for project_pow2 (sorted, distinct, finite, a non-zero value).
void check_codebook(const std::vector<float>& codebook);

}  // namespace sparsecore::quant
