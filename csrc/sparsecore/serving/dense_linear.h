// The fp32 Linear of a DenseGraph: y (batch, out) = x (batch, in) · Wᵀ + bias, with W packed
// once at load into panels of kLinearPanel outputs (panel p holds, for each input i, the
// weights of outputs 16p .. 16p + 15 side by side, zero past `out`), so that a micro-kernel
// reads one panel row per input and keeps rows × outputs accumulators in registers.
//
// Summation contract: every output is Σ_i x[i] · W[o][i] added in order of i from +0 (one
// fused multiply-add per term on the AVX2 and AVX-512 kernels, a multiply then an add on the
// portable one), then + bias. The order never depends on the batch around a row, the tile a
// row falls into or the number of threads, so results are equal bit for bit across thread
// counts and batch compositions on one machine; against another summation order (torch's)
// they differ by float32 rounding of the sum of |terms|.
#pragma once

#include <cstdint>
#include <vector>

namespace sparsecore::serving {

constexpr int64_t kLinearPanel = 16;

// w (out, in) row-major -> panels (ceil(out / 16), in, 16).
std::vector<float> pack_linear(const float* w, int64_t out, int64_t in);

// Large batches are split by rows over the compute pool (parallel_for); small ones run on the
// calling thread.
void linear_packed(const float* x, int64_t batch, const float* packed, const float* bias, int64_t in, int64_t out,
                   float* y);

// "avx512", "avx2" or "portable": the kernel linear_packed uses on this CPU.
const char* linear_kernel_name();

namespace detail {
// Rows [r0, r1) of y; the per-ISA kernels (dense_linear_avx2.cpp, dense_linear_avx512.cpp).
void linear_rows_avx512(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0,
                        int64_t r1, float* y);
void linear_rows_avx2(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0,
                      int64_t r1, float* y);
}  // namespace detail

}  // namespace sparsecore::serving
