// Fixed-point shift matmul on AVX-512 VNNI dot products (declared in detail/shift_kernels.h).
//
// Every weight is an integer w = code_shift(1, n) in {0, ±1, ..., ±64}, so the product x · w of
// an int8 or int16 activation is exact, and so is any integer sum of them modulo 2^32. The
// kernels below compute the same int32 sums as the portable loop, acc[b, r] = Σ_c x[b, c] ·
// w[r, c] wrapped to 32 bits, with dot-product instructions instead of one shift per weight:
//   int8:  VPDPBUSD multiplies unsigned by signed bytes, four pairs per int32 lane. x is fed
//          as x + 128 (x ^ 0x80, in [0, 255]) and the excess 128 · Σ_c w[r, c] is subtracted
//          at the end; 64 products per instruction.
//   int16: VPDPWSSD multiplies signed words, two pairs per lane; 32 products per instruction.
// No instruction saturates, every step wraps modulo 2^32, and the caller has checked that the
// true sum fits int32 (check_fixed_range), so the results equal the portable loop's bit for bit
// on every CPU.
//
// GEMV (int8, fewer than 8 rows of x): no decoded copy of the weights. Each 64-column block of
// a row is 32 code bytes; its nibbles become the bytes w + 64 (in [0, 128]) by one in-register
// table lookup (VPSHUFB), low nibbles (even columns) in the first half and high nibbles (odd
// columns) in the second, and VPDPBUSD multiplies them by x (signed) permuted the same way once
// per call; the excess 64 · Σ_c x[c] is one scalar per row of x. Columns past the last whole
// block are summed by the portable rule.
//
// GEMM layout. Weights are decoded once per call into panels of 16 rows: panel p, dword group g holds
// for each of its rows (one int32 lane each) the K = 4 / sizeof(T) weights of columns
// [K g, K g + K) as T. x is copied into rows of whole groups (zero padded; x ^ 0x80 for int8),
// batch padded to a multiple of the tile. A micro-tile is 2 panels (32 rows) by 8 batch rows:
// 16 accumulators, per group 2 weight loads, 8 broadcasts of one x dword and 16 dot products.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/detail/shift_kernels.h"
#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::quant::detail {

namespace {

constexpr int kPanelRows = 16;  // int32 lanes of a zmm
constexpr int kBatchTile = 8;

// Each code byte (two columns) as the two weights it holds, packed as K = 4 (int8, 2 bytes
// used) or K = 2 (int16, one dword).
struct DecodeTables {
  std::array<uint16_t, 256> int8_pair{};
  std::array<uint32_t, 256> int16_pair{};
  std::array<int32_t, 256> pair_sum{};
  DecodeTables() {
    for (uint32_t b = 0; b < 256; ++b) {
      const int32_t lo = code_shift(1, b & 15u), hi = code_shift(1, b >> 4);
      int8_pair[b] =
          static_cast<uint16_t>(static_cast<uint8_t>(lo) | (static_cast<uint16_t>(static_cast<uint8_t>(hi)) << 8));
      int16_pair[b] =
          static_cast<uint32_t>(static_cast<uint16_t>(lo)) | (static_cast<uint32_t>(static_cast<uint16_t>(hi)) << 16);
      pair_sum[b] = lo + hi;
    }
  }
};

const DecodeTables& tables() {
  static const DecodeTables t;
  return t;
}

// panels (num_panels, groups, 16) dwords; row_sums (rows) = Σ_c w[r, c] (int8 only).
template <typename T>
void pack_panels(const uint8_t* codes, int64_t rows, int64_t cols, int64_t groups, uint32_t* panels,
                 uint32_t* row_sums) {
  const auto& t = tables();
  const int64_t pc = packed_cols(cols);
  const int64_t num_panels = (rows + kPanelRows - 1) / kPanelRows;
  parallel_for(num_panels, 4, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      uint32_t* panel = panels + p * groups * kPanelRows;
      for (int lane = 0; lane < kPanelRows; ++lane) {
        const int64_t r = p * kPanelRows + lane;
        if (r >= rows) {
          for (int64_t g = 0; g < groups; ++g) panel[g * kPanelRows + lane] = 0;
          continue;
        }
        const uint8_t* row = codes + r * pc;
        if constexpr (sizeof(T) == 1) {
          uint32_t sum = 0;
          for (int64_t g = 0; g < groups; ++g) {
            const uint8_t b0 = row[2 * g];
            const uint8_t b1 = 2 * g + 1 < pc ? row[2 * g + 1] : 0;
            panel[g * kPanelRows + lane] = t.int8_pair[b0] | (static_cast<uint32_t>(t.int8_pair[b1]) << 16);
            sum += static_cast<uint32_t>(t.pair_sum[b0] + t.pair_sum[b1]);
          }
          row_sums[r] = sum;
        } else {
          for (int64_t g = 0; g < groups; ++g) panel[g * kPanelRows + lane] = t.int16_pair[row[g]];
        }
      }
    }
  });
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline __m512i dot(__m512i acc, __m512i x, __m512i w) {
  if constexpr (sizeof(T) == 1) return _mm512_dpbusd_epi32(acc, x, w);  // x unsigned (offset), w signed
  return _mm512_dpwssd_epi32(acc, x, w);
}

