// The float shift matmul gives exactly the bits of its documented summation orders
// (sparsecore/quant/detail/shift_kernels.h), on whatever kernel this CPU picks: the GEMV order
// for fewer than 4 rows of x, the GEMM order from 4 on, including x large enough for products
// to overflow.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_matmul.h"

using namespace sparsecore::quant;

namespace {

float weight(const std::vector<uint8_t>& codes, int64_t pc, int64_t r, int64_t c) {
  const uint8_t byte = codes[r * pc + c / 2];
  return code_value((c & 1) ? byte >> 4 : byte & 15u);
}

// Plain loops in the two orders; products are exact, so no FMA question arises here.
float model(const float* x, const std::vector<uint8_t>& codes, float alpha, int64_t r, int64_t cols, bool gemm) {
  const int64_t pc = packed_cols(cols);
  if (gemm) {
    float s = 0.0f;
    for (int64_t c = 0; c < cols; ++c) s += x[c] * weight(codes, pc, r, c);
    return alpha * s;
  }
  const int64_t blocks = cols / 128;
  float p[2][16] = {};
  for (int64_t s = 0; s < blocks; ++s)
    for (int j = 0; j < 16; ++j)
      for (int i = 0; i < 8; ++i) {
        const int64_t c = 128 * s + 8 * j + i;
        p[i & 1][j] += x[c] * weight(codes, pc, r, c);
      }
  float q[16], t8[8], t4[4];
  for (int j = 0; j < 16; ++j) q[j] = p[0][j] + p[1][j];
  for (int i = 0; i < 8; ++i) t8[i] = q[i] + q[i + 8];
  for (int i = 0; i < 4; ++i) t4[i] = t8[i] + t8[i + 4];
  float u = 0.0f;
  for (int64_t c = blocks * 128; c < cols; ++c) u += x[c] * weight(codes, pc, r, c);
  return alpha * (((t4[0] + t4[2]) + (t4[1] + t4[3])) + u);
}

bool same_bits(float a, float b) {
  if (a != a && b != b) return true;  // NaN: any payload
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

}  // namespace

TEST(ShiftMatmulOrder, EveryShapeGivesTheBitsOfItsOrder) {
  std::mt19937 gen(std::random_device{}());
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> byte(0, 255);
  struct Shape {
    int64_t batch, rows, cols;
  };
  for (Shape sh : {Shape{1, 7, 300}, Shape{3, 13, 1025}, Shape{2, 4, 128}, Shape{1, 9, 31}, Shape{4, 11, 257},
                   Shape{64, 13, 130}, Shape{5, 6, 64}, Shape{1, 24, 258}, Shape{1, 28, 256}, Shape{2, 20, 260},
                   Shape{16, 9, 33}, Shape{33, 17, 130}, Shape{50, 24, 7}}) {
    for (float scale : {1.0f, 1e37f}) {  // 1e37 · 64 overflows: the portable kernel runs
      const int64_t pc = packed_cols(sh.cols);
      std::vector<uint8_t> codes(sh.rows * pc);
      for (uint8_t& b : codes) b = static_cast<uint8_t>(byte(gen));
      if (sh.cols % 2)
        for (int64_t r = 0; r < sh.rows; ++r) codes[r * pc + pc - 1] &= 15;
      std::vector<float> alpha(sh.rows), x(sh.batch * sh.cols), y(sh.batch * sh.rows);
      for (float& a : alpha) a = 0.5f + std::abs(normal(gen));
      for (float& v : x) v = normal(gen) * scale;
      shift_matmul(x.data(), sh.batch, codes.data(), alpha.data(), sh.rows, sh.cols, y.data());
      for (int64_t b = 0; b < sh.batch; ++b)
        for (int64_t r = 0; r < sh.rows; ++r) {
          const float want = model(x.data() + b * sh.cols, codes, alpha[r], r, sh.cols, sh.batch >= 4);
          EXPECT_TRUE(same_bits(y[b * sh.rows + r], want))
              << "batch " << sh.batch << " rows " << sh.rows << " cols " << sh.cols << " scale " << scale << ": "
              << y[b * sh.rows + r] << " vs " << want << " (kernel " << shift_matmul_kernel() << ")";
        }
    }
  }
}
