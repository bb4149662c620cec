// Initial values of new rows: a pure function of (table seed, key, element index).
//
// A counter-based generator (splitmix64 over the triple) replaces a stateful RNG, so the
// initial row of a key is the same on CPU and CUDA, for any insertion order, thread count
// or sharding. Truncated normal redraws beyond 2 sigma with the next counter (deterministic).
#pragma once

#include <cmath>
#include <cstdint>

#include "sparsecore/core/hash.h"
#include "sparsecore/core/host_device.h"
#include "sparsecore/core/json.h"

namespace sparsecore {

enum class InitKind : uint8_t { kZeros = 0, kConstant = 1, kUniform = 2, kNormal = 3, kTruncatedNormal = 4 };

struct InitializerConfig {
  InitKind kind = InitKind::kNormal;
  // constant: a; uniform: [a, b); normal / truncated normal: mean a, stddev b
  float a = 0.0f;
  float b = 0.01f;

  void validate() const;  // throws InvalidArgument (stddev < 0, low > high, non-finite)
  Json to_json() const;
  static InitializerConfig from_json(const Json& j);
};

namespace init_detail {

// Uniform in [0, 1) from the top 24 bits: exactly representable in float32.
SC_HOST_DEVICE float unit_uniform(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

SC_HOST_DEVICE uint64_t draw(uint64_t row_seed, uint64_t counter) {
  return splitmix64(row_seed + counter * 0x9e3779b97f4a7c15ULL);
}

// Standard normal by Box-Muller on two counter draws; u1 in (0, 1] so log is finite.
SC_HOST_DEVICE float standard_normal(uint64_t row_seed, uint64_t counter) {
  uint64_t r = draw(row_seed, counter);
  float u1 = (static_cast<float>(r >> 40) + 1.0f) * (1.0f / 16777216.0f);
  float u2 = static_cast<float>(r & 0xFFFFFFULL) * (1.0f / 16777216.0f);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530717958647692f * u2);
}

}  // namespace init_detail

// Seed of one row: every element of the row draws from counters of this value.
SC_HOST_DEVICE uint64_t row_seed(uint64_t table_seed, int64_t key) {
  return hash_combine(table_seed, static_cast<uint64_t>(key));
}

// Fills w[0..dim) with the initial weights of `key`.
SC_HOST_DEVICE void initialize_row(const InitializerConfig& c, uint64_t table_seed, int64_t key, float* w, int dim) {
  using namespace init_detail;
  uint64_t rs = row_seed(table_seed, key);
  for (int i = 0; i < dim; ++i) {
    float v = 0.0f;
    switch (c.kind) {
      case InitKind::kZeros:
        v = 0.0f;
        break;
      case InitKind::kConstant:
        v = c.a;
        break;
      case InitKind::kUniform:
        v = c.a + (c.b - c.a) * unit_uniform(draw(rs, static_cast<uint64_t>(i)));
        break;
      case InitKind::kNormal:
        v = c.a + c.b * standard_normal(rs, static_cast<uint64_t>(i));
        break;
      case InitKind::kTruncatedNormal: {
        // Counter (i, attempt) -> i + attempt * 2^32; the 64th attempt falls back to the mean
        // (probability 0.046^64: never in practice, but the loop must be bounded on a GPU).
        float z = 0.0f;
        for (uint64_t attempt = 0; attempt < 64; ++attempt) {
          float cand = standard_normal(rs, static_cast<uint64_t>(i) + (attempt << 32));
          if (std::fabs(cand) <= 2.0f) {
            z = cand;
            break;
          }
        }
        v = c.a + c.b * z;
        break;
      }
    }
    w[i] = v;
  }
}

}  // namespace sparsecore
