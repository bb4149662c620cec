// IEEE binary16 ("fp16", "half") conversions, round to nearest even: the one implementation
// the CPU engine (fp16 row storage), the row quantizer and the CUDA emulation layer share.
//
//   float_to_half / half_to_float   scalar, SC_HOST_DEVICE, integer arithmetic only. Bit for
//                                   bit what x86 F16C (vcvtps2ph with round-to-nearest-even,
//                                   vcvtph2ps) produces, NaNs included: a NaN keeps its sign
//                                   and the top of its payload and becomes quiet.
//   floats_to_halves / halves_to_floats   CPU bulk forms: F16C where the running CPU has it
//                                   (inlined into SC_DISPATCH clones of x86-64-v3 and up), the
//                                   scalar functions otherwise. Same bits either way.
#pragma once

#include <cstdint>
#include <cstring>

#include "sparsecore/core/host_device.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define SC_HALF_F16C 1
#include <immintrin.h>
#endif

namespace sparsecore {
namespace detail {

SC_HOST_DEVICE uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  return x;
#endif
}

SC_HOST_DEVICE float bits_float(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(x);
#else
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
#endif
}

}  // namespace detail

SC_HOST_DEVICE uint16_t float_to_half(float f) {
  const uint32_t x = detail::float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (ax >= 0x38800000u) {  // a normal half: rebias the exponent, round the 13 dropped bits
    uint32_t r = ax - 0x38000000u;
    r += 0x0fffu + ((r >> 13) & 1u);  // a carry into the exponent is the correct result
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
  // A subnormal half counts units of 2^-24: the 24-bit significand shifted right by 14..24.
  const uint32_t significand = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - (ax >> 23);
  uint32_t q = significand >> shift;
  const uint32_t rest = significand & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  q += (rest > halfway || (rest == halfway && (q & 1u))) ? 1u : 0u;
  return static_cast<uint16_t>(sign | q);
}

SC_HOST_DEVICE float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13) | (mantissa ? 0x400000u : 0u);  // Inf, quiet NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else {
    // Zero or subnormal: mantissa * 2^-24, exact in fp32.
    bits = sign | detail::float_bits(static_cast<float>(mantissa) * 5.9604644775390625e-08f);
  }
  return detail::bits_float(bits);
}

#if !defined(__CUDACC__)
namespace detail {

#if defined(SC_HALF_F16C)
// Callable only where the CPU has AVX and F16C (see cpu_has_f16c).
// The tail (n % 8 values) goes through an 8-lane buffer: one conversion, no scalar loop.
__attribute__((target("avx,f16c"))) inline void halves_to_floats_f16c(const uint16_t* src, float* dst, int64_t n) {
  const int64_t full = n - n % 8;
  for (int64_t i = 0; i < full; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (const int64_t rest = n - full) {
    alignas(16) uint16_t in[8] = {};
    alignas(32) float out[8];
    std::memcpy(in, src + full, static_cast<size_t>(rest) * sizeof(uint16_t));
    _mm256_store_ps(out, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(in))));
    std::memcpy(dst + full, out, static_cast<size_t>(rest) * sizeof(float));
  }
}

__attribute__((target("avx,f16c"))) inline void floats_to_halves_f16c(const float* src, uint16_t* dst, int64_t n) {
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const int64_t full = n - n % 8;
  for (int64_t i = 0; i < full; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound));
  if (const int64_t rest = n - full) {
    alignas(32) float in[8] = {};
    alignas(16) uint16_t out[8];
    std::memcpy(in, src + full, static_cast<size_t>(rest) * sizeof(float));
    _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm256_cvtps_ph(_mm256_load_ps(in), kRound));
    std::memcpy(dst + full, out, static_cast<size_t>(rest) * sizeof(uint16_t));
  }
}

inline bool cpu_has_f16c() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return has;
}
#endif

inline void halves_to_floats_portable(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

inline void floats_to_halves_portable(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

}  // namespace detail

// src (n) halves, dst (n) floats; host memory, no overlap.
inline void halves_to_floats(const uint16_t* src, float* dst, int64_t n) {
#if defined(SC_HALF_F16C)
  if (detail::cpu_has_f16c()) return detail::halves_to_floats_f16c(src, dst, n);
#endif
  detail::halves_to_floats_portable(src, dst, n);
}

// src (n) floats, dst (n) halves (round to nearest even); host memory, no overlap.
inline void floats_to_halves(const float* src, uint16_t* dst, int64_t n) {
#if defined(SC_HALF_F16C)
  if (detail::cpu_has_f16c()) return detail::floats_to_halves_f16c(src, dst, n);
#endif
  detail::floats_to_halves_portable(src, dst, n);
}
#endif  // !__CUDACC__

}  // namespace sparsecore
