// The update rules: one implementation each, shared by the CPU engine, the CUDA kernels
// and the parameter server.
//
// Every rule updates one row in place:
//   w      (dim)            the row's weights
//   state  (state_dim(dim)) the row's optimizer state, laid out right after w
//   g      (dim)            the row's summed gradient for this step (read only)
//   t      the bias-correction step (row update count, already incremented, or global step)
//   count  the row's update count, this update included (apply() derives t from it or the step)
// The loops are simple element-wise passes so the compiler vectorises them per ISA (the CPU
// engine compiles its caller once per instruction set and dispatches at run time).
#pragma once

#include <cmath>
#include <cstdint>

#include "sparsecore/core/host_device.h"
#include "sparsecore/optim/optimizer_config.h"

// Host callers are compiled once per ISA (SC_DISPATCH): the rules must be inlined into each
// clone, or every clone would call the one baseline (SSE2) copy and the update would not use
// AVX2/AVX-512 at all.
#if defined(__CUDACC__) || !defined(__GNUC__)
#define SC_RULE SC_HOST_DEVICE
#else
#define SC_RULE SC_HOST_DEVICE __attribute__((always_inline))
#endif

namespace sparsecore::rules {

SC_RULE float l2_decay(float g, float w, float wd) { return wd != 0.0f ? g + wd * w : g; }

// SGD with L2 weight decay: w <- w - lr * (g + wd * w)
SC_RULE void sgd(float* __restrict__ w, const float* __restrict__ g, int dim, float lr, float wd) {
  for (int i = 0; i < dim; ++i) w[i] -= lr * l2_decay(g[i], w[i], wd);
}

// Momentum: m <- mu*m + g; w <- w - lr*m  (Nesterov: w <- w - lr*(g + mu*m))
SC_RULE void momentum(float* __restrict__ w, float* __restrict__ m, const float* __restrict__ g, int dim, float lr,
                      float mu, bool nesterov, float wd) {
  for (int i = 0; i < dim; ++i) {
    float gi = l2_decay(g[i], w[i], wd);
    float mi = mu * m[i] + gi;
    m[i] = mi;
    w[i] -= lr * (nesterov ? gi + mu * mi : mi);
  }
}

// Adagrad: s <- s + g^2; w <- w - lr * g / (sqrt(s) + eps)
SC_RULE void adagrad(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim, float lr,
                     float eps, float wd) {
  for (int i = 0; i < dim; ++i) {
    float gi = l2_decay(g[i], w[i], wd);
    float si = s[i] + gi * gi;
    s[i] = si;
    w[i] -= lr * gi / (std::sqrt(si) + eps);
  }
}

// Rowwise Adagrad: one scalar s per row; s <- s + mean(g^2); w <- w - lr * g / (sqrt(s) + eps)
SC_RULE void rowwise_adagrad(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim,
                             float lr, float eps, float wd) {
  float sum_sq = 0.0f;
  for (int i = 0; i < dim; ++i) {
    float gi = l2_decay(g[i], w[i], wd);
    sum_sq += gi * gi;
  }
  float si = s[0] + sum_sq / static_cast<float>(dim);
  s[0] = si;
  float step = lr / (std::sqrt(si) + eps);
  for (int i = 0; i < dim; ++i) w[i] -= step * l2_decay(g[i], w[i], wd);
}

// Adam with bias correction at step t (t >= 1); AdamW when `decoupled`:
//   decoupled: w <- w * (1 - lr*wd); otherwise g <- g + wd*w
//   m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
//   w <- w - (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
SC_RULE void adam(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ g,
                  int dim, float lr, float b1, float b2, float eps, float wd, bool decoupled, int64_t t) {
  float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b1), static_cast<double>(t)));
  float bc2 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b2), static_cast<double>(t)));
  float step = lr / bc1;
  float inv_sqrt_bc2 = 1.0f / std::sqrt(bc2);
  float decay = decoupled ? 1.0f - lr * wd : 1.0f;
  float l2 = decoupled ? 0.0f : wd;
  for (int i = 0; i < dim; ++i) {
    float wi = w[i] * decay;
    float gi = l2_decay(g[i], w[i], l2);
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

// FTRL-Proximal (McMahan et al., 2013), per coordinate, alpha = lr:
//   n' = n + g^2;  sigma = (n'^(-p) - n^(-p)) / alpha;  z <- z + g - sigma*w;  n <- n'
//   w = 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + n^(-p)) / alpha + l2)
// with p = lr_power (-0.5 gives the paper's square roots).
SC_RULE float ftrl_pow(float n, float lr_power) {
  return lr_power == -0.5f ? std::sqrt(n) : static_cast<float>(std::pow(n, -lr_power));
}

SC_RULE void ftrl(float* __restrict__ w, float* __restrict__ z, float* __restrict__ n, const float* __restrict__ g,
                  int dim, float alpha, float beta, float l1, float l2, float lr_power, float wd) {
  for (int i = 0; i < dim; ++i) {
    float gi = l2_decay(g[i], w[i], wd);
    float n_old = n[i];
    float n_new = n_old + gi * gi;
    float sigma = (ftrl_pow(n_new, lr_power) - ftrl_pow(n_old, lr_power)) / alpha;
    float zi = z[i] + gi - sigma * w[i];
    z[i] = zi;
    n[i] = n_new;
    float az = std::fabs(zi);
    w[i] = az <= l1 ? 0.0f : -(zi - (zi > 0.0f ? l1 : -l1)) / ((beta + ftrl_pow(n_new, lr_power)) / alpha + l2);
  }
}

// Frequency-scaled L1 strength: with a reference count n0 > 0, a row updated `count` times
// (this update included) is regularised with lambda * f(count), f(c) = min(1, sqrt(n0 / c)):
// rows seen at most n0 times get the full strength, rows seen more often (more evidence)
// proportionally less. n0 = 0 keeps lambda for every row. FTRL scales l1, Group Lasso lambda.
SC_RULE float frequency_scaled_l1(float lambda, float n0, uint32_t count) {
  if (n0 <= 0.0f || lambda == 0.0f) return lambda;
  const float c = count > 0u ? static_cast<float>(count) : 1.0f;
  return c <= n0 ? lambda : lambda * std::sqrt(n0 / c);
}

// Group Lasso: the Adagrad step, then the group soft-threshold over the whole row:
//   w <- w * max(0, 1 - lr * lambda * sqrt(dim) / ||w||)   (a zero row stays zero)
SC_RULE void group_lasso(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim, float lr,
                         float eps, float wd, float lambda) {
  adagrad(w, s, g, dim, lr, eps, wd);
  if (lambda == 0.0f) return;
  float sq = 0.0f;
  for (int i = 0; i < dim; ++i) sq += w[i] * w[i];
  float norm = std::sqrt(sq);
  float scale = norm > 0.0f ? 1.0f - lr * lambda * std::sqrt(static_cast<float>(dim)) / norm : 0.0f;
  if (scale < 0.0f) scale = 0.0f;
  for (int i = 0; i < dim; ++i) w[i] *= scale;
}

// Dispatch on the table's rule. `step` is the collection's step (Adam with use_global_step),
// `count` the row's update count with this update (Adam's lazy step, the frequency-scaled L1).
SC_RULE void apply(const OptimizerConfig& c, float* __restrict__ w, float* __restrict__ state,
                   const float* __restrict__ g, int dim, int64_t step, uint32_t count) {
  const int64_t t = c.use_global_step ? step : static_cast<int64_t>(count);
  switch (c.kind) {
    case OptimizerKind::kSGD:
      sgd(w, g, dim, c.lr, c.weight_decay);
      break;
    case OptimizerKind::kMomentum:
      momentum(w, state, g, dim, c.lr, c.momentum, c.nesterov, c.weight_decay);
      break;
    case OptimizerKind::kAdagrad:
      adagrad(w, state, g, dim, c.lr, c.eps, c.weight_decay);
      break;
    case OptimizerKind::kRowwiseAdagrad:
      rowwise_adagrad(w, state, g, dim, c.lr, c.eps, c.weight_decay);
      break;
    case OptimizerKind::kAdam:
      adam(w, state, state + dim, g, dim, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.decoupled_weight_decay, t);
      break;
    case OptimizerKind::kFtrl:
      ftrl(w, state, state + dim, g, dim, c.lr, c.ftrl_beta, frequency_scaled_l1(c.l1, c.l1_reference_count, count),
           c.l2, c.lr_power, c.weight_decay);
      break;
    case OptimizerKind::kGroupLasso:
      group_lasso(w, state, g, dim, c.lr, c.eps, c.weight_decay,
                  frequency_scaled_l1(c.group_lambda, c.l1_reference_count, count));
      break;
  }
}

// Initial optimizer state of a new row: zeros, except the accumulators that start at
// `initial_accumulator` (Adagrad's s, rowwise Adagrad's s, Group Lasso's s, FTRL's n).
// Element i of the state (i < state_dim(dim)).
SC_RULE float initial_state_value(const OptimizerConfig& c, int i, int dim) {
  switch (c.kind) {
    case OptimizerKind::kAdagrad:
    case OptimizerKind::kGroupLasso:
      return i < dim ? c.initial_accumulator : 0.0f;
    case OptimizerKind::kRowwiseAdagrad:
      return i == 0 ? c.initial_accumulator : 0.0f;
    case OptimizerKind::kFtrl:
      return i >= dim ? c.initial_accumulator : 0.0f;
    default:
      return 0.0f;
  }
}

// state[i] for i = first, first + stride, ... < state_dim(dim) (the defaults: all of it).
SC_RULE void init_state(const OptimizerConfig& c, float* state, int dim, int first = 0, int stride = 1) {
  const int n = c.state_dim(dim);
  for (int i = first; i < n; i += stride) state[i] = initial_state_value(c, i, dim);
}

}  // namespace sparsecore::rules
