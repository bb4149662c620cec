// Inline helpers of the ops layer's CPU kernels (pooling_kernels.cpp, fused_update.cpp),
// inlined into each ISA clone of their callers. Internal to the ops layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace sparsecore::kernels::support {

// Calls f(std::integral_constant<int, D>{}) with D = dim when dim is one of kWidths, else with
// D = 0 (the kernel's runtime-width copy): a kernel instantiated for a fixed width keeps a row
// in vector registers. Returns what f returns.
template <int... kWidths, typename F>
__attribute__((always_inline)) inline auto with_fixed_dim(int dim, F f) {
  using Result = decltype(f(std::integral_constant<int, 0>{}));
  if constexpr (std::is_void_v<Result>) {
    const bool fixed = ((dim == kWidths && (f(std::integral_constant<int, kWidths>{}), true)) || ...);
    if (!fixed) f(std::integral_constant<int, 0>{});
  } else {
    Result result{};
    const bool fixed = ((dim == kWidths && (result = f(std::integral_constant<int, kWidths>{}), true)) || ...);
    return fixed ? result : f(std::integral_constant<int, 0>{});
  }
}

__attribute__((always_inline)) inline void axpy(float* __restrict__ y, const float* __restrict__ x, float a, int dim) {
  for (int d = 0; d < dim; ++d) y[d] += a * x[d];
}

// Copies n floats with fixed-size moves: a short row (a pooled bag, a gradient row) copied
// through a libc memcpy call costs more in the call than in the copy.
__attribute__((always_inline)) inline void copy_floats(float* __restrict__ dst, const float* __restrict__ src, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) __builtin_memcpy(dst + i, src + i, 8 * sizeof(float));
  if (i + 4 <= n) {
    __builtin_memcpy(dst + i, src + i, 4 * sizeof(float));
    i += 4;
  }
  if (i + 2 <= n) {
    __builtin_memcpy(dst + i, src + i, 2 * sizeof(float));
    i += 2;
  }
  if (i < n) dst[i] = src[i];
}

// Rows are not cache-line aligned (any dim, one record with the state): touch every line.
__attribute__((always_inline)) inline void prefetch_bytes(const void* p, size_t bytes, int rw = 0) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  for (const char* line = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t{63}); line < end;
       line += 64) {
    if (rw)
      __builtin_prefetch(line, 1);
    else
      __builtin_prefetch(line, 0);
  }
}

// 1 when any of the n floats is Inf or NaN (exponent bits all ones). An OR of per-element
// flags vectorises where a float reduction would not.
__attribute__((always_inline)) inline uint32_t any_nonfinite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad;
}

}  // namespace sparsecore::kernels::support
