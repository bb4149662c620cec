// The panel shift matmul (sparsecore/quant/shift_panels.h) gives exactly the bits of its order
// (a running sum over the columns from +0, times alpha, plus the bias) on every kernel this CPU
// can run, for every tile edge, zero and negative codes and every shift value; the GEMM form
// of shift_matmul gives the same bits.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_matmul.h"
#include "sparsecore/quant/shift_panels.h"

using namespace sparsecore;
using namespace sparsecore::quant;

namespace {

struct Case {
  int64_t batch, rows, cols;
  std::vector<float> x, alpha, bias;
  std::vector<uint8_t> codes;
  std::vector<uint32_t> panels;
};

// Random codes with every nibble value (zero, "negative zero" 8, every shift, both signs);
// the first row cycles through all 16 nibbles, the last is all zeros.
Case make_case(std::mt19937& gen, int64_t batch, int64_t rows, int64_t cols, float x_scale = 1.0f) {
  Case c{batch, rows, cols, {}, {}, {}, {}, {}};
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.01f, 2.0f);
  for (int64_t i = 0; i < batch * cols; ++i) c.x.push_back(normal(gen) * x_scale);
  for (int64_t r = 0; r < rows; ++r) c.alpha.push_back(scale(gen)), c.bias.push_back(normal(gen));
  const int64_t pc = packed_cols(cols);
  c.codes.resize(static_cast<size_t>(rows * pc));
  for (auto& b : c.codes) b = static_cast<uint8_t>(byte(gen));
  for (int64_t j = 0; j < pc; ++j) c.codes[j] = static_cast<uint8_t>((2 * j) % 16 | ((2 * j + 1) % 16) << 4);
  if (rows > 1) std::memset(c.codes.data() + (rows - 1) * pc, 0, static_cast<size_t>(pc));
  if (cols % 2)  // the unused high nibble of an odd last column
    for (int64_t r = 0; r < rows; ++r) c.codes[r * pc + pc - 1] &= 15u;
  c.panels.resize(static_cast<size_t>(shift_panels_size(rows, cols)));
  pack_shift_panels(c.codes.data(), rows, cols, c.panels.data());
  return c;
}

float weight(const Case& c, int64_t r, int64_t k) {
  const uint8_t byte = c.codes[r * packed_cols(c.cols) + k / 2];
  return code_value((k & 1) ? byte >> 4 : byte & 15u);
}

// The documented order, written out: products are exact, so a plain multiply and add.
float model(const Case& c, int64_t b, int64_t r, bool with_bias) {
  float s = 0.0f;
  for (int64_t k = 0; k < c.cols; ++k) s += c.x[b * c.cols + k] * weight(c, r, k);
  const float y = c.alpha[r] * s;
  return with_bias ? y + c.bias[r] : y;
}

bool same_bits(float a, float b) {
  if (a != a && b != b) return true;  // NaN: any payload
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

using Kernel = void (*)(const float*, int64_t, int64_t, const uint32_t*, const float*, int64_t, int64_t, int64_t,
                        int64_t, float*);

std::vector<std::pair<const char*, Kernel>> kernels() {
  std::vector<std::pair<const char*, Kernel>> k = {{"portable", quant::detail::panels_portable}};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    k.emplace_back("avx2", quant::detail::panels_avx2);
  if (__builtin_cpu_supports("avx512f")) k.emplace_back("avx512", quant::detail::panels_avx512);
  return k;
}

}  // namespace

TEST(ShiftPanels, PackingIsTheCodesDwordsTransposed) {
  std::mt19937 gen(7);
  for (int64_t cols : {1, 2, 7, 8, 9, 15, 16, 17, 31}) {
    const Case c = make_case(gen, 1, 19, cols);
    const int64_t groups = shift_panel_groups(cols);
    for (int64_t r = 0; r < 2 * kPanelRows; ++r)
      for (int64_t k = 0; k < groups * kGroupCols; ++k) {
        const uint32_t d =
            c.panels[(r / kPanelRows) * groups * kPanelRows + (k / kGroupCols) * kPanelRows + r % kPanelRows];
        const uint32_t n = (d >> (4 * (k % kGroupCols))) & 15u;
        const float want = r < c.rows && k < cols ? weight(c, r, k) : 0.0f;
        ASSERT_TRUE(same_bits(code_value(n), want)) << "cols " << cols << " row " << r << " col " << k;
      }
  }
}

