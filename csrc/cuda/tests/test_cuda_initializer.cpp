// The initial-value generator's kernel code path (initialize_row with the device's rounded
// intrinsics, DeviceFloatOps) compiled here for the CPU through the emulation layer, against
// the CPU engine's path (HostFloatOps): the same bits for every key, every 24-bit input of the
// log and cos approximations, and every initializer kind.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "device_float_ops.cuh"
#include "sparsecore/table/initializer.h"

namespace sparsecore::cuda::testing {
namespace {

using Device = emulated::DeviceFloatOps;
using Host = init_detail::HostFloatOps;

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

TEST(CudaInitializer, LogMatchesBitsAndIsAccurateForEveryInput) {
  double worst = 0.0;
  for (uint32_t n = 1; n <= (1u << 24); ++n) {
    const float host = init_detail::log_of_fraction24<Host>(n);
    const float dev = init_detail::log_of_fraction24<Device>(n);
    ASSERT_EQ(bits_of(host), bits_of(dev)) << "ln(" << n << " / 2^24)";
    const double exact = std::log(static_cast<double>(n) / 16777216.0);
    worst = std::fmax(worst, std::fabs(host - exact));
  }
  EXPECT_LT(worst, 4e-6);  // float rounding of values up to 16.6 in magnitude
  EXPECT_EQ(init_detail::log_of_fraction24<Host>(1u << 24), 0.0f);
}

TEST(CudaInitializer, CosMatchesBitsAndIsAccurateForEveryInput) {
  double worst = 0.0;
  for (uint32_t j = 0; j < (1u << 24); ++j) {
    const float host = init_detail::cos_of_turn24<Host>(j);
    const float dev = init_detail::cos_of_turn24<Device>(j);
    ASSERT_EQ(bits_of(host), bits_of(dev)) << "cos(2 pi " << j << " / 2^24)";
    const double exact = std::cos(6.283185307179586 * static_cast<double>(j) / 16777216.0);
    worst = std::fmax(worst, std::fabs(host - exact));
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(init_detail::cos_of_turn24<Host>(0), 1.0f);
  EXPECT_EQ(init_detail::cos_of_turn24<Host>(1u << 23), -1.0f);
}

TEST(CudaInitializer, RowsMatchBitsForEveryKindOverManyKeys) {
  const InitializerConfig configs[] = {
      {InitKind::kNormal, 0.0f, 0.01f},         {InitKind::kNormal, 1.0f, 2.0f},
      {InitKind::kTruncatedNormal, 0.0f, 0.5f}, {InitKind::kTruncatedNormal, -3.0f, 0.01f},
      {InitKind::kUniform, -0.5f, 0.25f},       {InitKind::kConstant, 0.25f, 0.0f},
  };
  const int dim = 19;
  std::vector<float> host(dim), dev(dim);
  for (const auto& c : configs) {
    for (uint64_t seed : {0ull, 7ull, 0xdeadbeefcafef00dull}) {
      for (int64_t i = 0; i < 20000; ++i) {
        // Small, negative, huge and scattered keys.
        const int64_t key = (i % 4 == 0)   ? i
                            : (i % 4 == 1) ? -i
                            : (i % 4 == 2) ? INT64_MAX - i
                                           : static_cast<int64_t>(splitmix64(i));
        initialize_row<Host>(c, seed, key, host.data(), dim);
        initialize_row<Device>(c, seed, key, dev.data(), dim);
        for (int d = 0; d < dim; ++d)
          ASSERT_EQ(bits_of(host[d]), bits_of(dev[d])) << "kind " << static_cast<int>(c.kind) << " key " << key;
      }
    }
  }
}

// The normal draws themselves: mean 0, std 1 and the tails of a normal (a few sigma), with
// bounds far outside what 2^20 samples could miss by chance.
TEST(CudaInitializer, StandardNormalHasTheMomentsAndTailsOfANormal) {
  const int n = 1 << 20;
  double sum = 0, sum2 = 0;
  int beyond1 = 0, beyond3 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = init_detail::standard_normal<Device>(12345, static_cast<uint64_t>(i));
    sum += z;
    sum2 += z * z;
    beyond1 += std::fabs(z) > 1.0;
    beyond3 += std::fabs(z) > 3.0;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(std::sqrt(sum2 / n), 1.0, 0.01);
  EXPECT_NEAR(static_cast<double>(beyond1) / n, 0.3173, 0.005);
  EXPECT_NEAR(static_cast<double>(beyond3) / n, 0.0027, 0.0005);
}

}  // namespace
}  // namespace sparsecore::cuda::testing
