#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <unordered_set>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/table/admission.h"

namespace sparsecore {
namespace {

std::vector<int64_t> distinct_keys(std::mt19937_64& rng, size_t n, std::unordered_set<int64_t>& used) {
  std::vector<int64_t> keys;
  keys.reserve(n);
  while (keys.size() < n) {
    const auto k = static_cast<int64_t>(rng());
    if (used.insert(k).second) keys.push_back(k);
  }
  return keys;
}

class BloomWidth : public ::testing::TestWithParam<int> {};

// At its capacity the filter reads an id never added as sighted with about the configured
// rate: (1 - e^(-k C / m))^k, which the sizing makes within a few percent of f.
TEST_P(BloomWidth, FalsePositiveRateAtCapacityIsWithinItsBound) {
  std::mt19937_64 rng(std::random_device{}());
  const int64_t capacity = 1'000'000;
  const double fp = 0.01;
  CountingBloom bloom(capacity, fp, GetParam(), rng());
  EXPECT_EQ(bloom.num_hashes(), 7);
  EXPECT_EQ(bloom.num_counters(),
            static_cast<int64_t>(std::ceil(-capacity * std::log(fp) / std::pow(std::log(2.0), 2))));
  std::unordered_set<int64_t> used;
  for (int64_t k : distinct_keys(rng, capacity, used)) EXPECT_GE(bloom.add(k), 1u);
  const std::vector<int64_t> others = distinct_keys(rng, 200'000, used);
  int64_t positives = 0;
  for (int64_t k : others) positives += bloom.estimate(k) > 0;
  const double rate = static_cast<double>(positives) / static_cast<double>(others.size());
  // The bound: 1.25 f (the rate's standard deviation over 200k ids is 0.02 f).
  EXPECT_LE(rate, 1.25 * fp) << rate;
  EXPECT_GE(rate, 0.5 * fp) << rate;  // the filter is not oversized either
}

TEST_P(BloomWidth, CountersSaturateAndNeverUnderCount) {
  std::mt19937_64 rng(std::random_device{}());
  const int bits = GetParam();
  CountingBloom bloom(1000, 0.01, bits, rng());
  const uint32_t max = (1u << bits) - 1;
  EXPECT_EQ(bloom.max_count(), max);
  const int64_t key = static_cast<int64_t>(rng());
  for (uint32_t i = 1; i <= max + 40; ++i) EXPECT_EQ(bloom.add(key), std::min(i, max));
  EXPECT_EQ(bloom.estimate(key), max);
  std::unordered_set<int64_t> used{key};
  for (int64_t k : distinct_keys(rng, 500, used)) {
    const uint32_t times = static_cast<uint32_t>(rng() % 6) + 1;
    for (uint32_t t = 0; t < times; ++t) bloom.add(k);
    EXPECT_GE(bloom.estimate(k), std::min(times, max));
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, BloomWidth, ::testing::Values(4, 8));

// 4-bit counters are packed two to a byte: they must count as 8-bit ones do, capped at 15.
TEST(Bloom, FourBitCountersMatchEightBitOnesCapped) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  CountingBloom narrow(300, 0.05, 4, seed), wide(300, 0.05, 8, seed);
  ASSERT_EQ(narrow.num_counters(), wide.num_counters());
  std::unordered_set<int64_t> used;
  const std::vector<int64_t> keys = distinct_keys(rng, 600, used);
  for (int i = 0; i < 5000; ++i) {
    const int64_t k = keys[rng() % keys.size()];
    narrow.add(k);
    wide.add(k);
  }
  for (int64_t k : keys) EXPECT_EQ(narrow.estimate(k), std::min(wide.estimate(k), 15u));
}

TEST(Admission, ProbabilityDecisionIsASeededHash) {
  std::mt19937_64 rng(std::random_device{}());
  const uint64_t seed = rng();
  int admitted = 0;
  const int n = 100'000;
  for (int i = 0; i < n; ++i) {
    const int64_t key = static_cast<int64_t>(rng());
    const bool a = Admission::probability_admits(0.25, seed, key, 1);
    EXPECT_EQ(a, Admission::probability_admits(0.25, seed, key, 1));
    admitted += a;
  }
  // Binomial(n, 0.25): standard deviation 137; 8 of them.
  EXPECT_NEAR(admitted, n / 4, 1100);
}

TEST(Admission, StateRoundTripsAndDamagedStateIsRefused) {
  std::mt19937_64 rng(std::random_device{}());
  AdmissionConfig config;
  config.count_threshold = 5;
  Admission a(config, rng());
  std::unordered_set<int64_t> used;
  const std::vector<int64_t> keys = distinct_keys(rng, 200, used);
  for (int i = 0; i < 700; ++i) a.sight(keys[rng() % keys.size()]);
  const std::vector<uint8_t> bytes = a.serialize();
  Admission b(config, 0);
  b.deserialize(bytes.data(), bytes.size());
  EXPECT_EQ(b.serialize(), bytes);
  const AdmissionStats sa = a.stats(), sb = b.stats();
  EXPECT_EQ(sa.admitted, sb.admitted);
  EXPECT_EQ(sa.pending, sb.pending);
  EXPECT_EQ(sa.rejected, sb.rejected);

  EXPECT_THROW(b.deserialize(bytes.data(), bytes.size() - 1), InvalidArgument);
  EXPECT_THROW(b.deserialize(bytes.data(), 10), InvalidArgument);
  if (sa.pending >= 2) {
    std::vector<uint8_t> swapped = bytes;  // entries out of order
    std::swap_ranges(swapped.begin() + Admission::kHeaderBytes,
                     swapped.begin() + Admission::kHeaderBytes + Admission::kEntryBytes,
                     swapped.begin() + Admission::kHeaderBytes + Admission::kEntryBytes);
    EXPECT_THROW(b.deserialize(swapped.data(), swapped.size()), InvalidArgument);
  }
  AdmissionConfig bloom_config = config;
  bloom_config.bloom_capacity = 100;
  Admission c(bloom_config, 1);
  EXPECT_THROW(c.deserialize(bytes.data(), bytes.size()), InvalidArgument);  // another mode
  // The refused calls left b as it was.
  EXPECT_EQ(b.serialize(), bytes);
}

TEST(Admission, ConfigValidationNamesTheField) {
  AdmissionConfig c;
  c.count_threshold = 0;
  EXPECT_THROW(c.validate("t"), InvalidArgument);
  c = AdmissionConfig{};
  c.probability = 0.0;
  EXPECT_THROW(c.validate("t"), InvalidArgument);
  c = AdmissionConfig{};
  c.bloom_fp_rate = 1.0;
  EXPECT_THROW(c.validate("t"), InvalidArgument);
  c = AdmissionConfig{};
  c.bloom_counter_bits = 6;
  EXPECT_THROW(c.validate("t"), InvalidArgument);
  c = AdmissionConfig{};
  c.bloom_capacity = 10;
  c.bloom_counter_bits = 4;
  c.count_threshold = 16;
  try {
    c.validate("t");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("count_threshold 16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sparsecore
