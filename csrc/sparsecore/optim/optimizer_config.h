// OptimizerConfig: which update rule a table uses and its hyperparameters.
//
// Fixed when a table is created; saved in checkpoints' manifests through to_json / from_json.
// Defaults follow torch.optim where torch has the optimizer (docs/api/config.md lists them).
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/core/host_device.h"
#include "sparsecore/core/json.h"

namespace sparsecore {

enum class OptimizerKind : uint8_t {
  kSGD = 0,
  kMomentum = 1,
  kAdagrad = 2,
  kRowwiseAdagrad = 3,
  kAdam = 4,
  kFtrl = 5,
  kGroupLasso = 6,
};

const char* optimizer_name(OptimizerKind kind);
// Throws InvalidArgument listing the known names.
OptimizerKind optimizer_kind_from_name(const std::string& name);

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::kSGD;
  float lr = 0.01f;
  float weight_decay = 0.0f;  // L2 added to the gradient; decoupled for Adam when `decoupled_weight_decay`
  // Momentum
  float momentum = 0.9f;
  bool nesterov = false;
  // Adagrad, rowwise Adagrad, Group Lasso (the Adagrad part), Adam
  float eps = 1e-10f;
  float initial_accumulator = 0.0f;  // Adagrad s0; FTRL n0
  // Adam
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  bool decoupled_weight_decay = false;  // AdamW
  bool use_global_step = false;         // bias correction by the collection's step, not the row's count
  // FTRL-Proximal (McMahan et al. 2013): alpha = lr
  float ftrl_beta = 1.0f;
  float l1 = 0.0f;
  float l2 = 0.0f;
  float lr_power = -0.5f;
  // Group Lasso: the group soft-threshold strength
  float group_lambda = 0.0f;
  // FTRL and Group Lasso: n0 of the frequency-scaled L1 strength (optim/update_rules.h
  // frequency_scaled_l1: lambda * min(1, sqrt(n0 / update count))); 0: the same for every row.
  float l1_reference_count = 0.0f;

  // Number of float32 state values stored in each row after its `dim` weights.
  SC_HOST_DEVICE int state_dim(int dim) const {
    switch (kind) {
      case OptimizerKind::kSGD:
        return 0;
      case OptimizerKind::kRowwiseAdagrad:
        return 1;
      case OptimizerKind::kAdam:
      case OptimizerKind::kFtrl:
        return 2 * dim;
      default:
        return dim;  // Momentum m, Adagrad s, Group Lasso s
    }
  }

  // Throws InvalidArgument naming the field when a hyperparameter is out of range
  // (negative lr, eps <= 0, betas outside [0, 1), lr_power > 0, ...).
  void validate() const;

  Json to_json() const;
  // Unknown fields are rejected (a typo must not silently fall back to a default).
  static OptimizerConfig from_json(const Json& j);
};

}  // namespace sparsecore
