#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "sparsecore/core/thread_pool.h"
#include "sparsecore/serving/dense_linear.h"

namespace sparsecore::serving {
namespace {

struct Layer {
  int64_t in, out;
  std::vector<float> w, bias, packed;
  Layer(int64_t in_, int64_t out_, std::mt19937& rng) : in(in_), out(out_), w(in_ * out_), bias(out_) {
    std::normal_distribution<float> normal;
    for (auto& v : w) v = normal(rng) / std::sqrt(static_cast<float>(in));
    for (auto& v : bias) v = normal(rng);
    packed = pack_linear(w.data(), out, in);
  }
  std::vector<float> run(const std::vector<float>& x, int64_t batch) const {
    std::vector<float> y(static_cast<size_t>(batch * out), -1.0f);
    linear_packed(x.data(), batch, packed.data(), bias.data(), in, out, y.data());
    return y;
  }
};

std::vector<float> random_x(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = normal(rng);
  return x;
}

class ThreadCount {
 public:
  explicit ThreadCount(int n) : previous_(ThreadPool::global().num_threads()) { ThreadPool::set_global_num_threads(n); }
  ~ThreadCount() { ThreadPool::set_global_num_threads(previous_); }

 private:
  int previous_;
};

// Within float32 rounding of the exact sum: a few ulps of Σ|terms| per output.
TEST(DenseLinear, MatchesTheDoubleReferenceOnEveryShape) {
  std::mt19937 rng(7);
  const int64_t shapes[][2] = {{1, 1}, {3, 1}, {414, 200}, {200, 80}, {80, 1}, {17, 33}, {5, 16}, {64, 15}};
  for (const auto& s : shapes)
    for (int64_t batch : {1, 3, 4, 5, 16, 37, 300}) {
      const Layer l(s[0], s[1], rng);
      const auto x = random_x(batch * l.in, rng);
      const auto y = l.run(x, batch);
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t o = 0; o < l.out; ++o) {
          double exact = l.bias[o], magnitude = std::fabs(l.bias[o]);
          for (int64_t i = 0; i < l.in; ++i) {
            exact += static_cast<double>(x[b * l.in + i]) * l.w[o * l.in + i];
            magnitude += std::fabs(static_cast<double>(x[b * l.in + i]) * l.w[o * l.in + i]);
          }
          ASSERT_NEAR(y[b * l.out + o], exact, 1e-6 * magnitude + 1e-30)
              << "in " << l.in << " out " << l.out << " batch " << batch << " row " << b << " output " << o;
        }
    }
}

TEST(DenseLinear, EqualBitForBitAcrossThreadCountsAndBatchCompositions) {
  std::mt19937 rng(11);
  const Layer l(414, 200, rng);
  const int64_t batch = 517;  // large enough for the compute pool, not a multiple of any tile
  const auto x = random_x(batch * l.in, rng);
  std::vector<float> first;
  for (int threads : {1, 2, 3, 4}) {
    ThreadCount scope(threads);
    const auto y = l.run(x, batch);
    if (first.empty()) first = y;
    ASSERT_EQ(std::memcmp(y.data(), first.data(), sizeof(float) * y.size()), 0) << threads << " threads";
  }
  // A row alone (the GEMV path) and inside a shorter batch gives the same bits as in the batch.
  for (int64_t b : {int64_t{0}, int64_t{5}, batch - 1}) {
    const std::vector<float> row(x.begin() + b * l.in, x.begin() + (b + 1) * l.in);
    const auto alone = l.run(row, 1);
    ASSERT_EQ(std::memcmp(alone.data(), first.data() + b * l.out, sizeof(float) * l.out), 0) << "row " << b;
  }
  const std::vector<float> head(x.begin(), x.begin() + 7 * l.in);
  const auto seven = l.run(head, 7);
  ASSERT_EQ(std::memcmp(seven.data(), first.data(), sizeof(float) * seven.size()), 0);
}

TEST(DenseLinear, PacksPanelsOfSixteenOutputsZeroPadded) {
  std::vector<float> w(17 * 2);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i + 1);
  const auto p = pack_linear(w.data(), 17, 2);
  ASSERT_EQ(p.size(), 2u * 2u * 16u);
  EXPECT_EQ(p[0], w[0]);               // output 0, input 0
  EXPECT_EQ(p[16 + 3], w[3 * 2 + 1]);  // output 3, input 1
  EXPECT_EQ(p[2 * 16], w[16 * 2]);     // output 16 opens the second panel
  EXPECT_EQ(p[2 * 16 + 1], 0.0f);      // padding
  EXPECT_NE(std::string(linear_kernel_name()), "");
}

}  // namespace
}  // namespace sparsecore::serving
