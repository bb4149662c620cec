// Panel shift-matmul kernels (shift_panels.h): per ISA a register tile of R rows of x by P
// panels of 16 outputs, each output a running sum over the columns in order.
#include "sparsecore/quant/shift_panels.h"

#include <algorithm>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/detail/shift_kernels.h"
#include "sparsecore/quant/pow2_codes.h"

namespace sparsecore::quant {

int64_t shift_panels_size(int64_t rows, int64_t cols) {
  return shift_panel_count(rows) * shift_panel_groups(cols) * kPanelRows + 1;
}

void pack_shift_panels(const uint8_t* codes, int64_t rows, int64_t cols, uint32_t* panels) {
  const int64_t pc = packed_cols(cols), groups = shift_panel_groups(cols);
  panels[shift_panels_size(rows, cols) - 1] = 0;  // the padding read past the last group
  for (int64_t p = 0; p < shift_panel_count(rows); ++p)
    for (int64_t o = 0; o < kPanelRows; ++o) {
      const int64_t r = p * kPanelRows + o;
      uint32_t* out = panels + p * groups * kPanelRows + o;
      const int64_t whole = r < rows ? pc / 4 : 0;  // groups with all 4 bytes in the row
      for (int64_t g = 0; g < whole; ++g) {
        uint8_t bytes[4];
        std::memcpy(bytes, codes + r * pc + 4 * g, 4);
        out[g * kPanelRows] =
            uint32_t{bytes[0]} | uint32_t{bytes[1]} << 8 | uint32_t{bytes[2]} << 16 | uint32_t{bytes[3]} << 24;
      }
      for (int64_t g = whole; g < groups; ++g) {
        uint8_t bytes[4] = {0, 0, 0, 0};
        if (r < rows) std::memcpy(bytes, codes + r * pc + 4 * g, static_cast<size_t>(pc - 4 * g));
        out[g * kPanelRows] =
            uint32_t{bytes[0]} | uint32_t{bytes[1]} << 8 | uint32_t{bytes[2]} << 16 | uint32_t{bytes[3]} << 24;
      }
    }
}

namespace detail {

// Built for baseline x86-64 (no FMA): the one definition that every CPU runs for x outside
// exact_products, and the reference of the order.
__attribute__((noinline)) void panels_portable(const float* x, int64_t b0, int64_t b1, const uint32_t* panels,
                                               const float* alpha, int64_t rows, int64_t cols, int64_t p0, int64_t p1,
                                               float* y) {
  const float* v = code_values();
  const int64_t groups = shift_panel_groups(cols);
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t p = p0; p < p1; ++p) {
      const uint32_t* panel = panels + p * groups * kPanelRows;
      float s[kPanelRows] = {};
      for (int64_t c = 0; c < cols; ++c) {
        const float xc = x[b * cols + c];
        const uint32_t* d = panel + (c / kGroupCols) * kPanelRows;
        const int shift = static_cast<int>(4 * (c % kGroupCols));
        for (int64_t o = 0; o < kPanelRows; ++o) s[o] += xc * v[(d[o] >> shift) & 15u];
      }
      for (int64_t o = 0; o < kPanelRows && p * kPanelRows + o < rows; ++o)
        y[b * rows + p * kPanelRows + o] = alpha[p * kPanelRows + o] * s[o];
    }
}

}  // namespace detail

namespace {

// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more
// than it saves.
constexpr int64_t kParallelWork = int64_t{1} << 20;
// Rows of x per task: a multiple of every GEMM tile (the AVX-512 kernel's batch-lane tiles take
// blocks of 16 rows, 32 fill its widest tile). Panels per task: the AVX-512 kernel transposes
// its rows of x once per task, a cost shared by the task's panels.
constexpr int64_t kTaskRows = 32;
constexpr int64_t kTaskPanels = 32;

void run_block(detail::Isa isa, const float* x, int64_t b0, int64_t b1, const uint32_t* panels, const float* alpha,
               int64_t rows, int64_t cols, int64_t p0, int64_t p1, float* y) {
  switch (isa) {
    case detail::Isa::kAvx512:
      return detail::panels_avx512(x, b0, b1, panels, alpha, rows, cols, p0, p1, y);
    case detail::Isa::kAvx2:
      return detail::panels_avx2(x, b0, b1, panels, alpha, rows, cols, p0, p1, y);
    default:
      return detail::panels_portable(x, b0, b1, panels, alpha, rows, cols, p0, p1, y);
  }
}

}  // namespace

void shift_panels_matmul(const float* x, int64_t batch, const uint32_t* panels, const float* alpha, const float* bias,
                         int64_t rows, int64_t cols, float* y) {
  SC_CHECK_ARG(batch >= 0 && rows >= 0 && cols >= 0, "shift_panels_matmul shapes must be non-negative: batch ", batch,
               ", rows ", rows, ", cols ", cols);
  if (batch == 0 || rows == 0) return;
  const detail::Isa isa = detail::isa_for(x, batch * cols);
  const int64_t np = shift_panel_count(rows);
  if (batch * rows * cols < kParallelWork) {
    run_block(isa, x, 0, batch, panels, alpha, rows, cols, 0, np, y);
  } else {
    // Tasks of kTaskRows rows by kTaskPanels panels, panel-major so that a task's codes stay in
    // cache while its neighbours read the same rows of x.
    const int64_t row_blocks = (batch + kTaskRows - 1) / kTaskRows;
    const int64_t panel_blocks = (np + kTaskPanels - 1) / kTaskPanels;
    parallel_for(row_blocks * panel_blocks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t pb = t / row_blocks, rb = t % row_blocks;
        run_block(isa, x, rb * kTaskRows, std::min(batch, (rb + 1) * kTaskRows), panels, alpha, rows, cols,
                  pb * kTaskPanels, std::min(np, (pb + 1) * kTaskPanels), y);
      }
    });
  }
  // A separate pass in code built for baseline x86-64: the product and the bias are two
  // roundings on every CPU (no contraction into a fused multiply-add).
  if (bias)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < rows; ++r) y[b * rows + r] += bias[r];
}

}  // namespace sparsecore::quant