// acc (batch, rows) for rows [p * 16, p * 16 + 16 * NP) of panels p, p + 1 (NP of them) and
// batch rows [b0, b0 + 8) of xs (padded; rows of `groups` dwords).
template <typename T, int NP>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void tile(const uint32_t* xs, int64_t groups, int64_t b0,
                                                                 int64_t batch, const uint32_t* panel,
                                                                 int64_t panel_stride, int64_t r0, int64_t rows,
                                                                 const uint32_t* row_sums, int32_t* acc) {
  __m512i a[NP][kBatchTile];
  for (int p = 0; p < NP; ++p)
    for (int b = 0; b < kBatchTile; ++b) a[p][b] = _mm512_setzero_si512();
  const uint32_t* xb = xs + b0 * groups;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i w[NP];
    for (int p = 0; p < NP; ++p) w[p] = _mm512_loadu_si512(panel + p * panel_stride + g * kPanelRows);
    for (int b = 0; b < kBatchTile; ++b) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(xb[b * groups + g]));
      for (int p = 0; p < NP; ++p) a[p][b] = dot<T>(a[p][b], x, w[p]);
    }
  }
  for (int p = 0; p < NP; ++p) {
    const int64_t r = r0 + p * kPanelRows;
    if (r >= rows) break;
    const __mmask16 m = rows - r >= kPanelRows ? __mmask16(0xffff) : __mmask16((1u << (rows - r)) - 1);
    __m512i excess = _mm512_setzero_si512();
    if constexpr (sizeof(T) == 1) excess = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, row_sums + r), 7);
    for (int b = 0; b < kBatchTile && b0 + b < batch; ++b)
      _mm512_mask_storeu_epi32(acc + (b0 + b) * rows + r, m, _mm512_sub_epi32(a[p][b], excess));
  }
}

template <typename T>
void fixed_gemm(const T* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc) {
  if (batch == 0 || rows == 0) return;
  constexpr int64_t K = 4 / sizeof(T);
  const int64_t groups = (cols + K - 1) / K;
  const int64_t num_panels = (rows + kPanelRows - 1) / kPanelRows;
  const int64_t panel_stride = groups * kPanelRows;
  PodVector<uint32_t> panels(static_cast<size_t>(std::max<int64_t>(num_panels * panel_stride, 1)));
  PodVector<uint32_t> row_sums(static_cast<size_t>(rows));
  pack_panels<T>(codes, rows, cols, groups, panels.data(), row_sums.data());
  const int64_t padded = (batch + kBatchTile - 1) / kBatchTile * kBatchTile;
  PodVector<uint32_t> xs(static_cast<size_t>(std::max<int64_t>(padded * groups, 1)));
  for (int64_t b = 0; b < padded; ++b) {
    T* dst = reinterpret_cast<T*>(xs.data() + b * groups);
    const int64_t n = b < batch ? cols : 0;
    if constexpr (sizeof(T) == 1) {
      for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(static_cast<uint8_t>(x[b * cols + c]) ^ 0x80u);
    } else {
      std::memcpy(dst, x + b * cols, static_cast<size_t>(n) * sizeof(T));
    }
    std::memset(dst + n, 0, static_cast<size_t>(groups * K - n) * sizeof(T));
  }
  const int64_t pairs = (num_panels + 1) / 2;
  parallel_for(pairs, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t p = 2 * q;
      const uint32_t* panel = panels.data() + p * panel_stride;
      for (int64_t b0 = 0; b0 < batch; b0 += kBatchTile) {
        if (p + 1 < num_panels)
          tile<T, 2>(xs.data(), groups, b0, batch, panel, panel_stride, p * kPanelRows, rows, row_sums.data(), acc);
        else
          tile<T, 1>(xs.data(), groups, b0, batch, panel, panel_stride, p * kPanelRows, rows, row_sums.data(), acc);
      }
    }
  });
}

