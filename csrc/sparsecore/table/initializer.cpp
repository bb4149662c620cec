#include "sparsecore/table/initializer.h"

#include "sparsecore/core/error.h"

namespace sparsecore {
namespace {

constexpr const char* kInitNames[] = {"zeros", "constant", "uniform", "normal", "truncated_normal"};

}  // namespace

void InitializerConfig::validate() const {
  SC_CHECK_ARG(std::isfinite(a) && std::isfinite(b), "initializer parameters must be finite, got ", a, ", ", b);
  if (kind == InitKind::kUniform) SC_CHECK_ARG(a <= b, "uniform initializer needs low <= high, got ", a, " > ", b);
  if (kind == InitKind::kNormal || kind == InitKind::kTruncatedNormal)
    SC_CHECK_ARG(b >= 0.0f, "normal initializer needs std >= 0, got ", b);
}

Json InitializerConfig::to_json() const {
  Json j = Json::object();
  j["name"] = kInitNames[static_cast<int>(kind)];
  switch (kind) {
    case InitKind::kZeros:
      break;
    case InitKind::kConstant:
      j["value"] = static_cast<double>(a);
      break;
    case InitKind::kUniform:
      j["low"] = static_cast<double>(a);
      j["high"] = static_cast<double>(b);
      break;
    case InitKind::kNormal:
    case InitKind::kTruncatedNormal:
      j["mean"] = static_cast<double>(a);
      j["std"] = static_cast<double>(b);
      break;
  }
  return j;
}

InitializerConfig InitializerConfig::from_json(const Json& j) {
  InitializerConfig c;
  const std::string& name = j.at("name").as_string("initializer 'name'");
  int found = -1;
  for (int i = 0; i < 5; ++i)
    if (name == kInitNames[i]) found = i;
  SC_CHECK_ARG(found >= 0, "unknown initializer '", name,
               "' (known: zeros, constant, uniform, normal, truncated_normal)");
  c.kind = static_cast<InitKind>(found);
  auto field = [&](const char* key, float def) {
    const Json* v = j.get(key);
    return v ? static_cast<float>(v->as_double(std::string("initializer '") + key + "'")) : def;
  };
  for (const auto& [key, value] : j.as_object("initializer")) {
    bool ok = key == "name";
    switch (c.kind) {
      case InitKind::kZeros:
        break;
      case InitKind::kConstant:
        ok |= key == "value";
        break;
      case InitKind::kUniform:
        ok |= key == "low" || key == "high";
        break;
      default:
        ok |= key == "mean" || key == "std";
        break;
    }
    SC_CHECK_ARG(ok, "unknown field '", key, "' for initializer '", name, "'");
  }
  switch (c.kind) {
    case InitKind::kZeros:
      c.a = c.b = 0.0f;
      break;
    case InitKind::kConstant:
      c.a = field("value", 0.0f);
      c.b = 0.0f;
      break;
    case InitKind::kUniform:
      c.a = field("low", -0.01f);
      c.b = field("high", 0.01f);
      break;
    default:
      c.a = field("mean", 0.0f);
      c.b = field("std", 0.01f);
      break;
  }
  c.validate();
  return c;
}

}  // namespace sparsecore
