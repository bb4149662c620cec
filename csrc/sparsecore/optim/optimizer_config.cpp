#include "sparsecore/optim/optimizer_config.h"

#include <cmath>
#include <set>

#include "sparsecore/core/error.h"

namespace sparsecore {
namespace {

constexpr struct {
  OptimizerKind kind;
  const char* name;
} kNames[] = {
    {OptimizerKind::kSGD, "sgd"},
    {OptimizerKind::kMomentum, "momentum"},
    {OptimizerKind::kAdagrad, "adagrad"},
    {OptimizerKind::kRowwiseAdagrad, "rowwise_adagrad"},
    {OptimizerKind::kAdam, "adam"},
    {OptimizerKind::kFtrl, "ftrl"},
    {OptimizerKind::kGroupLasso, "group_lasso"},
};

void check_finite(float v, const char* field) {
  SC_CHECK_ARG(std::isfinite(v), "optimizer field '", field, "' must be finite, got ", v);
}

}  // namespace

const char* optimizer_name(OptimizerKind kind) {
  for (const auto& e : kNames)
    if (e.kind == kind) return e.name;
  return "unknown";
}

OptimizerKind optimizer_kind_from_name(const std::string& name) {
  for (const auto& e : kNames)
    if (name == e.name) return e.kind;
  std::string known;
  for (const auto& e : kNames) known += std::string(known.empty() ? "" : ", ") + e.name;
  throw InvalidArgument("unknown optimizer '" + name + "' (known: " + known + ")");
}

void OptimizerConfig::validate() const {
  const std::pair<float, const char*> fields[] = {{lr, "lr"},
                                                  {weight_decay, "weight_decay"},
                                                  {momentum, "momentum"},
                                                  {eps, "eps"},
                                                  {initial_accumulator, "initial_accumulator"},
                                                  {beta1, "beta1"},
                                                  {beta2, "beta2"},
                                                  {ftrl_beta, "beta"},
                                                  {l1, "l1"},
                                                  {l2, "l2"},
                                                  {lr_power, "lr_power"},
                                                  {group_lambda, "group_lambda"},
                                                  {l1_reference_count, "l1_reference_count"}};
  for (const auto& [v, name] : fields) check_finite(v, name);
  SC_CHECK_ARG(lr >= 0.0f, "optimizer 'lr' must be >= 0, got ", lr);
  SC_CHECK_ARG(weight_decay >= 0.0f, "optimizer 'weight_decay' must be >= 0, got ", weight_decay);
  SC_CHECK_ARG(momentum >= 0.0f && momentum < 1.0f, "optimizer 'momentum' must be in [0, 1), got ", momentum);
  SC_CHECK_ARG(!nesterov || kind != OptimizerKind::kMomentum || momentum > 0.0f,
               "optimizer 'nesterov' needs momentum > 0");
  SC_CHECK_ARG(eps > 0.0f, "optimizer 'eps' must be > 0, got ", eps);
  SC_CHECK_ARG(initial_accumulator >= 0.0f, "optimizer 'initial_accumulator' must be >= 0, got ", initial_accumulator);
  SC_CHECK_ARG(beta1 >= 0.0f && beta1 < 1.0f, "optimizer 'beta1' must be in [0, 1), got ", beta1);
  SC_CHECK_ARG(beta2 >= 0.0f && beta2 < 1.0f, "optimizer 'beta2' must be in [0, 1), got ", beta2);
  SC_CHECK_ARG(ftrl_beta >= 0.0f, "optimizer 'beta' (FTRL) must be >= 0, got ", ftrl_beta);
  SC_CHECK_ARG(l1 >= 0.0f, "optimizer 'l1' must be >= 0, got ", l1);
  SC_CHECK_ARG(l2 >= 0.0f, "optimizer 'l2' must be >= 0, got ", l2);
  SC_CHECK_ARG(lr_power <= 0.0f, "optimizer 'lr_power' must be <= 0, got ", lr_power);
  SC_CHECK_ARG(group_lambda >= 0.0f, "optimizer 'group_lambda' must be >= 0, got ", group_lambda);
  SC_CHECK_ARG(l1_reference_count >= 0.0f, "optimizer 'l1_reference_count' must be >= 0, got ", l1_reference_count);
  SC_CHECK_ARG(l1_reference_count == 0.0f || kind == OptimizerKind::kFtrl || kind == OptimizerKind::kGroupLasso,
               "optimizer 'l1_reference_count' applies to FTRL and Group Lasso only");
  if (kind == OptimizerKind::kFtrl) {
    SC_CHECK_ARG(lr > 0.0f, "FTRL needs lr (alpha) > 0, got ", lr);
    SC_CHECK_ARG(ftrl_beta > 0.0f || initial_accumulator > 0.0f || l2 > 0.0f,
                 "FTRL needs beta > 0, initial_accumulator > 0 or l2 > 0 (else the first step divides by 0)");
  }
}

Json OptimizerConfig::to_json() const {
  Json j = Json::object();
  j["name"] = optimizer_name(kind);
  j["lr"] = static_cast<double>(lr);
  j["weight_decay"] = static_cast<double>(weight_decay);
  switch (kind) {
    case OptimizerKind::kMomentum:
      j["momentum"] = static_cast<double>(momentum);
      j["nesterov"] = nesterov;
      break;
    case OptimizerKind::kAdagrad:
    case OptimizerKind::kRowwiseAdagrad:
    case OptimizerKind::kGroupLasso:
      j["eps"] = static_cast<double>(eps);
      j["initial_accumulator"] = static_cast<double>(initial_accumulator);
      if (kind == OptimizerKind::kGroupLasso) j["group_lambda"] = static_cast<double>(group_lambda);
      if (kind == OptimizerKind::kGroupLasso && l1_reference_count != 0.0f)
        j["l1_reference_count"] = static_cast<double>(l1_reference_count);
      break;
    case OptimizerKind::kAdam:
      j["eps"] = static_cast<double>(eps);
      j["beta1"] = static_cast<double>(beta1);
      j["beta2"] = static_cast<double>(beta2);
      j["decoupled_weight_decay"] = decoupled_weight_decay;
      j["use_global_step"] = use_global_step;
      break;
    case OptimizerKind::kFtrl:
      j["beta"] = static_cast<double>(ftrl_beta);
      j["l1"] = static_cast<double>(l1);
      j["l2"] = static_cast<double>(l2);
      j["lr_power"] = static_cast<double>(lr_power);
      j["initial_accumulator"] = static_cast<double>(initial_accumulator);
      if (l1_reference_count != 0.0f) j["l1_reference_count"] = static_cast<double>(l1_reference_count);
      break;
    case OptimizerKind::kSGD:
      break;
  }
  return j;
}

OptimizerConfig OptimizerConfig::from_json(const Json& j) {
  OptimizerConfig c;
  c.kind = optimizer_kind_from_name(j.at("name").as_string("optimizer 'name'"));
  // Defaults that differ by rule, as torch.optim and McMahan 2013 set them.
  if (c.kind == OptimizerKind::kAdam) c.eps = 1e-8f;
  if (c.kind == OptimizerKind::kRowwiseAdagrad) c.eps = 1e-8f;
  if (c.kind == OptimizerKind::kFtrl) c.initial_accumulator = 0.1f;
  static const std::set<std::string> kKnown = {
      "name",     "lr",           "weight_decay",           "momentum",        "nesterov", "eps", "initial_accumulator",
      "beta1",    "beta2",        "decoupled_weight_decay", "use_global_step", "beta",     "l1",  "l2",
      "lr_power", "group_lambda", "l1_reference_count"};
  for (const auto& [key, value] : j.as_object("optimizer")) {
    SC_CHECK_ARG(kKnown.count(key), "unknown optimizer field '", key, "'");
    auto num = [&](const char* what) { return static_cast<float>(value.as_double(what)); };
    if (key == "lr")
      c.lr = num("optimizer 'lr'");
    else if (key == "weight_decay")
      c.weight_decay = num("optimizer 'weight_decay'");
    else if (key == "momentum")
      c.momentum = num("optimizer 'momentum'");
    else if (key == "nesterov")
      c.nesterov = value.as_bool("optimizer 'nesterov'");
    else if (key == "eps")
      c.eps = num("optimizer 'eps'");
    else if (key == "initial_accumulator")
      c.initial_accumulator = num("optimizer 'initial_accumulator'");
    else if (key == "beta1")
      c.beta1 = num("optimizer 'beta1'");
    else if (key == "beta2")
      c.beta2 = num("optimizer 'beta2'");
    else if (key == "decoupled_weight_decay")
      c.decoupled_weight_decay = value.as_bool("optimizer 'decoupled_weight_decay'");
    else if (key == "use_global_step")
      c.use_global_step = value.as_bool("optimizer 'use_global_step'");
    else if (key == "beta")
      c.ftrl_beta = num("optimizer 'beta'");
    else if (key == "l1")
      c.l1 = num("optimizer 'l1'");
    else if (key == "l2")
      c.l2 = num("optimizer 'l2'");
    else if (key == "lr_power")
      c.lr_power = num("optimizer 'lr_power'");
    else if (key == "group_lambda")
      c.group_lambda = num("optimizer 'group_lambda'");
    else if (key == "l1_reference_count")
      c.l1_reference_count = num("optimizer 'l1_reference_count'");
  }
  c.validate();
  return c;
}

}  // namespace sparsecore
