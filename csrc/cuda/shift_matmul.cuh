// Shift-matmul kernels: y = x · Wᵀ with W as 4-bit packed power-of-two codes + alpha per row
// (sparsecore/quant/pow2_codes.h). The decoding is the CPU's own SC_HOST_DEVICE code_value
// (float: the weight ±2^k built from its exponent bits, one FMA) and code_shift (int8/int16
// activations: a true shift, exact int32 sum).
//
// Packed row r starts at codes + r · pc, pc = (cols + 1) / 2 bytes; column c is the low
// nibble of byte c/2 when c is even, the high nibble when odd. All pointers: device memory.
#pragma once

#include <type_traits>

#include "device_runtime.cuh"
#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::cuda::SC_BACKEND_NS {

// GEMM tiling: a block of 16 × 16 threads computes 64 rows × 64 batch rows of y (4 × 4 per
// thread, strided by 16 so that shared-memory reads are conflict-free), 32 columns at a time.
inline constexpr int kShiftTile = 64;
inline constexpr int kShiftTileK = 32;
inline constexpr int kShiftGemmThreads = 256;
inline constexpr int kShiftTilePad = kShiftTile + 1;  // breaks bank conflicts of transposed stores
static_assert(kShiftGemmThreads <= kMaxBlockThreads, "the GEMM block must fit the kernels' launch bounds");

// CUDA's limit on gridDim.y (gridDim.x allows 2^31 - 1).
inline constexpr int64_t kMaxGridY = 65535;

// Launch shape of shift_gemm_kernel: x over row tiles, y over batch tiles, at most
// min(kMaxGridY, max_blocks when > 0) of them; the kernel strides over the remaining batch
// tiles, so any batch is covered (65535 tiles of 64 end at batch 4,194,240).
inline dim3 shift_gemm_grid(int64_t rows, int64_t batch, int64_t max_blocks = 0) {
  const int64_t row_tiles = (rows + kShiftTile - 1) / kShiftTile;
  int64_t batch_tiles = (batch + kShiftTile - 1) / kShiftTile;
  batch_tiles = batch_tiles < kMaxGridY ? batch_tiles : kMaxGridY;
  if (max_blocks > 0 && batch_tiles > max_blocks) batch_tiles = max_blocks;
  return dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(batch_tiles < 1 ? 1 : batch_tiles));
}

// Eight consecutive activations as one aligned load (LDG.64 / LDG.128 on a device).
template <typename X>
struct alignas(8 * sizeof(X) > 16 ? 16 : 8 * sizeof(X)) ActivationPack {
  X v[8];
};

