// cuda::DevicePackedWeights: packed power-of-two weights (pow2_codes.h) resident on a CUDA
// device, and the shift matmul that reads them: the CUDA twin of quant::shift_matmul and
// quant::shift_matmul_fixed (shift_matmul.h), with the same decoding rule (code_value /
// code_shift, one implementation for both). Declarations only; the kernels live in
// csrc/cuda/shift_matmul.cuh and are built into the sparsecore_cuda library.
//
// Backends as cuda::DeviceEmbeddingCollection: Backend::kDevice needs a CUDA build and a
// device (CudaError "no CUDA device ..." otherwise); Backend::kEmulated runs the same kernels
// on the CPU through the CUDA emulator (for tests and machines without a GPU).
//
// Kernels. Batch below 4 (and every fixed-point call): one warp per output (row, batch row),
// lanes reading consecutive 4-byte words of the packed row (coalesced; a byte at a time when
// cols is not a multiple of 8), a shuffle reduction, alpha applied once. Larger batches
// (float): 64 × 64 output tiles per block, x and the decoded weights staged in shared memory
// 32 columns at a time. Float results agree with the CPU kernels to float32 rounding (the
// summation order differs); fixed-point results are exact and equal to the CPU's.
//
// Thread-safety: calls on one object may run concurrently (they share only read-only weights).
#pragma once

#include <cstdint>
#include <memory>

#include "sparsecore/cuda/device_embedding_collection.h"  // Backend, LaunchLimits, device_available

namespace sparsecore::cuda {

class DevicePackedWeightsImpl;

class DevicePackedWeights {
 public:
  // codes (rows, packed_cols(cols)) uint8, host; alpha (rows) float32, host: copied to the
  // device. InvalidArgument on negative shapes or an alpha that is not finite and > 0.
  // limits: GEMV block size and block cap (the GEMM tile kernel always runs 256 threads).
  DevicePackedWeights(const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
                      Backend backend = Backend::kDevice, LaunchLimits limits = {});
  ~DevicePackedWeights();
  DevicePackedWeights(DevicePackedWeights&&) noexcept;
  DevicePackedWeights& operator=(DevicePackedWeights&&) noexcept;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  Backend backend() const { return backend_; }
  // Bytes held on the device: codes + alpha.
  int64_t device_bytes() const;

  // y = x · Wᵀ. x (batch, cols) float32, host; y (batch, rows) float32, host.
  void matmul(const float* x, int64_t batch, float* y) const;
  // The same on device memory: x (batch, cols) and y (batch, rows) device pointers, queued
  // on `stream` (a cudaStream_t; nullptr: the default stream) and not waited for. Under the
  // emulator "device memory" is host memory and the call completes before it returns.
  void matmul_device(const float* x, int64_t batch, float* y, void* stream = nullptr) const;
  // Exact int32 sums Σ_c ±(x[b, c] << k) (as quant::shift_matmul_fixed, same overflow check).
  // x (batch, cols) int8 or int16, host; acc (batch, rows) int32, host.
  void matmul_fixed(const int8_t* x, int64_t batch, int32_t* acc) const;
  void matmul_fixed(const int16_t* x, int64_t batch, int32_t* acc) const;

 private:
  int64_t rows_ = 0, cols_ = 0;
  Backend backend_ = Backend::kDevice;
  std::unique_ptr<DevicePackedWeightsImpl> impl_;
};

}  // namespace sparsecore::cuda
