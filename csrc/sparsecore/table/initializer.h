// Initial values of new rows: a pure function of (table seed, key, element index).
//
// A counter-based generator (splitmix64 over the triple) replaces a stateful RNG, so the
// initial row of a key is the same on CPU and CUDA, for any insertion order, thread count
// or sharding. Truncated normal redraws beyond 2 sigma with the next counter (deterministic).
//
// Bit-exact on every backend: the float arithmetic is only +, -, *, / and sqrt, each rounded
// once to nearest as IEEE 754 specifies, never fused into an FMA, and log/cos are fixed
// polynomials over integer range reductions (no libm: glibc's logf/cosf and CUDA's differ in
// the last bits). Every function takes the arithmetic as a policy `Ops` with static add, sub,
// mul, div and sqrt: HostFloatOps here, the device's __fadd_rn family in the kernels
// (csrc/cuda/device_float_ops.cuh). tests/test_initial_values.py recomputes them in NumPy.
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

// Correctly rounded float arithmetic on the host, whatever the compiler's contraction
// setting: each operation runs in double and is rounded to float once. For +, -, *, / and
// sqrt of floats, double's 53 bits (>= 2 * 24 + 2) make the double rounding innocuous, so the
// result is the IEEE float result; a product of two floats is exact in double, so fusing it
// into a following double add could not change it either.
struct HostFloatOps {
  SC_HOST_DEVICE static float add(float a, float b) { return static_cast<float>(static_cast<double>(a) + b); }
  SC_HOST_DEVICE static float sub(float a, float b) { return static_cast<float>(static_cast<double>(a) - b); }
  SC_HOST_DEVICE static float mul(float a, float b) { return static_cast<float>(static_cast<double>(a) * b); }
  SC_HOST_DEVICE static float div(float a, float b) { return static_cast<float>(static_cast<double>(a) / b); }
  SC_HOST_DEVICE static float sqrt(float a) { return static_cast<float>(std::sqrt(static_cast<double>(a))); }
};

// Uniform in [0, 1) from the top 24 bits: exactly representable in float32.
SC_HOST_DEVICE float unit_uniform(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

SC_HOST_DEVICE uint64_t draw(uint64_t row_seed, uint64_t counter) {
  return splitmix64(row_seed + counter * 0x9e3779b97f4a7c15ULL);
}

// Index of the highest set bit of n > 0 (integer only).
SC_HOST_DEVICE int highest_bit(uint32_t n) {
  int e = 0;
  while (n >>= 1) ++e;
  return e;
}

// ln(n / 2^24) for n in [1, 2^24]. n = m * 2^e with m in [sqrt(1/2), sqrt(2)) (exact: n has at
// most 25 bits and e comes from the integer), then ln m = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| < 0.172, by its series to s^11 (truncation below 1e-9), and e * ln 2 with ln 2 split so
// that e * ln2_hi is exact.
template <typename Ops>
SC_HOST_DEVICE float log_of_fraction24(uint32_t n) {
  int e = highest_bit(n);
  float m = Ops::div(static_cast<float>(n), static_cast<float>(1u << e));  // exact, in [1, 2)
  if (m > 1.41421356f) {
    m = Ops::mul(m, 0.5f);  // exact
    ++e;
  }
  const float s = Ops::div(Ops::sub(m, 1.0f), Ops::add(m, 1.0f));
  const float s2 = Ops::mul(s, s);
  float p = 1.0f / 11.0f;
  p = Ops::add(1.0f / 9.0f, Ops::mul(s2, p));
  p = Ops::add(1.0f / 7.0f, Ops::mul(s2, p));
  p = Ops::add(1.0f / 5.0f, Ops::mul(s2, p));
  p = Ops::add(1.0f / 3.0f, Ops::mul(s2, p));
  const float two_s = Ops::add(s, s);
  const float log_m = Ops::add(two_s, Ops::mul(two_s, Ops::mul(s2, p)));
  const float k = static_cast<float>(e - 24);
  constexpr float kLn2Hi = 0.693145751953125f;       // 16 significant bits: k * kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723e-6f;  // ln 2 - kLn2Hi
  return Ops::add(Ops::mul(k, kLn2Hi), Ops::add(Ops::mul(k, kLn2Lo), log_m));
}

// cos(2 pi j / 2^24) for j in [0, 2^24): the quadrant and the reflection about pi/4 come from
// the integer, so the polynomials (Taylor to x^10 / x^9, truncation below 1e-9) only see
// x in [0, pi/4].
template <typename Ops>
SC_HOST_DEVICE float cos_of_turn24(uint32_t j) {
  const uint32_t quadrant = j >> 22;
  uint32_t f = j & 0x3FFFFFu;           // angle within the quadrant, in units of (pi/2) / 2^22
  bool use_sin = (quadrant & 1u) != 0;  // cos(pi/2 + t) = -sin t, cos(3pi/2 + t) = sin t
  const bool negate = quadrant == 1 || quadrant == 2;
  if (f > (1u << 21)) {  // t > pi/4: sin t = cos(pi/2 - t) and vice versa
    f = (1u << 22) - f;
    use_sin = !use_sin;
  }
  constexpr float kUnit = 3.74507028e-7f;  // (pi / 2) / 2^22
  const float x = Ops::mul(static_cast<float>(f), kUnit);
  const float x2 = Ops::mul(x, x);
  float r;
  if (use_sin) {
    float p = 1.0f / 362880.0f;
    p = Ops::sub(1.0f / 5040.0f, Ops::mul(x2, p));
    p = Ops::sub(1.0f / 120.0f, Ops::mul(x2, p));
    p = Ops::sub(1.0f / 6.0f, Ops::mul(x2, p));
    r = Ops::sub(x, Ops::mul(x, Ops::mul(x2, p)));
  } else {
    float p = 1.0f / 3628800.0f;
    p = Ops::sub(1.0f / 40320.0f, Ops::mul(x2, p));
    p = Ops::sub(1.0f / 720.0f, Ops::mul(x2, p));
    p = Ops::sub(1.0f / 24.0f, Ops::mul(x2, p));
    p = Ops::sub(0.5f, Ops::mul(x2, p));
    r = Ops::sub(1.0f, Ops::mul(x2, p));
  }
  return negate ? -r : r;
}

// Standard normal by Box-Muller on two 24-bit halves of one counter draw; u1 in (0, 1] so
// the log is finite (|z| <= sqrt(48 ln 2) = 5.77).
template <typename Ops>
SC_HOST_DEVICE float standard_normal(uint64_t row_seed, uint64_t counter) {
  const uint64_t r = draw(row_seed, counter);
  const float log_u1 = log_of_fraction24<Ops>(static_cast<uint32_t>(r >> 40) + 1u);
  const float radius = Ops::sqrt(Ops::mul(-2.0f, log_u1));
  return Ops::mul(radius, cos_of_turn24<Ops>(static_cast<uint32_t>(r & 0xFFFFFFULL)));
}

}  // namespace init_detail

