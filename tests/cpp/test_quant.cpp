// C++ API of the quant layer: packing, projection, shift matmul against a plain float loop,
// exact fixed-point shifts, row quantization, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/row_quantization.h"
#include "sparsecore/quant/shift_matmul.h"

using namespace sparsecore;
using namespace sparsecore::quant;

namespace {

struct RandomPow2 {
  std::vector<float> w, alpha;
};

RandomPow2 random_pow2(std::mt19937& gen, int64_t rows, int64_t cols) {
  RandomPow2 m{std::vector<float>(rows * cols), std::vector<float>(rows)};
  std::uniform_real_distribution<float> scale(0.05f, 2.0f);
  std::uniform_int_distribution<int> nibble(0, 15);
  for (int64_t r = 0; r < rows; ++r) {
    m.alpha[r] = scale(gen);
    for (int64_t c = 0; c < cols; ++c) m.w[r * cols + c] = m.alpha[r] * code_value(static_cast<uint8_t>(nibble(gen)));
  }
  return m;
}

}  // namespace

TEST(Quant, PackThenUnpackGivesTheWeightBack) {
  std::mt19937 gen(std::random_device{}());
  for (int64_t cols : {1, 2, 7, 64}) {
    RandomPow2 m = random_pow2(gen, 5, cols);
    std::vector<uint8_t> codes(5 * packed_cols(cols));
    pack_pow2(m.w.data(), m.alpha.data(), 5, cols, codes.data());
    std::vector<float> back(m.w.size());
    unpack_pow2(codes.data(), m.alpha.data(), 5, cols, back.data());
    EXPECT_EQ(back, m.w) << "cols " << cols;
  }
}

TEST(Quant, ShiftMatmulMatchesAFloatLoop) {
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal;
  for (int64_t batch : {1, 3, 9}) {
    const int64_t rows = 11, cols = 77;
    RandomPow2 m = random_pow2(gen, rows, cols);
    std::vector<uint8_t> codes(rows * packed_cols(cols));
    pack_pow2(m.w.data(), m.alpha.data(), rows, cols, codes.data());
    std::vector<float> x(batch * cols), y(batch * rows);
    for (float& v : x) v = normal(gen);
    shift_matmul(x.data(), batch, codes.data(), m.alpha.data(), rows, cols, y.data());
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < rows; ++r) {
        double ref = 0, mag = 0;
        for (int64_t c = 0; c < cols; ++c) {
          ref += double(x[b * cols + c]) * m.w[r * cols + c];
          mag += std::fabs(double(x[b * cols + c]) * m.w[r * cols + c]);
        }
        EXPECT_NEAR(y[b * rows + r], ref, 1e-5 * mag + 1e-30) << "batch " << batch;
      }
  }
}

TEST(Quant, FixedPointShiftsAreExact) {
  std::mt19937 gen(std::random_device{}());
  const int64_t rows = 6, cols = 45, batch = 2;
  RandomPow2 m = random_pow2(gen, rows, cols);
  std::vector<uint8_t> codes(rows * packed_cols(cols));
  pack_pow2(m.w.data(), m.alpha.data(), rows, cols, codes.data());
  std::uniform_int_distribution<int> value(-128, 127);
  std::vector<int8_t> x(batch * cols);
  for (int8_t& v : x) v = static_cast<int8_t>(value(gen));
  std::vector<int32_t> acc(batch * rows);
  shift_matmul_fixed(x.data(), batch, codes.data(), rows, cols, acc.data());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t r = 0; r < rows; ++r) {
      int64_t ref = 0;
      for (int64_t c = 0; c < cols; ++c)
        ref += int64_t{x[b * cols + c]} * static_cast<int64_t>(m.w[r * cols + c] / m.alpha[r]);
      EXPECT_EQ(acc[b * rows + r], ref);
    }
}

TEST(Quant, ProjectionLandsOnTheCodebook) {
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal;
  std::vector<float> w(4 * 30), projected(w.size()), alpha(4);
  for (float& v : w) v = normal(gen);
  std::vector<float> codebook = {-4, -2, -1, 0, 1, 2, 4};
  project_pow2(w.data(), 4, 30, codebook, true, 100, projected.data(), alpha.data());
  std::vector<uint8_t> codes(4 * 15);
  EXPECT_NO_THROW(pack_pow2(projected.data(), alpha.data(), 4, 30, codes.data()));
}

TEST(Quant, BadInputThrowsInvalidArgument) {
  std::vector<float> w = {1.0f, 3.0f}, alpha = {1.0f}, out(2);
  std::vector<uint8_t> codes(1);
  EXPECT_THROW(pack_pow2(w.data(), alpha.data(), 1, 2, codes.data()), InvalidArgument);  // 3 is not 2^k
  alpha[0] = 0.0f;
  EXPECT_THROW(unpack_pow2(codes.data(), alpha.data(), 1, 2, out.data()), InvalidArgument);
  w[0] = NAN;
  EXPECT_THROW(project_pow2(w.data(), 1, 2, {-1, 0, 1}, false, 10, out.data(), alpha.data()), InvalidArgument);
  EXPECT_THROW(project_pow2(w.data(), 1, 2, {1, 0}, false, 10, out.data(), alpha.data()), InvalidArgument);
  EXPECT_THROW(parse_row_format("int3"), InvalidArgument);
}

TEST(Quant, RowQuantizationRoundTripsWithinHalfAStep) {
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal;
  const int64_t n = 8, dim = 18;
  std::vector<float> x(n * dim), back(n * dim);
  for (float& v : x) v = normal(gen);
  for (RowFormat f : {RowFormat::kFp16, RowFormat::kInt8, RowFormat::kInt4}) {
    std::vector<uint8_t> q(n * quantized_row_bytes(f, dim));
    quantize_rows(x.data(), n, dim, f, q.data());
    dequantize_rows(q.data(), n, dim, f, back.data());
    for (int64_t r = 0; r < n; ++r) {
      float lo = x[r * dim], hi = lo;
      for (int64_t d = 0; d < dim; ++d) lo = std::min(lo, x[r * dim + d]), hi = std::max(hi, x[r * dim + d]);
      float step = f == RowFormat::kInt8 ? (hi - lo) / 255 : f == RowFormat::kInt4 ? (hi - lo) / 15 : 0.0f;
      for (int64_t d = 0; d < dim; ++d) {
        float tol = f == RowFormat::kFp16 ? std::fabs(x[r * dim + d]) / 1024 : step * 0.5001f + 1e-6f;
        EXPECT_NEAR(back[r * dim + d], x[r * dim + d], tol) << row_format_name(f);
      }
    }
  }
  EXPECT_EQ(half_to_float(float_to_half(65504.0f)), 65504.0f);
  EXPECT_EQ(float_to_half(1.0f), 0x3C00);
}
