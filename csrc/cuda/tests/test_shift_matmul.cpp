// cuda::DevicePackedWeights (the CUDA shift matmul) against the CPU shift matmul on random
// packed weights and activations: odd shapes, one row, one column, both GEMV load paths, the
// tiled GEMM, exact fixed point, and bad input.
#include <cmath>
#include <cstring>

#include "cuda_test_util.h"
#include "sparsecore/cuda/device_packed_weights.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_matmul.h"

namespace sparsecore::cuda::testing {
namespace {

struct Packed {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> codes;  // every nibble value, including the unused "negative zero" 8
  std::vector<float> alpha;
};

Packed random_packed(int64_t rows, int64_t cols) {
  Packed p{rows, cols, std::vector<uint8_t>(rows * quant::packed_cols(cols)), std::vector<float>(rows)};
  for (auto& byte : p.codes) byte = static_cast<uint8_t>(rng()());
  if (cols % 2) {  // an odd last column leaves the high nibble 0 (the packed format)
    for (int64_t r = 0; r < rows; ++r) p.codes[(r + 1) * quant::packed_cols(cols) - 1] &= 0x0f;
  }
  std::uniform_real_distribution<float> a(0.01f, 2.0f);
  for (auto& v : p.alpha) v = a(rng());
  return p;
}

std::vector<float> random_x(int64_t batch, int64_t cols) {
  std::vector<float> x(batch * cols);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (auto& v : x) v = n(rng());
  return x;
}

template <typename T>
std::vector<T> random_fixed(int64_t batch, int64_t cols, int limit) {
  std::vector<T> x(batch * cols);
  std::uniform_int_distribution<int> n(-limit, limit);
  for (auto& v : x) v = static_cast<T>(n(rng()));
  return x;
}

// The float results may differ from the CPU's only by summation order: the bound is a few
// float32 ulps of Σ|x · w| per output.
void expect_matches_cpu(const Packed& p, const std::vector<float>& x, int64_t batch, const std::vector<float>& got,
                        const std::string& what) {
  std::vector<float> want(batch * p.rows);
  quant::shift_matmul(x.data(), batch, p.codes.data(), p.alpha.data(), p.rows, p.cols, want.data());
  ASSERT_EQ(got.size(), want.size()) << what;
  const int64_t pc = quant::packed_cols(p.cols);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t r = 0; r < p.rows; ++r) {
      double magnitude = 0.0;
      for (int64_t c = 0; c < p.cols; ++c) {
        const uint8_t byte = p.codes[r * pc + c / 2];
        magnitude += std::fabs(double{x[b * p.cols + c]} * quant::code_value(c % 2 ? byte >> 4 : byte & 15));
      }
      const double tol = 2e-6 * (magnitude * p.alpha[r] + 1e-30) * std::sqrt(double(p.cols) + 1.0) + 1e-30;
      ASSERT_NEAR(got[b * p.rows + r], want[b * p.rows + r], tol)
          << what << ": y[" << b << ", " << r << "] of a (" << p.rows << ", " << p.cols << ") weight, batch " << batch;
    }
  }
}

class CudaShiftMatmul : public ::testing::TestWithParam<Backend> {
 protected:
  DevicePackedWeights upload(const Packed& p) const {
    return DevicePackedWeights(p.codes.data(), p.alpha.data(), p.rows, p.cols, GetParam(), test_limits(GetParam()));
  }
  // A fresh random weight and x of this shape through the device, compared with the CPU.
  void check_float(int64_t batch, int64_t rows, int64_t cols, const std::string& what) const {
    Packed p = random_packed(rows, cols);
    std::vector<float> x = random_x(batch, cols), y(batch * rows, NAN);
    upload(p).matmul(x.data(), batch, y.data());
    expect_matches_cpu(p, x, batch, y, what);
  }
};

TEST_P(CudaShiftMatmul, GemvMatchesCpuOnOddShapes) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  // cols % 8 == 0 take the word loads, the others the byte loads; rows around a warp count.
  const int64_t shapes[][2] = {{1, 1}, {1, 9}, {7, 1}, {33, 8}, {5, 63}, {31, 64}, {2, 257}, {40, 200}, {3, 1032}};
  for (auto [rows, cols] : shapes) {
    for (int64_t batch : {1, 2, 3}) check_float(batch, rows, cols, "gemv");
  }
}

