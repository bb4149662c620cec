// Each csrc/python/<layer>.cpp registers one function that adds its classes to the module:
//
//   SPARSECORE_BINDING(table, 20) { py::class_<...>(m, ...); }
//
// The number orders registration (a layer's types before the layers that use them), so no
// central file lists the layers. Bindings stay thin: convert, release the GIL, call.
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <vector>

namespace sparsecore::python {

namespace py = pybind11;

struct BindingEntry {
  int order;
  const char* name;
  void (*fn)(py::module_&);
};

inline std::vector<BindingEntry>& binding_registry() {
  static std::vector<BindingEntry> entries;
  return entries;
}

struct BindingRegistrar {
  BindingRegistrar(int order, const char* name, void (*fn)(py::module_&)) {
    binding_registry().push_back({order, name, fn});
  }
};

}  // namespace sparsecore::python

#define SPARSECORE_BINDING(name, order)                                                                             \
  static void sparsecore_bind_##name(::pybind11::module_& m);                                                       \
  static ::sparsecore::python::BindingRegistrar sparsecore_registrar_##name(order, #name, &sparsecore_bind_##name); \
  static void sparsecore_bind_##name(::pybind11::module_& m)