TEST(ShiftPanels, EveryKernelGivesTheBitsOfTheOrderAtEveryTileEdge) {
  std::mt19937 gen(std::random_device{}());
  const int64_t batches[] = {1, 2, 3, 4, 7, 8, 9, 17, 32, 35};
  const int64_t rows_list[] = {1, 15, 16, 17, 33, 48, 70};
  const int64_t cols_list[] = {1, 2, 7, 8, 9, 16, 31, 130};
  for (int64_t batch : batches)
    for (int64_t rows : rows_list)
      for (int64_t cols : cols_list) {
        const Case c = make_case(gen, batch, rows, cols);
        const int64_t np = shift_panel_count(rows);
        for (const auto& [name, kernel] : kernels()) {
          std::vector<float> y(static_cast<size_t>(batch * rows), -7.0f);
          // A split into two calls over rows of x and panels: each output depends on nothing else.
          const int64_t bm = batch / 2, pm = np / 2;
          kernel(c.x.data(), 0, bm, c.panels.data(), c.alpha.data(), rows, cols, 0, np, y.data());
          kernel(c.x.data(), bm, batch, c.panels.data(), c.alpha.data(), rows, cols, 0, pm, y.data());
          kernel(c.x.data(), bm, batch, c.panels.data(), c.alpha.data(), rows, cols, pm, np, y.data());
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t r = 0; r < rows; ++r)
              ASSERT_TRUE(same_bits(y[b * rows + r], model(c, b, r, false)))
                  << name << " batch " << batch << " rows " << rows << " cols " << cols << " at (" << b << ", " << r
                  << "): " << y[b * rows + r] << " vs " << model(c, b, r, false);
        }
      }
}

// From 16 rows of x the AVX-512 kernel runs batch-lane tiles (16 rows of x in the lanes, 8 outputs
// by 1 or 2 blocks of 16 rows) and the panel tile for the remaining rows: every edge of both,
// with zero, negative zero and subnormal x, gives the bits of the order.
TEST(ShiftPanels, BatchLaneTilesGiveTheBitsOfTheOrder) {
  std::mt19937 gen(std::random_device{}());
  std::uniform_int_distribution<int> pick(0, 7);
  for (int64_t batch : {16, 31, 32, 33, 47, 48, 65})
    for (int64_t rows : {1, 8, 9, 16, 17, 24, 33})
      for (int64_t cols : {1, 7, 8, 9, 17, 130}) {
        Case c = make_case(gen, batch, rows, cols);
        for (float& v : c.x) {  // about a quarter of x is 0, -0 or subnormal
          const int k = pick(gen);
          if (k == 0) v = 0.0f;
          if (k == 1) v = -0.0f;
          if (k == 2) v = std::ldexp(v, -130);
        }
        const int64_t np = shift_panel_count(rows);
        for (const auto& [name, kernel] : kernels()) {
          std::vector<float> y(static_cast<size_t>(batch * rows), -7.0f);
          kernel(c.x.data(), 0, batch, c.panels.data(), c.alpha.data(), rows, cols, 0, np, y.data());
          // Rows of x from an offset that is not a multiple of 16, panels split in two.
          std::vector<float> split(y.size(), -7.0f);
          const int64_t b1 = std::min<int64_t>(batch, 3), pm = np / 2;
          kernel(c.x.data(), 0, b1, c.panels.data(), c.alpha.data(), rows, cols, 0, np, split.data());
          kernel(c.x.data(), b1, batch, c.panels.data(), c.alpha.data(), rows, cols, 0, pm, split.data());
          kernel(c.x.data(), b1, batch, c.panels.data(), c.alpha.data(), rows, cols, pm, np, split.data());
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t r = 0; r < rows; ++r) {
              const float want = model(c, b, r, false);
              ASSERT_TRUE(same_bits(y[b * rows + r], want) && same_bits(split[b * rows + r], want))
                  << name << " batch " << batch << " rows " << rows << " cols " << cols << " at (" << b << ", " << r
                  << "): " << y[b * rows + r] << " / " << split[b * rows + r] << " vs " << want;
            }
        }
      }
}

TEST(ShiftPanels, MatmulAddsTheBiasAfterTheProductOnAnyThreadCount) {
  std::mt19937 gen(std::random_device{}());
  // 96 · 130 · 100 > 2^20 multiply-adds: split over the pool; the small ones run inline.
  for (const auto& [batch, rows, cols] : {std::tuple<int64_t, int64_t, int64_t>{1, 200, 414},
                                          {5, 80, 200},
                                          {96, 130, 100},
                                          {33, 1, 80},
                                          {70, 150, 131}}) {
    const Case c = make_case(gen, batch, rows, cols);
    std::vector<float> y(static_cast<size_t>(batch * rows)), bare(y.size());
    shift_panels_matmul(c.x.data(), batch, c.panels.data(), c.alpha.data(), c.bias.data(), rows, cols, y.data());
    shift_panels_matmul(c.x.data(), batch, c.panels.data(), c.alpha.data(), nullptr, rows, cols, bare.data());
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(same_bits(y[b * rows + r], model(c, b, r, true))) << batch << "x" << rows << "x" << cols;
        ASSERT_TRUE(same_bits(bare[b * rows + r], model(c, b, r, false)));
      }
  }
}

TEST(ShiftPanels, ShiftMatmulFromFourRowsIsThePanelOrder) {
  std::mt19937 gen(std::random_device{}());
  const Case c = make_case(gen, 21, 37, 45);
  std::vector<float> y(static_cast<size_t>(c.batch * c.rows));
  shift_matmul(c.x.data(), c.batch, c.codes.data(), c.alpha.data(), c.rows, c.cols, y.data());
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.rows; ++r) ASSERT_TRUE(same_bits(y[b * c.rows + r], model(c, b, r, false)));
}

