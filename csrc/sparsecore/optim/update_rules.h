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
// engine compiles its caller once per instruction set and dispatches at run time). Each loop
// body is an `_element` function of one coordinate (its weight and state in references), so
// a kernel that splits a row over lanes runs the very same arithmetic on each element it
// owns, with the state in registers; the whole-row parts (rowwise Adagrad's mean, Group
// Lasso's norm) are separate functions of the sums, which such a kernel computes in element
// order as the loops do.
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
SC_RULE void sgd_element(float& w, float g, float lr, float wd) { w -= lr * l2_decay(g, w, wd); }
SC_RULE void sgd(float* __restrict__ w, const float* __restrict__ g, int dim, float lr, float wd) {
  for (int i = 0; i < dim; ++i) sgd_element(w[i], g[i], lr, wd);
}

// Momentum: m <- mu*m + g; w <- w - lr*m  (Nesterov: w <- w - lr*(g + mu*m))
SC_RULE void momentum_element(float& w, float& m, float g, float lr, float mu, bool nesterov, float wd) {
  float gi = l2_decay(g, w, wd);
  float mi = mu * m + gi;
  m = mi;
  w -= lr * (nesterov ? gi + mu * mi : mi);
}
SC_RULE void momentum(float* __restrict__ w, float* __restrict__ m, const float* __restrict__ g, int dim, float lr,
                      float mu, bool nesterov, float wd) {
  for (int i = 0; i < dim; ++i) momentum_element(w[i], m[i], g[i], lr, mu, nesterov, wd);
}

// Adagrad: s <- s + g^2; w <- w - lr * g / (sqrt(s) + eps)
SC_RULE void adagrad_element(float& w, float& s, float g, float lr, float eps, float wd) {
  float gi = l2_decay(g, w, wd);
  float si = s + gi * gi;
  s = si;
  w -= lr * gi / (std::sqrt(si) + eps);
}
SC_RULE void adagrad(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim, float lr,
                     float eps, float wd) {
  for (int i = 0; i < dim; ++i) adagrad_element(w[i], s[i], g[i], lr, eps, wd);
}

// Rowwise Adagrad: one scalar s per row; s <- s + mean(g^2); w <- w - lr * g / (sqrt(s) + eps)
// The whole-row part: sum of the decayed gradient's squares in element order, the new s and
// the row's step lr / (sqrt(s) + eps).
SC_RULE float rowwise_sum_sq(const float* __restrict__ w, const float* __restrict__ g, int dim, float wd) {
  float sum_sq = 0.0f;
  for (int i = 0; i < dim; ++i) {
    float gi = l2_decay(g[i], w[i], wd);
    sum_sq += gi * gi;
  }
  return sum_sq;
}
SC_RULE float rowwise_state(float s, float sum_sq, int dim) { return s + sum_sq / static_cast<float>(dim); }
SC_RULE float rowwise_step(float s, float lr, float eps) { return lr / (std::sqrt(s) + eps); }
SC_RULE void rowwise_element(float& w, float g, float step, float wd) { w -= step * l2_decay(g, w, wd); }
SC_RULE void rowwise_adagrad(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim,
                             float lr, float eps, float wd) {
  float si = rowwise_state(s[0], rowwise_sum_sq(w, g, dim, wd), dim);
  s[0] = si;
  float step = rowwise_step(si, lr, eps);
  for (int i = 0; i < dim; ++i) rowwise_element(w[i], g[i], step, wd);
}

// Adam with bias correction at step t (t >= 1); AdamW when `decoupled`:
//   decoupled: w <- w * (1 - lr*wd); otherwise g <- g + wd*w
//   m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
//   w <- w - (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)
// The per-row coefficients of Adam at step t.
struct AdamStep {
  float step, inv_sqrt_bc2, decay, l2;
};
SC_RULE AdamStep adam_step(float lr, float b1, float b2, float wd, bool decoupled, int64_t t) {
  float bc1 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b1), static_cast<double>(t)));
  float bc2 = 1.0f - static_cast<float>(std::pow(static_cast<double>(b2), static_cast<double>(t)));
  return {lr / bc1, 1.0f / std::sqrt(bc2), decoupled ? 1.0f - lr * wd : 1.0f, decoupled ? 0.0f : wd};
}
SC_RULE void adam_element(float& w, float& m, float& v, float g, float b1, float b2, float eps, const AdamStep& a) {
  float wi = w * a.decay;
  float gi = l2_decay(g, w, a.l2);
  float mi = b1 * m + (1.0f - b1) * gi;
  float vi = b2 * v + (1.0f - b2) * gi * gi;
  m = mi;
  v = vi;
  w = wi - a.step * mi / (std::sqrt(vi) * a.inv_sqrt_bc2 + eps);
}
SC_RULE void adam_row(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ g,
                      int dim, float b1, float b2, float eps, const AdamStep& a) {
  for (int i = 0; i < dim; ++i) adam_element(w[i], m[i], v[i], g[i], b1, b2, eps, a);
}
SC_RULE void adam(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ g,
                  int dim, float lr, float b1, float b2, float eps, float wd, bool decoupled, int64_t t) {
  adam_row(w, m, v, g, dim, b1, b2, eps, adam_step(lr, b1, b2, wd, decoupled, t));
}

