// The Avx512 build of the panel shift-matmul kernel (shift_panels_kernel.inc). Only this
// file's functions carry the target; shift_panels.cpp calls them after a CPU feature test.
#include <cstdint>

#include "sparsecore/quant/shift_panels.h"

#if defined(__GNUC__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#include <algorithm>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/quant/detail/shift_kernels.h"

namespace sparsecore::quant::detail {

namespace {
// One ISA's vector operations on a panel of 16 outputs, kHalves registers per panel.
struct Avx512 {
  using Reg = __m512;
  using Codes = __m512i;
  static constexpr int kHalves = 1;
  static constexpr int kRows = 8, kPanels = 2;  // GEMM tile: 16 accumulators
  static constexpr int kGemvPanels = 8;         // one row of x: 8 independent chains
  static Codes load_codes(const uint8_t* d, int) { return _mm512_loadu_si512(d); }
  // The values of the low (or, with `high`, the second) nibble of each dword: vpermps reads
  // only the low 4 bits of each index.
  static Reg decode(Codes d, int high, const float* lut) {
    const __m512 t = _mm512_load_ps(lut);
    return _mm512_permutexvar_ps(high ? _mm512_srli_epi32(d, 4) : d, t);
  }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg fma(float x, Reg w, Reg acc) { return _mm512_fmadd_ps(_mm512_set1_ps(x), w, acc); }
  // y[0 .. n) = alpha[0 .. n) · acc
  static void store(float* y, const float* alpha, Reg acc, int h, int64_t n) {
    (void)h;
    const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    _mm512_mask_storeu_ps(y, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, alpha), acc));
  }
};
}  // namespace

#include "sparsecore/quant/shift_panels_kernel.inc"

namespace {

// Batch-lane tiles: 16 rows of x in the 16 lanes of a register, one accumulator per output row
// and block of 16 rows of x. Per column, the code of each output row is a scalar (a table read
// broadcast to the lanes) and x's column is one vector load: no in-register lookup (VPERMPS,
// which shares the FMA pipe), so the tile runs at one multiply-add per cycle. Same products,
// same running sum per output, same bits as the panel tile above.
constexpr int kLanes = 16;
constexpr int kLaneRows = 8;   // output rows per tile: half a panel
constexpr int kMaxBlocks = 2;  // blocks of 16 rows of x per tile

// r[i] lane j -> r[j] lane i (a 16 x 16 transpose).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4m + n], 128-bit block q: column 4q + n of rows 4m .. 4m + 3.
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int n = 0; n < 4; ++n) {
    const __m512 v = _mm512_shuffle_f32x4(u[n], u[4 + n], 0x88), w = _mm512_shuffle_f32x4(u[n], u[4 + n], 0xdd);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + n], u[12 + n], 0x88);
    const __m512 w2 = _mm512_shuffle_f32x4(u[8 + n], u[12 + n], 0xdd);
    r[n] = _mm512_shuffle_f32x4(v, v2, 0x88);
    r[4 + n] = _mm512_shuffle_f32x4(w, w2, 0x88);
    r[8 + n] = _mm512_shuffle_f32x4(v, v2, 0xdd);
    r[12 + n] = _mm512_shuffle_f32x4(w, w2, 0xdd);
  }
}

inline __mmask16 first_lanes(int64_t n) { return n >= kLanes ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// x rows [0, blocks · 16) -> xt[block][c][lane] (rows past n_rows read as 0).
void transpose_in(const float* x, int64_t n_rows, int64_t blocks, int64_t cols, float* xt) {
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const __mmask16 m = first_lanes(cols - c0);
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t b = blk * kLanes + i;
        r[i] = b < n_rows ? _mm512_maskz_loadu_ps(m, x + b * cols + c0) : _mm512_setzero_ps();
      }
      transpose16(r);
      for (int j = 0; j < 16 && c0 + j < cols; ++j) _mm512_storeu_ps(xt + (blk * cols + c0 + j) * kLanes, r[j]);
    }
}

