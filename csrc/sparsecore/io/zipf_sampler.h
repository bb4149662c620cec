// Zipf(s) ranks on {1, ..., n}: P(k) proportional to k^-s, for any s > 0 and n up to 2^62.
//
// Rejection-inversion sampling (Hörmann & Derflinger, "Rejection-inversion to generate
// variates from monotone discrete distributions", 1996): invert the integral of the
// continuous hat x^-s, round to the nearest rank, accept on a cheap test that almost always
// passes. O(1) per draw and no table, so a 1M-id vocabulary costs nothing to set up. Pure
// function of the uniforms it is given: deterministic across threads and machines.
#pragma once

#include <cmath>
#include <cstdint>

#include "sparsecore/core/hash.h"

namespace sparsecore::io {

// A SplitMix64 stream from a 64-bit seed: counter-based, so any sample can be regenerated
// from its own seed without replaying the ones before it.
struct SplitMixStream {
  uint64_t state;
  uint64_t next() { return splitmix64(state += 0x9e3779b97f4a7c15ULL); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n) (multiply-shift; bias below 2^-32 for n < 2^32).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
};

class ZipfSampler {
 public:
  // Throws InvalidArgument unless n >= 1 and s > 0 (finite).
  ZipfSampler(int64_t n, double s);

  int64_t n() const { return n_; }
  double exponent() const { return s_; }

  // A rank in [1, n].
  int64_t sample(SplitMixStream& rng) const {
    while (true) {
      const double u = h_integral_n_ + rng.uniform() * (h_integral_x1_ - h_integral_n_);
      const double x = h_integral_inverse(u);
      int64_t k = static_cast<int64_t>(x + 0.5);
      if (k < 1) k = 1;
      if (k > n_) k = n_;
      const double kd = static_cast<double>(k);
      if (kd - x <= squeeze_ || u >= h_integral(kd + 0.5) - h(kd)) return k;
    }
  }

 private:
  // h(x) = x^-s; H is its antiderivative shifted so that H(1) = 0, written with log1p/expm1
  // forms that stay accurate as s approaches 1.
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  double h_integral(double x) const {
    const double lx = std::log(x);
    return expm1_over_x((1.0 - s_) * lx) * lx;
  }
  double h_integral_inverse(double x) const {
    double t = x * (1.0 - s_);
    if (t < -1.0) t = -1.0;  // rounding guard: the true value is >= -1
    return std::exp(log1p_over_x(t) * x);
  }
  static double expm1_over_x(double x) { return std::fabs(x) > 1e-8 ? std::expm1(x) / x : 1.0 + x * 0.5; }
  static double log1p_over_x(double x) { return std::fabs(x) > 1e-8 ? std::log1p(x) / x : 1.0 - x * 0.5; }

  int64_t n_;
  double s_;
  double h_integral_x1_, h_integral_n_, squeeze_;
};

}  // namespace sparsecore::io
