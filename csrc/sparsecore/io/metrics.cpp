#include "sparsecore/io/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "sparsecore/core/error.h"

namespace sparsecore::io {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check_binary_labels(const double* labels, const double* scores, int64_t n, const char* fn) {
  for (int64_t i = 0; i < n; ++i) {
    SC_CHECK_ARG(labels[i] == 0.0 || labels[i] == 1.0, fn, ": labels[", i, "] = ", labels[i], " is not 0 or 1");
    SC_CHECK_ARG(std::isfinite(scores[i]), fn, ": scores[", i, "] = ", scores[i], " is not finite");
  }
}

// AUC of the samples order[begin, end), already sorted by ascending score.
double sorted_auc(const double* labels, const double* scores, const int64_t* order, int64_t begin, int64_t end) {
  double area = 0.0, negatives_below = 0.0, positives = 0.0;
  for (int64_t i = begin; i < end;) {
    double pos = 0.0, neg = 0.0;
    const double s = scores[order[i]];
    for (; i < end && scores[order[i]] == s; ++i) (labels[order[i]] == 1.0 ? pos : neg) += 1.0;
    area += pos * negatives_below + 0.5 * pos * neg;
    negatives_below += neg;
    positives += pos;
  }
  if (positives == 0.0 || negatives_below == 0.0) return kNaN;
  return area / (positives * negatives_below);
}

}  // namespace

double auc(const double* labels, const double* scores, int64_t n) {
  SC_CHECK_ARG(n >= 0, "auc: negative length");
  check_binary_labels(labels, scores, n, "auc");
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] < scores[b]; });
  return sorted_auc(labels, scores, order.data(), 0, n);
}

double gauc(const double* labels, const double* scores, const int64_t* users, int64_t n) {
  SC_CHECK_ARG(n >= 0, "gauc: negative length");
  check_binary_labels(labels, scores, n, "gauc");
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return users[a] != users[b] ? users[a] < users[b] : scores[a] < scores[b]; });
  double weighted = 0.0, weight = 0.0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j < n && users[order[j]] == users[order[i]]) ++j;
    const double a = sorted_auc(labels, scores, order.data(), i, j);
    if (!std::isnan(a)) {
      weighted += a * static_cast<double>(j - i);
      weight += static_cast<double>(j - i);
    }
    i = j;
  }
  return weight > 0.0 ? weighted / weight : kNaN;
}

double logloss(const double* labels, const double* probabilities, int64_t n, double eps) {
  SC_CHECK_ARG(n >= 0, "logloss: negative length");
  SC_CHECK_ARG(eps > 0.0 && eps < 0.5, "logloss: eps must be in (0, 0.5), got ", eps);
  if (n == 0) return kNaN;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double y = labels[i], p = probabilities[i];
    SC_CHECK_ARG(y >= 0.0 && y <= 1.0, "logloss: labels[", i, "] = ", y, " is outside [0, 1]");
    SC_CHECK_ARG(p >= 0.0 && p <= 1.0, "logloss: probabilities[", i, "] = ", p, " is outside [0, 1]");
    const double q = std::clamp(p, eps, 1.0 - eps);
    sum -= y * std::log(q) + (1.0 - y) * std::log1p(-q);
  }
  return sum / static_cast<double>(n);
}

}  // namespace sparsecore::io
