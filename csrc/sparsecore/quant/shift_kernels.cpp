// Float shift-matmul GEMV kernels (one row of x against every packed row), in the summation
// order of detail/shift_kernels.h, which every ISA keeps. The GEMM is in shift_panels.cpp.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/quant/detail/shift_kernels.h"
#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::quant::detail {

namespace {

struct ValueTable {
  alignas(64) float value[16];  // nibble -> ±2^k or 0
  ValueTable() {
    for (uint32_t n = 0; n < 16; ++n) value[n] = code_value(n);
  }
};

const ValueTable& table() {
  static const ValueTable t;
  return t;
}

const float* values() { return table().value; }

inline uint32_t nibble(const uint8_t* row, int64_t c) {
  const uint8_t byte = row[c >> 1];
  return (c & 1) ? (byte >> 4) : (byte & 15u);
}

// Σ x[c]·w[c] over [c0, cols) in order, from +0.
inline float tail_sum(const uint8_t* row, const float* x, int64_t c0, int64_t cols) {
  const float* v = values();
  float u = 0.0f;
  for (int64_t c = c0; c < cols; ++c) u += x[c] * v[nibble(row, c)];
  return u;
}

// Byte j of each dword of codes holds nibbles 2j and 2j + 1. Loading a block again `extra`
// bytes further on brings a later byte to the bottom of every dword, where the table lookup
// reads its low 4 bits, which saves shifts. Such loads read up to `extra` bytes past a block:
// true when that stays inside the codes for the rows [r, end) (only the last row's last block
// can reach the end of the codes).
inline bool pads_loads(int64_t end, int64_t rows, int64_t pc, int64_t blocks, int64_t extra) {
  return end < rows || pc - 64 * blocks >= extra;
}

constexpr int kRowsPerStep = 4;  // AVX2: rows decoded together (independent chains, x loaded once)
// How far ahead (in rows) the codes are prefetched, into L2: a row's codes are read 64 bytes per
// block, one stream per row in flight, and prefetches into L1 run out of miss buffers long
// before the memory bus is busy (measured: 12 GB/s with L1 prefetches 8 rows ahead, 17-24 GB/s
// into L2 16 rows ahead).
constexpr int kPrefetchRows = 16;

}  // namespace

const float* code_values() { return values(); }

SC_DISPATCH bool exact_products(const float* x, int64_t n) {
  // |x| < 2^121 <=> the magnitude bits are below those of 2^121; Inf and NaN are above.
  constexpr uint32_t kLimit = (121u + 127u) << 23;
  uint32_t worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bits &= 0x7fffffffu;
    worst = bits > worst ? bits : worst;
  }
  return worst < kLimit;
}

// A 128-column block is 16 dwords of codes per row: dword j holds columns 8j..8j+7, one per
// nibble. The kernels take nibble i of all 16 dwords at once, so x is stored as 8 vectors:
// xp[128s + 16i + j] = x[128s + 8j + i].
void permute_x(const float* x, int64_t cols, float* xp) {
  const int64_t whole = cols / kGemvBlock * kGemvBlock;
  for (int64_t b0 = 0; b0 < whole; b0 += kGemvBlock)
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < kGemvLanes; ++j) xp[b0 + kGemvLanes * i + j] = x[b0 + 8 * j + i];
}

// Not inlined into the ISA kernels: built for baseline x86-64 it can use no FMA, so for
// inputs outside exact_products it is the one definition every CPU runs.
__attribute__((noinline)) void gemv_portable(const float* x, const uint8_t* codes, const float* alpha, int64_t pc,
                                             int64_t cols, int64_t r0, int64_t r1, float* y) {
  const float* v = values();
  const int64_t blocks = cols / kGemvBlock;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = codes + r * pc;
    float p[2][kGemvLanes] = {};  // [nibble parity][lane]
    for (int64_t s = 0; s < blocks; ++s) {
      const int64_t c0 = s * kGemvBlock;
      for (int j = 0; j < kGemvLanes; ++j)
        for (int i = 0; i < 8; ++i) p[i & 1][j] += x[c0 + 8 * j + i] * v[nibble(row, c0 + 8 * j + i)];
    }
    float q[kGemvLanes];
    for (int j = 0; j < kGemvLanes; ++j) q[j] = p[0][j] + p[1][j];
    y[r] = alpha[r] * (reduce_lanes(q) + tail_sum(row, x, blocks * kGemvBlock, cols));
  }
}

// The values of nibble i (bits 4i..4i+3) of each of 8 dwords: the magnitude is looked up by
// the low 3 bits after a shift, the sign bit is moved to bit 31 and xor-ed in.
__attribute__((target("avx2,fma"), always_inline)) inline __m256 decode_avx2(__m256i d, int i, __m256 lut) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i n = _mm256_srli_epi32(d, 4 * i);
  const __m256 w = _mm256_permutevar8x32_ps(lut, n);
  return _mm256_xor_ps(w, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(n, 28), sign)));
}

