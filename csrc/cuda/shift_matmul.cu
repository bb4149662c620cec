// Host side of cuda::DevicePackedWeights: weights kept on the device, launches of the
// shift-matmul kernels. Compiled by nvcc (namespace device) and by g++ through the emulation
// layer (namespace emulated).
#include <algorithm>

#include "device_collection_impl.h"  // device::unavailable_reason
#include "shift_matmul.cuh"
#include "shift_matmul_impl.h"

namespace sparsecore::cuda::SC_BACKEND_NS {
namespace {

// Batches below this run the warp-per-row kernel (codes streamed once per batch row);
// larger float batches the tiled GEMM (codes decoded once per 64 batch rows).
constexpr int64_t kGemmMinBatch = 4;

template <typename X>
bool words_path(const X* x, int64_t cols) {
  return cols % 8 == 0 && reinterpret_cast<uintptr_t>(x) % alignof(ActivationPack<X>) == 0;
}

class PackedWeights final : public DevicePackedWeightsImpl {
 public:
  PackedWeights(const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols, LaunchLimits limits)
      : rows_(rows), cols_(cols), limits_(limits) {
    codes_.upload(codes, static_cast<size_t>(rows * quant::packed_cols(cols)));
    alpha_.upload(alpha, static_cast<size_t>(rows));
  }

  int64_t device_bytes() const override {
    return static_cast<int64_t>(codes_.size() * sizeof(uint8_t) + alpha_.size() * sizeof(float));
  }

  void matmul(const float* x, int64_t batch, float* y) const override {
    DeviceBuffer<float> dx, dy(static_cast<size_t>(batch * rows_));
    dx.upload(x, static_cast<size_t>(batch * cols_));
    matmul_device(dx.data(), batch, dy.data(), nullptr);
    synchronize();
    dy.download(y, dy.size());
  }

  void matmul_device(const float* x, int64_t batch, float* y, void* stream) const override {
    if (batch == 0 || rows_ == 0) return;
    if (batch >= kGemmMinBatch) {
      const dim3 grid = shift_gemm_grid(rows_, batch, limits_.max_blocks);
      SC_LAUNCH(grid, dim3(kShiftGemmThreads), 0, as_stream(stream), shift_gemm_kernel)
      (x, batch, codes_.data(), alpha_.data(), rows_, cols_, y);
      SC_CHECK_LAUNCH();
      return;
    }
    launch_gemv<float, float>(x, batch, y, stream);
  }

  void matmul_fixed(const int8_t* x, int64_t batch, int32_t* acc) const override { fixed(x, batch, acc); }
  void matmul_fixed(const int16_t* x, int64_t batch, int32_t* acc) const override { fixed(x, batch, acc); }

 private:
  static cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

  template <typename X, typename Acc>
  void launch_gemv(const X* x, int64_t batch, Acc* y, void* stream) const {
    const int threads = limits_.block_threads;
    const int64_t warps = batch * rows_;
    int64_t blocks = (warps * 32 + threads - 1) / threads;
    if (limits_.max_blocks > 0) blocks = std::min<int64_t>(blocks, limits_.max_blocks);
    blocks = std::min<int64_t>(blocks, int64_t{1} << 30);
    const dim3 grid(static_cast<unsigned>(blocks)), block(static_cast<unsigned>(threads));
    if (words_path(x, cols_)) {
      SC_LAUNCH(grid, block, 0, as_stream(stream), shift_gemv_kernel<X, Acc, true>)
      (x, batch, codes_.data(), alpha_.data(), rows_, cols_, y);
    } else {
      SC_LAUNCH(grid, block, 0, as_stream(stream), shift_gemv_kernel<X, Acc, false>)
      (x, batch, codes_.data(), alpha_.data(), rows_, cols_, y);
    }
    SC_CHECK_LAUNCH();
  }

  template <typename X>
  void fixed(const X* x, int64_t batch, int32_t* acc) const {
    if (batch == 0 || rows_ == 0) return;
    DeviceBuffer<X> dx;
    DeviceBuffer<int32_t> dacc(static_cast<size_t>(batch * rows_));
    dx.upload(x, static_cast<size_t>(batch * cols_));
    launch_gemv<X, int32_t>(dx.data(), batch, dacc.data(), nullptr);
    synchronize();
    dacc.download(acc, dacc.size());
  }

  int64_t rows_, cols_;
  LaunchLimits limits_;
  DeviceBuffer<uint8_t> codes_;  // (rows, packed_cols(cols))
  DeviceBuffer<float> alpha_;    // (rows)
};

}  // namespace

std::unique_ptr<DevicePackedWeightsImpl> make_packed_weights(const uint8_t* codes, const float* alpha, int64_t rows,
                                                             int64_t cols, LaunchLimits limits) {
#if defined(__CUDACC__)
  std::string reason = unavailable_reason();
  if (!reason.empty()) throw CudaError(reason);
#endif
  return std::make_unique<PackedWeights>(codes, alpha, rows, cols, limits);
}

}  // namespace sparsecore::cuda::SC_BACKEND_NS
