// Evaluation metrics of CTR models: exact AUC (ties share rank), GAUC, logloss.
//
// Inputs are host arrays of n doubles (users: int64). Labels must be exactly 0 or 1 for AUC
// and GAUC, in [0, 1] for logloss; scores and probabilities finite; any violation throws
// InvalidArgument naming the array and index. Sums run in a fixed order: the same inputs
// give the same bits. Thread-safe (no shared state).
#pragma once

#include <cstdint>

namespace sparsecore::io {

// Area under the ROC curve = P(score of a positive > score of a negative) + 0.5 P(equal),
// over all positive/negative pairs. NaN when either class is absent. O(n log n).
double auc(const double* labels, const double* scores, int64_t n);

// Group AUC: the AUC of every user that has both classes, averaged with weights = that
// user's sample count; users with one class are skipped. NaN when no user qualifies.
double gauc(const double* labels, const double* scores, const int64_t* users, int64_t n);

// Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]. NaN when n == 0.
double logloss(const double* labels, const double* probabilities, int64_t n, double eps = 1e-7);

}  // namespace sparsecore::io