__device__ __forceinline__ void accumulate(float& acc, float x, uint32_t nibble) {
  acc = fmaf(x, quant::code_value(nibble), acc);
}
__device__ __forceinline__ void accumulate(int32_t& acc, int32_t x, uint32_t nibble) {
  acc += quant::code_shift(x, nibble);
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One warp per output (b, r), grid-stride over batch · rows (consecutive warps take
// consecutive rows of the same x row, which stays in L1). blockDim.x: a multiple of 32.
//   x      (batch, cols) X = float, int8_t or int16_t
//   codes  (rows, pc) uint8
//   alpha  (rows) float32 for float activations (y = alpha · sum); unused for fixed point
//   y      (batch, rows) float32, or int32 for fixed point (the exact sums)
// kWords: cols % 8 == 0 and every row and x row 4-byte / 8-element aligned, so each lane reads
// one 4-byte word (8 codes) per step and the warp reads 128 contiguous bytes; otherwise each
// lane reads one byte (2 codes) per step.
template <typename X, typename Acc, bool kWords>
__global__ void SC_LAUNCH_BOUNDS shift_gemv_kernel(const X* __restrict__ x, int64_t batch,
                                                   const uint8_t* __restrict__ codes, const float* __restrict__ alpha,
                                                   int64_t rows, int64_t cols, Acc* __restrict__ y) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t pc = (cols + 1) / 2;
  const int64_t items = batch * rows;
  for (int64_t item = global_thread() / 32; item < items; item += grid_threads() / 32) {
    const int64_t b = item / rows, r = item % rows;
    const uint8_t* row = codes + r * pc;
    const X* xb = x + b * cols;
    Acc acc = 0;
    if constexpr (kWords) {
      const uint32_t* words = reinterpret_cast<const uint32_t*>(row);
      const int64_t n_words = pc / 4;
      auto accumulate_word = [&](uint32_t word, int64_t j) {
        const ActivationPack<X> xs = *reinterpret_cast<const ActivationPack<X>*>(xb + 8 * j);
        for (int i = 0; i < 8; ++i) accumulate(acc, xs.v[i], (word >> (4 * i)) & 15u);
      };
      int64_t j = lane;
      // Four independent word loads in flight per lane (512 bytes per warp) hide memory latency.
      for (; j + 96 < n_words; j += 128) {
        uint32_t w[4];
        for (int q = 0; q < 4; ++q) w[q] = __ldg(words + j + 32 * q);
        for (int q = 0; q < 4; ++q) accumulate_word(w[q], j + 32 * q);
      }
      for (; j < n_words; j += 32) accumulate_word(__ldg(words + j), j);
    } else {
      for (int64_t j = lane; j < pc; j += 32) {
        const uint32_t byte = row[j];
        accumulate(acc, xb[2 * j], byte & 15u);
        if (2 * j + 1 < cols) accumulate(acc, xb[2 * j + 1], byte >> 4);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) {
      if constexpr (std::is_same_v<Acc, float>)
        y[b * rows + r] = alpha[r] * acc;
      else
        y[b * rows + r] = acc;
    }
  }
}

// One 64 × 64 tile of y (rows r0.., batch rows b0..) of the tiled GEMM. Per 32-column step
// the block stages x (64 batch rows, transposed) in xs and the 64 rows of codes decoded to
// float in ws (shared memory), so each code is decoded once per 64 batch rows; each thread
// then accumulates its 4 × 4 outputs over the 32 columns in order.
__device__ __forceinline__ void shift_gemm_tile(const float* __restrict__ x, int64_t batch,
                                                const uint8_t* __restrict__ codes, const float* __restrict__ alpha,
                                                int64_t rows, int64_t cols, int64_t pc, int64_t r0, int64_t b0,
                                                float* __restrict__ y, float (*xs)[kShiftTilePad],
                                                float (*ws)[kShiftTilePad], int t, int tx, int ty) {
  float acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  for (int64_t k0 = 0; k0 < cols; k0 += kShiftTileK) {
    // x tile: 64 × 32 floats, 8 per thread; consecutive threads read consecutive columns.
    for (int e = t; e < kShiftTile * kShiftTileK; e += kShiftGemmThreads) {
      const int bb = e / kShiftTileK, k = e % kShiftTileK;
      const int64_t b = b0 + bb, c = k0 + k;
      xs[k][bb] = b < batch && c < cols ? x[b * cols + c] : 0.0f;
    }
    // codes tile: 64 rows × 16 bytes, 4 bytes per thread, each decoded to two columns.
    for (int e = t; e < kShiftTile * (kShiftTileK / 2); e += kShiftGemmThreads) {
      const int rr = e / (kShiftTileK / 2), jb = e % (kShiftTileK / 2);
      const int64_t r = r0 + rr, byte_index = k0 / 2 + jb;
      const uint32_t byte = r < rows && byte_index < pc ? codes[r * pc + byte_index] : 0u;
      ws[2 * jb][rr] = quant::code_value(byte & 15u);
      ws[2 * jb + 1][rr] = quant::code_value(byte >> 4);  // 0 past an odd last column (nibble 0)
    }
    __syncthreads();
    for (int k = 0; k < kShiftTileK; ++k) {
      float a[4], w[4];
      for (int i = 0; i < 4; ++i) a[i] = xs[k][ty + 16 * i];
      for (int j = 0; j < 4; ++j) w[j] = ws[k][tx + 16 * j];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t b = b0 + ty + 16 * i;
    if (b >= batch) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t r = r0 + tx + 16 * j;
      if (r < rows) y[b * rows + r] = alpha[r] * acc[i][j];
    }
  }
}

// Tiled GEMM for float activations. Grid: shift_gemm_grid (row tiles × at most 65535 batch
// tiles; a block strides over batch tiles by gridDim.y, so any batch fits); block: 256 threads.
//   x (batch, cols) float32; codes (rows, pc) uint8; alpha (rows); y (batch, rows) float32.
__global__ void SC_LAUNCH_BOUNDS shift_gemm_kernel(const float* __restrict__ x, int64_t batch,
                                                   const uint8_t* __restrict__ codes, const float* __restrict__ alpha,
                                                   int64_t rows, int64_t cols, float* __restrict__ y) {
  __shared__ float xs[kShiftTileK][kShiftTilePad];  // [column][batch row in tile]
  __shared__ float ws[kShiftTileK][kShiftTilePad];  // [column][row in tile]
  const int t = static_cast<int>(threadIdx.x);
  const int tx = t % 16, ty = t / 16;  // tx: rows (so y stores are contiguous), ty: batch rows
  const int64_t r0 = int64_t{blockIdx.x} * kShiftTile;
  const int64_t pc = (cols + 1) / 2;
  for (int64_t b0 = int64_t{blockIdx.y} * kShiftTile; b0 < batch; b0 += int64_t{gridDim.y} * kShiftTile)
    shift_gemm_tile(x, batch, codes, alpha, rows, cols, pc, r0, b0, y, xs, ws, t, tx, ty);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