TEST_P(CudaShiftMatmul, TiledGemmMatchesCpuAcrossTileEdges) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  // Batches and rows just below, at and past the 64 tile; cols past the 32-column step.
  // 300 batch rows are 5 tiles: under the emulator's 4-block cap a block strides to a 5th.
  const int64_t cases[][3] = {{4, 1, 1}, {5, 3, 33}, {64, 64, 32}, {65, 70, 31}, {70, 1, 96}, {9, 130, 7}, {300, 5, 9}};
  for (auto [batch, rows, cols] : cases) check_float(batch, rows, cols, "gemm");
}

TEST_P(CudaShiftMatmul, RandomShapesMatchCpu) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t batch = 1 + static_cast<int64_t>(rng()() % 9), rows = 1 + static_cast<int64_t>(rng()() % 80);
    const int64_t cols = 1 + static_cast<int64_t>(rng()() % 150);
    check_float(batch, rows, cols, "random shape");
  }
}

TEST_P(CudaShiftMatmul, FixedPointSumsEqualCpuExactly) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 37, 64}, {3, 5, 33}, {6, 40, 8}};
  for (auto [batch, rows, cols] : shapes) {
    Packed p = random_packed(rows, cols);
    DevicePackedWeights w = upload(p);
    auto x8 = random_fixed<int8_t>(batch, cols, 127);
    auto x16 = random_fixed<int16_t>(batch, cols, 30000);
    std::vector<int32_t> got(batch * rows), want(batch * rows);
    w.matmul_fixed(x8.data(), batch, got.data());
    quant::shift_matmul_fixed(x8.data(), batch, p.codes.data(), rows, cols, want.data());
    EXPECT_EQ(got, want) << "int8, batch " << batch << ", (" << rows << ", " << cols << ")";
    w.matmul_fixed(x16.data(), batch, got.data());
    quant::shift_matmul_fixed(x16.data(), batch, p.codes.data(), rows, cols, want.data());
    EXPECT_EQ(got, want) << "int16, batch " << batch << ", (" << rows << ", " << cols << ")";
  }
}

TEST_P(CudaShiftMatmul, DevicePointerCallReadsUnalignedActivations) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  if (GetParam() == Backend::kDevice) GTEST_SKIP() << "device pointers from the test need the CUDA runtime";
  // Under the emulator device memory is host memory: x one float past an aligned start
  // forces the byte loads even though cols % 8 == 0.
  Packed p = random_packed(19, 16);
  std::vector<float> storage = random_x(1, 17), y(19, NAN);
  std::vector<float> x(storage.begin() + 1, storage.end());
  upload(p).matmul_device(storage.data() + 1, 1, y.data());
  expect_matches_cpu(p, x, 1, y, "unaligned x");
}

TEST_P(CudaShiftMatmul, EmptyShapesGiveEmptyOrZeroResults) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  Packed none = random_packed(3, 0);
  std::vector<float> y(2 * 3, NAN);
  upload(none).matmul(nullptr, 2, y.data());
  EXPECT_EQ(y, std::vector<float>(6, 0.0f));
  Packed p = random_packed(4, 5);
  upload(p).matmul(nullptr, 0, nullptr);
  Packed no_rows = random_packed(0, 5);
  std::vector<float> x = random_x(2, 5);
  upload(no_rows).matmul(x.data(), 2, nullptr);
}

TEST_P(CudaShiftMatmul, BadInputIsRefusedBeforeTheDevice) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  Packed p = random_packed(4, 6);
  p.alpha[2] = 0.0f;
  EXPECT_THROW(upload(p), InvalidArgument);
  p.alpha[2] = NAN;
  EXPECT_THROW(upload(p), InvalidArgument);
  p.alpha[2] = 1.0f;
  EXPECT_THROW(upload(p).matmul(nullptr, -1, nullptr), InvalidArgument);
  // 2048 · 32767 · 64 > 2^31 − 1: refused, as the CPU refuses it.
  Packed wide = random_packed(3, 2048);
  std::vector<int16_t> big(2048, 32767);
  std::vector<int32_t> acc(3);
  EXPECT_THROW(upload(wide).matmul_fixed(big.data(), 1, acc.data()), InvalidArgument);
  EXPECT_THROW(DevicePackedWeights(p.codes.data(), p.alpha.data(), 4, 6, GetParam(), LaunchLimits{48, 0}),
               InvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaShiftMatmul, ::testing::Values(Backend::kEmulated, Backend::kDevice),
                         backend_name);

TEST(CudaShiftMatmulDevice, WithoutADeviceConstructionSaysSo) {
  if (device_available()) GTEST_SKIP() << "a device is present";
  Packed p = random_packed(2, 2);
  try {
    DevicePackedWeights w(p.codes.data(), p.alpha.data(), 2, 2, Backend::kDevice);
    FAIL() << "expected CudaError";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparsecore::cuda::testing
