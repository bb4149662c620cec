// Checked views of NumPy arguments for the bindings: the dtype, rank and contiguity checks
// every binding needs, raising TypeError / ValueError that name the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "sparsecore/core/error.h"

namespace sparsecore::python {

namespace py = pybind11;

template <typename T>
const char* dtype_name();
template <>
inline const char* dtype_name<int64_t>() { return "int64"; }
template <>
inline const char* dtype_name<float>() { return "float32"; }
template <>
inline const char* dtype_name<int32_t>() { return "int32"; }
template <>
inline const char* dtype_name<int8_t>() { return "int8"; }
template <>
inline const char* dtype_name<uint8_t>() { return "uint8"; }
template <>
inline const char* dtype_name<int16_t>() { return "int16"; }

// `arr` must be a C-contiguous array of T; `shape` entries < 0 are free. Returns its data.
template <typename T>
const T* checked_array(const py::array& arr, const std::string& what, std::vector<py::ssize_t> shape) {
  if (!py::dtype::of<T>().is(arr.dtype()) && !(arr.dtype().kind() == py::dtype::of<T>().kind() &&
                                               arr.dtype().itemsize() == static_cast<py::ssize_t>(sizeof(T)))) {
    throw TypeMismatch(what + " must have dtype " + dtype_name<T>() + ", got " +
                       std::string(py::str(arr.dtype())));
  }
  if (arr.ndim() != static_cast<py::ssize_t>(shape.size())) {
    throw TypeMismatch(what + " must have " + std::to_string(shape.size()) + " dimension(s), got " +
                       std::to_string(arr.ndim()));
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] >= 0 && arr.shape(d) != shape[d]) {
      std::string want = "(", got = "(";
      for (size_t k = 0; k < shape.size(); ++k) {
        want += (k ? ", " : "") + (shape[k] < 0 ? std::string("*") : std::to_string(shape[k]));
        got += (k ? ", " : "") + std::to_string(arr.shape(k));
      }
      throw InvalidArgument(what + " must have shape " + want + (shape.size() == 1 ? ",)" : ")") + ", got " + got +
                            (shape.size() == 1 ? ",)" : ")"));
    }
  }
  if (!(arr.flags() & py::array::c_style)) throw InvalidArgument(what + " must be C-contiguous");
  return static_cast<const T*>(arr.data());
}

}  // namespace sparsecore::python
