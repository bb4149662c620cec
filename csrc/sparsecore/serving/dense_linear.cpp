#include "sparsecore/serving/dense_linear.h"

#include <algorithm>

#include "sparsecore/core/thread_pool.h"

namespace sparsecore::serving {

namespace {

enum class Kernel { kPortable, kAvx2, kAvx512 };

Kernel detect() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Kernel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Kernel::kAvx2;
#endif
  return Kernel::kPortable;
}

Kernel kernel() {
  static const Kernel chosen = detect();
  return chosen;
}

// The same order as the vector kernels (terms in order of i from +0, then + bias), with a
// separate multiply and add.
void rows_portable(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0,
                   int64_t r1, float* y) {
  const int64_t panels = (out + kLinearPanel - 1) / kLinearPanel;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t p = 0; p < panels; ++p) {
      float acc[kLinearPanel] = {};
      const float* panel = packed + p * in * kLinearPanel;
      for (int64_t i = 0; i < in; ++i)
        for (int64_t k = 0; k < kLinearPanel; ++k) acc[k] += x[r * in + i] * panel[i * kLinearPanel + k];
      const int64_t o0 = p * kLinearPanel, valid = std::min(kLinearPanel, out - o0);
      for (int64_t k = 0; k < valid; ++k) y[r * out + o0 + k] = acc[k] + (bias ? bias[o0 + k] : 0.0f);
    }
}

void rows_any(const float* x, const float* packed, const float* bias, int64_t in, int64_t out, int64_t r0, int64_t r1,
              float* y) {
  switch (kernel()) {
    case Kernel::kAvx512:
      return detail::linear_rows_avx512(x, packed, bias, in, out, r0, r1, y);
    case Kernel::kAvx2:
      return detail::linear_rows_avx2(x, packed, bias, in, out, r0, r1, y);
    default:
      return rows_portable(x, packed, bias, in, out, r0, r1, y);
  }
}

// Below this many multiply-adds a layer runs on the calling thread: waking the pool costs
// more than it saves.
constexpr int64_t kParallelWork = int64_t{1} << 20;
constexpr int64_t kTaskRows = 16;  // rows per pool task, a multiple of every kernel's tile

}  // namespace

std::vector<float> pack_linear(const float* w, int64_t out, int64_t in) {
  const int64_t panels = (out + kLinearPanel - 1) / kLinearPanel;
  std::vector<float> packed(static_cast<size_t>(panels * in * kLinearPanel), 0.0f);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      packed[static_cast<size_t>(((o / kLinearPanel) * in + i) * kLinearPanel + o % kLinearPanel)] = w[o * in + i];
  return packed;
}

void linear_packed(const float* x, int64_t batch, const float* packed, const float* bias, int64_t in, int64_t out,
                   float* y) {
  if (batch * in * out < kParallelWork || batch <= kTaskRows) return rows_any(x, packed, bias, in, out, 0, batch, y);
  parallel_for((batch + kTaskRows - 1) / kTaskRows, 1, [&](int64_t b0, int64_t b1) {
    rows_any(x, packed, bias, in, out, b0 * kTaskRows, std::min(batch, b1 * kTaskRows), y);
  });
}

const char* linear_kernel_name() {
  switch (kernel()) {
    case Kernel::kAvx512:
      return "avx512";
    case Kernel::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace sparsecore::serving
