#include "sparsecore/quant/pow2_codes.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore::quant {

void check_alpha(const float* alpha, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    SC_CHECK_ARG(std::isfinite(alpha[r]) && alpha[r] > 0.0f, "alpha[", r, "] = ", alpha[r], " must be finite and > 0");
  }
}

namespace {

void check_finite(const float* w, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows * cols; ++i) {
    SC_CHECK_ARG(std::isfinite(w[i]), "weight [", i / cols, ", ", i % cols, "] = ", w[i], " is not finite");
  }
}

// Nibble of r = ±2^k (0 <= k <= 6) or 0; 0xFF when r is not of that form.
uint8_t encode(float r) {
  if (r == 0.0f) return 0;
  uint32_t bits;
  std::memcpy(&bits, &r, 4);
  uint32_t mantissa = bits & 0x7FFFFFu;
  int exponent = static_cast<int>((bits >> 23) & 0xFFu) - 127;
  if (mantissa != 0 || exponent < 0 || exponent > kMaxExponent) return 0xFF;
  return static_cast<uint8_t>(((bits >> 31) << 3) | static_cast<uint32_t>(exponent + 1));
}

}  // namespace

void pack_pow2(const float* w, const float* alpha, int64_t rows, int64_t cols, uint8_t* codes) {
  SC_CHECK_ARG(rows >= 0 && cols >= 0, "weight shape (", rows, ", ", cols, ") must be non-negative");
  check_alpha(alpha, rows);
  const int64_t pc = packed_cols(cols);
  // Validate everything first: a bad element leaves `codes` untouched.
  check_finite(w, rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      float v = w[r * cols + c];
      SC_CHECK_ARG(encode(v / alpha[r]) != 0xFF, "weight [", r, ", ", c, "] = ", v, " is not alpha[", r,
                   "] = ", alpha[r], " times 0 or ±2^k with 0 <= k <= ", kMaxExponent,
                   " (codes are 4 bits: sign + 3-bit exponent)");
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    uint8_t* out = codes + r * pc;
    for (int64_t j = 0; j < pc; ++j) {
      uint8_t lo = encode(wr[2 * j] / alpha[r]);
      uint8_t hi = 2 * j + 1 < cols ? encode(wr[2 * j + 1] / alpha[r]) : 0;
      out[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void unpack_pow2(const uint8_t* codes, const float* alpha, int64_t rows, int64_t cols, float* w) {
  check_alpha(alpha, rows);
  const int64_t pc = packed_cols(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint8_t byte = codes[r * pc + c / 2];
      uint8_t n = (c & 1) ? (byte >> 4) : (byte & 0x0F);
      w[r * cols + c] = alpha[r] * code_value(n);
    }
  }
}

void check_codebook(const std::vector<float>& codebook) {
  SC_CHECK_ARG(!codebook.empty(), "codebook must not be empty");
  SC_CHECK_ARG(codebook.size() <= 255, "codebook has ", codebook.size(), " values; at most 255");
  bool nonzero = false;
  for (size_t k = 0; k < codebook.size(); ++k) {
    SC_CHECK_ARG(std::isfinite(codebook[k]), "codebook value ", codebook[k], " is not finite");
    SC_CHECK_ARG(k == 0 || codebook[k - 1] < codebook[k], "codebook must be sorted ascending without repeats");
    nonzero |= codebook[k] != 0.0f;
  }
  SC_CHECK_ARG(nonzero, "codebook needs a non-zero value");
}

namespace {

// Projects one group of `n` weights sharing one alpha. `index` is scratch (n).
int project_group(const float* w, int64_t n, const std::vector<float>& cb, const std::vector<float>& mids,
                  double mean_abs_code, int max_iter, uint8_t* index, float* projected, float* alpha_out) {
  double sum_abs = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_abs += std::fabs(static_cast<double>(w[i]));
  float alpha = sum_abs > 0.0 ? static_cast<float>(sum_abs / static_cast<double>(n) / mean_abs_code) : 1.0f;
  if (!(alpha > 0.0f) || !std::isfinite(alpha)) alpha = 1.0f;
  std::fill(index, index + n, uint8_t{0xFF});
  int it = 0;
  while (it < max_iter) {
    ++it;
    bool changed = false;
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      float t = w[i] / alpha;
      // count of midpoints strictly below t: ties go to the smaller codebook value
      uint8_t k = static_cast<uint8_t>(std::lower_bound(mids.begin(), mids.end(), t) - mids.begin());
      changed |= k != index[i];
      index[i] = k;
      double q = cb[k];
      num += static_cast<double>(w[i]) * q;
      den += q * q;
    }
    if (!changed) break;
    float next = den > 0.0 ? static_cast<float>(num / den) : 0.0f;
    if (!(next > 0.0f) || !std::isfinite(next)) break;  // degenerate (all-zero codes): keep alpha
    alpha = next;
  }
  for (int64_t i = 0; i < n; ++i) projected[i] = alpha * cb[index[i]];
  *alpha_out = alpha;
  return it;
}

}  // namespace

int project_pow2(const float* w, int64_t rows, int64_t cols, const std::vector<float>& codebook, bool per_channel,
                 int max_iter, float* projected, float* alpha) {
  check_codebook(codebook);
  SC_CHECK_ARG(rows >= 0 && cols >= 0, "weight shape (", rows, ", ", cols, ") must be non-negative");
  SC_CHECK_ARG(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  check_finite(w, rows, cols);
  std::vector<float> mids(codebook.size() - 1);
  for (size_t k = 0; k + 1 < codebook.size(); ++k) mids[k] = (codebook[k] + codebook[k + 1]) * 0.5f;
  double sum = 0.0;
  int nonzero = 0;
  for (float c : codebook) {
    if (c != 0.0f) sum += std::fabs(c), ++nonzero;
  }
  const double mean_abs_code = sum / nonzero;
  if (!per_channel) {
    std::vector<uint8_t> index(static_cast<size_t>(rows * cols));
    if (rows * cols == 0) {
      alpha[0] = 1.0f;
      return 0;
    }
    return project_group(w, rows * cols, codebook, mids, mean_abs_code, max_iter, index.data(), projected, alpha);
  }
  std::vector<int> iters(static_cast<size_t>(rows), 0);
  parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> index(static_cast<size_t>(cols));
    for (int64_t r = begin; r < end; ++r) {
      if (cols == 0) {
        alpha[r] = 1.0f;
        continue;
      }
      iters[r] = project_group(w + r * cols, cols, codebook, mids, mean_abs_code, max_iter, index.data(),
                               projected + r * cols, alpha + r);
    }
  });
  return rows ? *std::max_element(iters.begin(), iters.end()) : 0;
}

}  // namespace sparsecore::quant