// FTRL-Proximal (McMahan et al., 2013), per coordinate, alpha = lr:
//   n' = n + g^2;  sigma = (n'^(-p) - n^(-p)) / alpha;  z <- z + g - sigma*w;  n <- n'
//   w = 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + n^(-p)) / alpha + l2)
// with p = lr_power (-0.5 gives the paper's square roots).
SC_RULE float ftrl_pow(float n, float lr_power) {
  return lr_power == -0.5f ? std::sqrt(n) : static_cast<float>(std::pow(n, -lr_power));
}

SC_RULE void ftrl_element(float& w, float& z, float& n, float g, float alpha, float beta, float l1, float l2,
                          float lr_power, float wd) {
  float gi = l2_decay(g, w, wd);
  float n_old = n;
  float n_new = n_old + gi * gi;
  float sigma = (ftrl_pow(n_new, lr_power) - ftrl_pow(n_old, lr_power)) / alpha;
  float zi = z + gi - sigma * w;
  z = zi;
  n = n_new;
  float az = std::fabs(zi);
  w = az <= l1 ? 0.0f : -(zi - (zi > 0.0f ? l1 : -l1)) / ((beta + ftrl_pow(n_new, lr_power)) / alpha + l2);
}
SC_RULE void ftrl(float* __restrict__ w, float* __restrict__ z, float* __restrict__ n, const float* __restrict__ g,
                  int dim, float alpha, float beta, float l1, float l2, float lr_power, float wd) {
  for (int i = 0; i < dim; ++i) ftrl_element(w[i], z[i], n[i], g[i], alpha, beta, l1, l2, lr_power, wd);
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
// The whole-row part: the factor of the soft-threshold, from the norm of the row after the
// Adagrad step (summed in element order).
SC_RULE float group_lasso_scale(const float* __restrict__ w, int dim, float lr, float lambda) {
  float sq = 0.0f;
  for (int i = 0; i < dim; ++i) sq += w[i] * w[i];
  float norm = std::sqrt(sq);
  float scale = norm > 0.0f ? 1.0f - lr * lambda * std::sqrt(static_cast<float>(dim)) / norm : 0.0f;
  return scale < 0.0f ? 0.0f : scale;
}
SC_RULE void group_lasso(float* __restrict__ w, float* __restrict__ s, const float* __restrict__ g, int dim, float lr,
                         float eps, float wd, float lambda) {
  adagrad(w, s, g, dim, lr, eps, wd);
  if (lambda == 0.0f) return;
  const float scale = group_lasso_scale(w, dim, lr, lambda);
  for (int i = 0; i < dim; ++i) w[i] *= scale;
}

// What a rule computes once for all the rows of a call rather than once per row: Adam's
// coefficients when t is the global step (use_global_step), which every row of a call shares.
// They come from the same adam_step as the per-row path, so a row's result is the same bits
// either way; the per-row path then only runs for t = the row's update count. The default
// value hoists nothing.
struct CallCoefficients {
  bool shared_adam = false;
  AdamStep adam{};
};
SC_RULE CallCoefficients call_coefficients(const OptimizerConfig& c, int64_t step) {
  CallCoefficients k;
  if (c.kind == OptimizerKind::kAdam && c.use_global_step) {
    k.shared_adam = true;
    k.adam = adam_step(c.lr, c.beta1, c.beta2, c.weight_decay, c.decoupled_weight_decay, step);
  }
  return k;
}

// Dispatch on the table's rule. `step` is the collection's step (Adam with use_global_step),
// `count` the row's update count with this update (Adam's lazy step, the frequency-scaled L1).
// `k`: call_coefficients(c, step) of the same c and step, or the default (computed per row).
SC_RULE void apply(const OptimizerConfig& c, const CallCoefficients& k, float* __restrict__ w,
                   float* __restrict__ state, const float* __restrict__ g, int dim, int64_t step, uint32_t count) {
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
      adam_row(w, state, state + dim, g, dim, c.beta1, c.beta2, c.eps,
               k.shared_adam ? k.adam : adam_step(c.lr, c.beta1, c.beta2, c.weight_decay, c.decoupled_weight_decay, t));
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

SC_RULE void apply(const OptimizerConfig& c, float* __restrict__ w, float* __restrict__ state,
                   const float* __restrict__ g, int dim, int64_t step, uint32_t count) {
  apply(c, CallCoefficients{}, w, state, g, dim, step, count);
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
