// The host front of cuda::DevicePackedWeights: validation on the host (nothing reaches the
// device unchecked) and backend selection, as device_embedding_collection.cpp does.
#include "sparsecore/cuda/device_packed_weights.h"

#include "shift_matmul_impl.h"
#include "sparsecore/core/error.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_matmul.h"

namespace sparsecore::cuda {

DevicePackedWeights::DevicePackedWeights(const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols,
                                         Backend backend, LaunchLimits limits)
    : rows_(rows), cols_(cols), backend_(backend) {
  SC_CHECK_ARG(rows >= 0 && cols >= 0, "packed weights shape must be non-negative: rows ", rows, ", cols ", cols);
  limits.validate();
  quant::check_alpha(alpha, rows);
  if (backend == Backend::kEmulated) {
    impl_ = emulated::make_packed_weights(codes, alpha, rows, cols, limits);
  } else {
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
    impl_ = device::make_packed_weights(codes, alpha, rows, cols, limits);
#else
    throw CudaError(device_unavailable_reason());
#endif
  }
}

DevicePackedWeights::~DevicePackedWeights() = default;
DevicePackedWeights::DevicePackedWeights(DevicePackedWeights&&) noexcept = default;
DevicePackedWeights& DevicePackedWeights::operator=(DevicePackedWeights&&) noexcept = default;

int64_t DevicePackedWeights::device_bytes() const { return impl_->device_bytes(); }

void DevicePackedWeights::matmul(const float* x, int64_t batch, float* y) const {
  SC_CHECK_ARG(batch >= 0, "batch must be >= 0, got ", batch);
  impl_->matmul(x, batch, y);
}

void DevicePackedWeights::matmul_device(const float* x, int64_t batch, float* y, void* stream) const {
  SC_CHECK_ARG(batch >= 0, "batch must be >= 0, got ", batch);
  SC_CHECK_ARG(batch == 0 || cols_ == 0 || x != nullptr, "x is a null device pointer");
  SC_CHECK_ARG(batch == 0 || rows_ == 0 || y != nullptr, "y is a null device pointer");
  impl_->matmul_device(x, batch, y, stream);
}

void DevicePackedWeights::matmul_fixed(const int8_t* x, int64_t batch, int32_t* acc) const {
  SC_CHECK_ARG(batch >= 0, "batch must be >= 0, got ", batch);
  quant::check_fixed_range(x, batch, cols_);
  impl_->matmul_fixed(x, batch, acc);
}

void DevicePackedWeights::matmul_fixed(const int16_t* x, int64_t batch, int32_t* acc) const {
  SC_CHECK_ARG(batch >= 0, "batch must be >= 0, got ", batch);
  quant::check_fixed_range(x, batch, cols_);
  impl_->matmul_fixed(x, batch, acc);
}

}  // namespace sparsecore::cuda
