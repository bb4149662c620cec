// The backend side of cuda::DevicePackedWeights (host-only declarations). shift_matmul.cu
// implements it twice from one text: sparsecore::cuda::device (nvcc) and
// sparsecore::cuda::emulated (g++ through the emulation layer). Inputs arrive validated.
#pragma once

#include <memory>

#include "sparsecore/cuda/device_packed_weights.h"

namespace sparsecore::cuda {

class DevicePackedWeightsImpl {
 public:
  virtual ~DevicePackedWeightsImpl() = default;
  virtual int64_t device_bytes() const = 0;
  // Host pointers: copy x over, run, copy the result back.
  virtual void matmul(const float* x, int64_t batch, float* y) const = 0;
  virtual void matmul_fixed(const int8_t* x, int64_t batch, int32_t* acc) const = 0;
  virtual void matmul_fixed(const int16_t* x, int64_t batch, int32_t* acc) const = 0;
  // Device pointers, asynchronous on `stream`.
  virtual void matmul_device(const float* x, int64_t batch, float* y, void* stream) const = 0;
};

namespace emulated {
std::unique_ptr<DevicePackedWeightsImpl> make_packed_weights(const uint8_t* codes, const float* alpha, int64_t rows,
                                                             int64_t cols, LaunchLimits limits);
}  // namespace emulated

namespace device {
std::unique_ptr<DevicePackedWeightsImpl> make_packed_weights(const uint8_t* codes, const float* alpha, int64_t rows,
                                                             int64_t cols, LaunchLimits limits);
}  // namespace device

}  // namespace sparsecore::cuda
