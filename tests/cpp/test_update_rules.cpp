// The update rules' call-wide coefficients: Adam's bias correction computed once per call
// (call_coefficients) gives every row the same bits as computing it per row, for Adam and
// AdamW, with and without weight decay, at small and large steps; rules whose t is the row's
// update count, and the other rules, hoist nothing.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "sparsecore/optim/update_rules.h"

using namespace sparsecore;

namespace {

struct Rows {
  std::vector<float> w, state, g;
};

Rows random_rows(int rows, int dim, int state_dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Rows r;
  r.w.resize(static_cast<size_t>(rows) * dim);
  r.state.resize(static_cast<size_t>(rows) * state_dim);
  r.g.resize(static_cast<size_t>(rows) * dim);
  for (float& x : r.w) x = normal(rng);
  for (size_t i = 0; i < r.state.size(); ++i) {
    const float x = normal(rng);
    // Adam's second moment (the state's second half) is non-negative.
    r.state[i] = (i % state_dim) >= static_cast<size_t>(dim) ? x * x : x;
  }
  for (float& x : r.g) x = 0.1f * normal(rng);
  return r;
}

// Applies `steps` calls of the rule to every row: per row (the default coefficients) or with
// the call's coefficients computed once per call. Row i has update count step + i % 5, so the
// count-based t differs between rows of one call.
Rows run(const OptimizerConfig& c, int dim, bool hoisted, int64_t first_step, int steps) {
  const int rows = 37;
  const int state_dim = c.state_dim(dim);
  Rows r = random_rows(rows, dim, state_dim, 7);
  for (int64_t step = first_step; step < first_step + steps; ++step) {
    const rules::CallCoefficients k = hoisted ? rules::call_coefficients(c, step) : rules::CallCoefficients{};
    for (int i = 0; i < rows; ++i) {
      const uint32_t count = static_cast<uint32_t>(step + i % 5);
      rules::apply(c, k, r.w.data() + static_cast<size_t>(i) * dim, r.state.data() + static_cast<size_t>(i) * state_dim,
                   r.g.data() + static_cast<size_t>(i) * dim, dim, step, count);
    }
  }
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST(UpdateRules, HoistedAdamBiasCorrectionIsBitIdenticalToPerRow) {
  for (bool global : {true, false})
    for (bool decoupled : {false, true})
      for (float wd : {0.0f, 0.01f})
        for (int dim : {1, 16, 18})
          for (int64_t first : {int64_t{1}, int64_t{1000}, int64_t{1} << 40}) {
            OptimizerConfig c;
            c.kind = OptimizerKind::kAdam;
            c.lr = 0.01f;
            c.eps = 1e-8f;
            c.weight_decay = wd;
            c.decoupled_weight_decay = decoupled;
            c.use_global_step = global;
            const Rows per_row = run(c, dim, false, first, 4);
            const Rows hoisted = run(c, dim, true, first, 4);
            SCOPED_TRACE(testing::Message() << "global " << global << " decoupled " << decoupled << " wd " << wd
                                            << " dim " << dim << " first step " << first);
            EXPECT_TRUE(same_bits(per_row.w, hoisted.w));
            EXPECT_TRUE(same_bits(per_row.state, hoisted.state));
            // The rule did move the rows (the comparison is not of untouched arrays).
            EXPECT_FALSE(same_bits(per_row.w, random_rows(37, dim, c.state_dim(dim), 7).w));
          }
}

TEST(UpdateRules, CallCoefficientsHoistOnlyTheGlobalStepAdam) {
  OptimizerConfig c;
  c.kind = OptimizerKind::kAdam;
  c.use_global_step = true;
  rules::CallCoefficients k = rules::call_coefficients(c, 3);
  EXPECT_TRUE(k.shared_adam);
  const rules::AdamStep a = rules::adam_step(c.lr, c.beta1, c.beta2, c.weight_decay, c.decoupled_weight_decay, 3);
  EXPECT_EQ(std::memcmp(&k.adam, &a, sizeof(a)), 0);
  c.use_global_step = false;  // t is each row's update count
  EXPECT_FALSE(rules::call_coefficients(c, 3).shared_adam);
  for (OptimizerKind kind : {OptimizerKind::kSGD, OptimizerKind::kMomentum, OptimizerKind::kAdagrad,
                             OptimizerKind::kRowwiseAdagrad, OptimizerKind::kFtrl, OptimizerKind::kGroupLasso}) {
    c.kind = kind;
    c.use_global_step = true;
    EXPECT_FALSE(rules::call_coefficients(c, 3).shared_adam) << optimizer_name(kind);
  }
}
