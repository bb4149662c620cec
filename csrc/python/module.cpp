// The extension module sparsecore._core: runs every registered binding in order.
#include <algorithm>

#include "binding_registry.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "sparsecore compiled core (use the sparsecore package, not this module directly)";
  auto entries = sparsecore::python::binding_registry();
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.order < b.order; });
  for (const auto& e : entries) e.fn(m);
}