__attribute__((target("avx2,fma"))) void gemv_avx2(const float* x, const float* xp, const uint8_t* codes,
                                                   const float* alpha, int64_t pc, int64_t rows, int64_t cols,
                                                   int64_t r0, int64_t r1, float* y) {
  // Lanes 0..7 of the order come from the first 32 bytes of a block (the *[0] halves), lanes
  // 8..15 from the next 32 (the *[1] halves).
  const __m256 lut = _mm256_load_ps(values());  // entries 0..7: 0, 1, 2, ..., 64
  const int64_t blocks = cols / kGemvBlock;
  int64_t r = r0;
  for (; r + kRowsPerStep <= r1; r += kRowsPerStep) {
    __m256 acc[kRowsPerStep][2][2];  // [row][nibble parity][half]
    for (auto& a : acc)
      for (auto& b : a) b[0] = b[1] = _mm256_setzero_ps();
    const uint8_t* row0 = codes + r * pc;
    const bool offset_loads = pads_loads(r + kRowsPerStep, rows, pc, blocks, 3);
    const bool ahead = r + kRowsPerStep + kPrefetchRows <= rows;
    for (int64_t s = 0; s < blocks; ++s) {
      const float* xs = xp + kGemvBlock * s;
      for (int i = 0; i < kRowsPerStep; ++i) {
        if (ahead) _mm_prefetch(reinterpret_cast<const char*>(row0 + (i + kPrefetchRows) * pc + 64 * s), _MM_HINT_T1);
        for (int h = 0; h < 2; ++h) {
          const uint8_t* at = row0 + i * pc + 64 * s + 32 * h;
          if (offset_loads) {
            for (int j = 0; j < 4; ++j) {
              const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + j));
              for (int odd = 0; odd < 2; ++odd)
                acc[i][odd][h] = _mm256_fmadd_ps(
                    decode_avx2(d, odd, lut), _mm256_loadu_ps(xs + kGemvLanes * (2 * j + odd) + 8 * h), acc[i][odd][h]);
            }
          } else {
            const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
            for (int k = 0; k < 8; ++k)
              acc[i][k & 1][h] = _mm256_fmadd_ps(decode_avx2(d, k, lut), _mm256_loadu_ps(xs + kGemvLanes * k + 8 * h),
                                                 acc[i][k & 1][h]);
          }
        }
      }
    }
    for (int i = 0; i < kRowsPerStep; ++i) {
      alignas(32) float q[kGemvLanes];
      _mm256_store_ps(q, _mm256_add_ps(acc[i][0][0], acc[i][1][0]));
      _mm256_store_ps(q + 8, _mm256_add_ps(acc[i][0][1], acc[i][1][1]));
      y[r + i] = alpha[r + i] * (reduce_lanes(q) + tail_sum(row0 + i * pc, x, blocks * kGemvBlock, cols));
    }
  }
  if (r < r1) gemv_portable(x, codes, alpha, pc, cols, r, r1, y);
}

// Rows [r, r + R) of the AVX-512 GEMV. Per row and block one 64-byte load and a second 2 bytes
// further on: vpermps reads the low 4 bits of each dword, so nibble i comes from the first load
// (i < 4) or the second (i >= 4) after a shift by 4 · (i % 4): 6 shifts and 8 lookups per 128
// products. 8 rows per step share each load of x (the 8 vectors of a block). The codes
// kPrefetchRows rows ahead are prefetched into L2.
template <int R>
__attribute__((target("avx512f"), always_inline)) inline void gemv_rows_avx512(const float* x, const float* xp,
                                                                               const uint8_t* codes, const float* alpha,
                                                                               int64_t pc, int64_t rows, int64_t cols,
                                                                               int64_t r, float* y) {
  const __m512 lut = _mm512_load_ps(values());
  const int64_t blocks = cols / kGemvBlock;
  __m512 acc[R][2];  // [row][nibble parity]
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  const uint8_t* row0 = codes + r * pc;
  const bool ahead = r + R + kPrefetchRows <= rows;
  const bool offset_loads = pads_loads(r + R, rows, pc, blocks, 2);
  for (int64_t s = 0; s < blocks; ++s) {
    const float* xs = xp + kGemvBlock * s;
    __m512 xv[8];
    for (int k = 0; k < 8; ++k) xv[k] = _mm512_loadu_ps(xs + kGemvLanes * k);
    for (int i = 0; i < R; ++i) {
      const uint8_t* at = row0 + i * pc + 64 * s;
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchRows * pc), _MM_HINT_T1);
      const __m512i d = _mm512_loadu_si512(at);
      // Without room past the block: nibble k of the one load after a shift by 4k.
      const __m512i e = offset_loads ? _mm512_loadu_si512(at + 2) : _mm512_srli_epi32(d, 16);
      acc[i][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(d, lut), xv[0], acc[i][0]);
      for (int k = 1; k < 4; ++k)
        acc[i][k & 1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(d, 4 * k), lut), xv[k], acc[i][k & 1]);
      acc[i][0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(e, lut), xv[4], acc[i][0]);
      for (int k = 5; k < 8; ++k)
        acc[i][k & 1] =
            _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(e, 4 * (k - 4)), lut), xv[k], acc[i][k & 1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    alignas(64) float q[kGemvLanes];
    _mm512_store_ps(q, _mm512_add_ps(acc[i][0], acc[i][1]));
    y[r + i] = alpha[r + i] * (reduce_lanes(q) + tail_sum(row0 + i * pc, x, blocks * kGemvBlock, cols));
  }
}

__attribute__((target("avx512f"))) void gemv_avx512(const float* x, const float* xp, const uint8_t* codes,
                                                    const float* alpha, int64_t pc, int64_t rows, int64_t cols,
                                                    int64_t r0, int64_t r1, float* y) {
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) gemv_rows_avx512<8>(x, xp, codes, alpha, pc, rows, cols, r, y);
  for (; r + 4 <= r1; r += 4) gemv_rows_avx512<4>(x, xp, codes, alpha, pc, rows, cols, r, y);
  if (r < r1) gemv_portable(x, codes, alpha, pc, cols, r, r1, y);
}

}  // namespace sparsecore::quant::detail