// Outputs [o0, o0 + 8) of panel `panel` for NB blocks of xt; out[a][i] the sums (lanes: rows of x).
template <int NB>
inline void lane_tile(const float* xt, int64_t cols, const uint32_t* panel, int o0, float* out) {
  __m512 acc[kLaneRows][NB];
  for (auto& a : acc)
    for (auto& q : a) q = _mm512_setzero_ps();
  const float* v = code_values();
  // One column: the products of x's column c (a vector per block) and the nibble at bit `shift`
  // of each row's dword (a scalar, broadcast).
  const auto column = [&](const uint32_t* d, int64_t c, int shift) __attribute__((always_inline)) {
    __m512 xc[NB];
    for (int i = 0; i < NB; ++i) xc[i] = _mm512_loadu_ps(xt + (i * cols + c) * kLanes);
    for (int a = 0; a < kLaneRows; ++a) {
      const __m512 w = _mm512_set1_ps(v[(d[a] >> shift) & 15u]);
      for (int i = 0; i < NB; ++i) acc[a][i] = _mm512_fmadd_ps(xc[i], w, acc[a][i]);
    }
  };
  const int64_t whole = cols / kGroupCols;
  uint32_t d[kLaneRows];
  for (int64_t g = 0; g < whole; ++g) {
    for (int a = 0; a < kLaneRows; ++a) d[a] = panel[g * kPanelRows + o0 + a];
#pragma GCC unroll 8
    for (int k = 0; k < static_cast<int>(kGroupCols); ++k) column(d, g * kGroupCols + k, 4 * k);
  }
  if (whole * kGroupCols < cols) {
    for (int a = 0; a < kLaneRows; ++a) d[a] = panel[whole * kPanelRows + o0 + a];
    for (int64_t c = whole * kGroupCols; c < cols; ++c) column(d, c, static_cast<int>(4 * (c - whole * kGroupCols)));
  }
  for (int a = 0; a < kLaneRows; ++a)
    for (int i = 0; i < NB; ++i) _mm512_storeu_ps(out + (a * kMaxBlocks + i) * kLanes, acc[a][i]);
}

// y rows [0, n_rows) of x (n_rows >= 16) against panels [p0, p1) through batch-lane tiles.
void lanes_run(const float* x, int64_t n_rows, const uint32_t* panels, const float* alpha, int64_t rows, int64_t cols,
               int64_t p0, int64_t p1, float* y) {
  const int64_t blocks = (n_rows + kLanes - 1) / kLanes, groups = shift_panel_groups(cols);
  // Per-thread scratch, kept between calls: fresh pages for every task cost as much as the
  // transpose itself. xt: x transposed; sums: one group of blocks for every output of [p0, p1),
  // [output][block][lane].
  thread_local PodVector<float> xt, sums;
  xt.resize(std::max(xt.size(), static_cast<size_t>(blocks * cols * kLanes)));
  sums.resize(std::max(sums.size(), static_cast<size_t>((p1 - p0) * kPanelRows * kMaxBlocks * kLanes)));
  transpose_in(x, n_rows, blocks, cols, xt.data());
  for (int64_t blk = 0; blk < blocks; blk += kMaxBlocks) {
    const int nb = static_cast<int>(std::min<int64_t>(kMaxBlocks, blocks - blk));
    const float* xg = xt.data() + blk * cols * kLanes;
    for (int64_t p = p0; p < p1; ++p)
      for (int o0 = 0; o0 < kPanelRows; o0 += kLaneRows) {
        float* out = sums.data() + ((p - p0) * kPanelRows + o0) * kMaxBlocks * kLanes;
        const uint32_t* panel = panels + p * groups * kPanelRows;
        if (p * kPanelRows + o0 >= rows)  // outputs past `rows`: never stored, but read back below
          std::fill_n(out, kLaneRows * kMaxBlocks * kLanes, 0.0f);
        else if (nb == 2)
          lane_tile<2>(xg, cols, panel, o0, out);
        else
          lane_tile<1>(xg, cols, panel, o0, out);
      }
    // Back to rows of y, 16 outputs by 16 rows of x at a time: y = alpha · s.
    for (int i = 0; i < nb; ++i) {
      const int64_t b0 = (blk + i) * kLanes, nl = std::min<int64_t>(kLanes, n_rows - b0);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = p * kPanelRows;
        const __mmask16 m = first_lanes(rows - r0);
        __m512 r[16];
        for (int o = 0; o < 16; ++o)
          r[o] = _mm512_loadu_ps(sums.data() + (((p - p0) * kPanelRows + o) * kMaxBlocks + i) * kLanes);
        transpose16(r);
        const __m512 al = _mm512_maskz_loadu_ps(m, alpha + r0);
        for (int l = 0; l < nl; ++l) _mm512_mask_storeu_ps(y + (b0 + l) * rows + r0, m, _mm512_mul_ps(al, r[l]));
      }
    }
  }
}

}  // namespace

void panels_avx512(const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha, int64_t rows,
                   int64_t cols, int64_t p0, int64_t p1, float* y) {
  // Whole blocks of 16 rows of x through the batch-lane tiles, the rest through the panel tile.
  const int64_t lane_rows = (b1 - b0) / kLanes * kLanes;
  if (lane_rows > 0 && p1 > p0) lanes_run(x + b0 * cols, lane_rows, panels, alpha, rows, cols, p0, p1, y + b0 * rows);
  run<Avx512>(x, b0 + lane_rows, b1, panels, alpha, rows, cols, p0, p1, y);
}

}  // namespace sparsecore::quant::detail
#pragma GCC pop_options
#else
namespace sparsecore::quant::detail {
void panels_avx512(const float*, int64_t, int64_t, const uint32_t*, const float*, int64_t, int64_t, int64_t, int64_t,
                   float*) {}
}  // namespace sparsecore::quant::detail
#endif