TEST(ShiftPanels, HugeOrNonFiniteXRunsThePortableOrder) {
  std::mt19937 gen(std::random_device{}());
  Case c = make_case(gen, 9, 40, 33, std::ldexp(1.0f, 121));  // products up to 2^127 · 64: overflow
  c.x[5] = INFINITY;
  c.x[40] = NAN;
  std::vector<float> y(static_cast<size_t>(c.batch * c.rows));
  shift_panels_matmul(c.x.data(), c.batch, c.panels.data(), c.alpha.data(), c.bias.data(), c.rows, c.cols, y.data());
  int infinite = 0;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t r = 0; r < c.rows; ++r) {
      ASSERT_TRUE(same_bits(y[b * c.rows + r], model(c, b, r, true))) << b << ", " << r;
      infinite += std::isinf(y[b * c.rows + r]);
    }
  EXPECT_GT(infinite, 0);  // the case does overflow
}

TEST(ShiftPanels, NegativeShapesAreRefusedAndEmptyOnesDoNothing) {
  std::vector<uint32_t> panels(static_cast<size_t>(shift_panels_size(3, 5)));
  std::vector<float> x(10, 1.0f), alpha(3, 1.0f), y(6, -1.0f);
  EXPECT_THROW(shift_panels_matmul(x.data(), -1, panels.data(), alpha.data(), nullptr, 3, 5, y.data()),
               InvalidArgument);
  EXPECT_THROW(shift_panels_matmul(x.data(), 2, panels.data(), alpha.data(), nullptr, 3, -5, y.data()),
               InvalidArgument);
  shift_panels_matmul(x.data(), 0, panels.data(), alpha.data(), nullptr, 3, 5, y.data());
  EXPECT_EQ(y, std::vector<float>(6, -1.0f));
  // cols = 0: every output is alpha · (+0) (+ bias)
  std::vector<uint32_t> none(static_cast<size_t>(shift_panels_size(3, 0)));
  pack_shift_panels(nullptr, 3, 0, none.data());
  std::vector<float> bias = {0.5f, -2.0f, 0.0f};
  shift_panels_matmul(x.data(), 2, none.data(), alpha.data(), bias.data(), 3, 0, y.data());
  EXPECT_EQ(y, (std::vector<float>{0.5f, -2.0f, 0.0f, 0.5f, -2.0f, 0.0f}));
}

namespace {

// `bytes` of memory that end where an unreadable page starts: a read past them faults.
struct GuardedBuffer {
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE)), span;
  uint8_t* base;
  explicit GuardedBuffer(size_t bytes) : span((bytes + page - 1) / page * page + page) {
    base = static_cast<uint8_t*>(mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    EXPECT_NE(base, MAP_FAILED);
    EXPECT_EQ(mprotect(base + span - page, page, PROT_NONE), 0);
  }
  ~GuardedBuffer() { munmap(base, span); }
  uint8_t* end() { return base + span - page; }
};

}  // namespace

TEST(ShiftPanels, KernelsReadNothingPastThePanelsOrTheCodes) {
  std::mt19937 gen(3);
  for (const auto& [batch, rows, cols] : {std::tuple<int64_t, int64_t, int64_t>{1, 16, 8},
                                          {9, 32, 256},
                                          {2, 4, 256},
                                          {1, 8, 512},
                                          {5, 17, 13},
                                          {17, 17, 13},
                                          {32, 9, 7}}) {
    const Case c = make_case(gen, batch, rows, cols);
    // The panels, and x (read in blocks of 16 columns by the batch-lane tiles), ending at the
    // guard page.
    GuardedBuffer pg(c.panels.size() * sizeof(uint32_t)), xg(c.x.size() * sizeof(float));
    auto* panels = reinterpret_cast<uint32_t*>(pg.end()) - c.panels.size();
    std::memcpy(panels, c.panels.data(), c.panels.size() * sizeof(uint32_t));
    auto* x = reinterpret_cast<float*>(xg.end()) - c.x.size();
    std::memcpy(x, c.x.data(), c.x.size() * sizeof(float));
    for (const auto& [name, kernel] : kernels()) {
      std::vector<float> y(static_cast<size_t>(batch * rows));
      kernel(x, 0, batch, panels, c.alpha.data(), rows, cols, 0, shift_panel_count(rows), y.data());
      for (int64_t i = 0; i < batch * rows; ++i) ASSERT_TRUE(same_bits(y[i], model(c, i / rows, i % rows, false)));
    }
    // The packed codes of shift_matmul (GEMV below 4 rows of x, GEMM from 4), ending there too.
    GuardedBuffer cg(c.codes.size());
    uint8_t* codes = cg.end() - c.codes.size();
    std::memcpy(codes, c.codes.data(), c.codes.size());
    std::vector<float> y(static_cast<size_t>(batch * rows));
    shift_matmul(c.x.data(), batch, codes, c.alpha.data(), rows, cols, y.data());
    if (batch >= 4)
      for (int64_t i = 0; i < batch * rows; ++i) ASSERT_TRUE(same_bits(y[i], model(c, i / rows, i % rows, false)));
  }
}