// Seed of one row: every element of the row draws from counters of this value.
SC_HOST_DEVICE uint64_t row_seed(uint64_t table_seed, int64_t key) {
  return hash_combine(table_seed, static_cast<uint64_t>(key));
}

// Initial weight i of the row whose seed is rs = init_detail::row_seed(table seed, key): a
// function of (rs, i) alone, so any split of a row's elements over threads gives the same bits.
// Ops: the float arithmetic (see above); kernels pass the device's.
template <typename Ops = init_detail::HostFloatOps>
SC_HOST_DEVICE float initial_value(const InitializerConfig& c, uint64_t rs, int i) {
  using namespace init_detail;
  switch (c.kind) {
    case InitKind::kZeros:
      return 0.0f;
    case InitKind::kConstant:
      return c.a;
    case InitKind::kUniform:
      return Ops::add(c.a, Ops::mul(Ops::sub(c.b, c.a), unit_uniform(draw(rs, static_cast<uint64_t>(i)))));
    case InitKind::kNormal:
      return Ops::add(c.a, Ops::mul(c.b, standard_normal<Ops>(rs, static_cast<uint64_t>(i))));
    case InitKind::kTruncatedNormal: {
      // Counter (i, attempt) -> i + attempt * 2^32; the 64th attempt falls back to the mean
      // (probability 0.046^64: never in practice, but the loop must be bounded on a GPU).
      float z = 0.0f;
      for (uint64_t attempt = 0; attempt < 64; ++attempt) {
        float cand = standard_normal<Ops>(rs, static_cast<uint64_t>(i) + (attempt << 32));
        if (std::fabs(cand) <= 2.0f) {
          z = cand;
          break;
        }
      }
      return Ops::add(c.a, Ops::mul(c.b, z));
    }
  }
  return 0.0f;
}

// Fills w[i] for i = first, first + stride, ... < dim with the initial weights of `key` (the
// defaults: the whole row; a kernel's lanes pass their lane and the team size).
template <typename Ops = init_detail::HostFloatOps>
SC_HOST_DEVICE void initialize_row(const InitializerConfig& c, uint64_t table_seed, int64_t key, float* w, int dim,
                                   int first = 0, int stride = 1) {
  const uint64_t rs = row_seed(table_seed, key);
  for (int i = first; i < dim; i += stride) w[i] = initial_value<Ops>(c, rs, i);
}

}  // namespace sparsecore