constexpr int kGemvBlock8 = 64;  // columns per VPDPBUSD of the GEMV
constexpr int kGemvRows = 4;     // rows per pass over x

// xp: each whole 64-column block of x as its even columns, then its odd ones.
void permute_x8(const int8_t* x, int64_t cols, int8_t* xp) {
  for (int64_t b0 = 0; b0 + kGemvBlock8 <= cols; b0 += kGemvBlock8)
    for (int j = 0; j < kGemvBlock8 / 2; ++j) {
      xp[b0 + j] = x[b0 + 2 * j];
      xp[b0 + kGemvBlock8 / 2 + j] = x[b0 + 2 * j + 1];
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) void gemv8_rows(const int8_t* x, const int8_t* xp,
                                                                       const uint8_t* codes, int64_t pc, int64_t cols,
                                                                       int64_t r0, int64_t r1, uint32_t excess,
                                                                       int32_t* acc) {
  // w + 64 for each nibble, repeated in each 128-bit lane for VPSHUFB.
  alignas(64) uint8_t lut[64];
  for (int i = 0; i < 64; ++i) lut[i] = static_cast<uint8_t>(64 + code_shift(1, static_cast<uint32_t>(i & 15)));
  const __m512i table = _mm512_load_si512(lut);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const int64_t blocks = cols / kGemvBlock8;
  for (int64_t r = r0; r < r1; r += kGemvRows) {
    const int n = static_cast<int>(std::min<int64_t>(kGemvRows, r1 - r));
    __m512i a[kGemvRows];
    for (int i = 0; i < kGemvRows; ++i) a[i] = _mm512_setzero_si512();
    for (int64_t k = 0; k < blocks; ++k) {
      const __m512i xv = _mm512_loadu_si512(xp + k * kGemvBlock8);
      for (int i = 0; i < n; ++i) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (r + i) * pc + k * 32));
        const __m256i lo = _mm256_and_si256(c, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), low4);
        const __m512i nib = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        a[i] = _mm512_dpbusd_epi32(a[i], _mm512_shuffle_epi8(table, nib), xv);
      }
    }
    for (int i = 0; i < n; ++i) {
      uint32_t sum = static_cast<uint32_t>(_mm512_reduce_add_epi32(a[i])) - excess;
      const uint8_t* row = codes + (r + i) * pc;
      for (int64_t c = blocks * kGemvBlock8; c < cols; ++c)
        sum += static_cast<uint32_t>(code_shift(x[c], (c & 1) ? (row[c >> 1] >> 4) : (row[c >> 1] & 15u)));
      acc[r + i] = static_cast<int32_t>(sum);
    }
  }
}

// acc (rows) for one row of x.
void gemv8(const int8_t* x, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc) {
  const int64_t blocks = cols / kGemvBlock8;
  PodVector<int8_t> xp(static_cast<size_t>(std::max<int64_t>(blocks * kGemvBlock8, 1)));
  permute_x8(x, cols, xp.data());
  uint32_t excess = 0;  // 64 · Σ x over the whole blocks, modulo 2^32
  for (int64_t c = 0; c < blocks * kGemvBlock8; ++c) excess += static_cast<uint32_t>(64 * int32_t{x[c]});
  const int64_t pc = packed_cols(cols);
  parallel_for((rows + kGemvRows - 1) / kGemvRows, 16, [&](int64_t b0, int64_t b1) {
    gemv8_rows(x, xp.data(), codes, pc, cols, b0 * kGemvRows, std::min(rows, b1 * kGemvRows), excess, acc);
  });
}

}  // namespace

bool fixed_vnni_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni");
}

void fixed_gemm_vnni(const int8_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc) {
  if (batch < kBatchTile) {
    for (int64_t b = 0; b < batch; ++b) gemv8(x + b * cols, codes, rows, cols, acc + b * rows);
    return;
  }
  fixed_gemm(x, batch, codes, rows, cols, acc);
}

void fixed_gemm_vnni(const int16_t* x, int64_t batch, const uint8_t* codes, int64_t rows, int64_t cols, int32_t* acc) {
  fixed_gemm(x, batch, codes, rows, cols, acc);
}

}  // namespace sparsecore::quant::detail
