// Checked views of NumPy arguments for the bindings: the dtype, rank and contiguity checks
// every binding needs, raising TypeError / ValueError that name the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::python {

namespace py = pybind11;

template <typename T>
const char* dtype_name();
template <>
inline const char* dtype_name<int64_t>() {
  return "int64";
}
template <>
inline const char* dtype_name<float>() {
  return "float32";
}
template <>
inline const char* dtype_name<int32_t>() {
  return "int32";
}
template <>
inline const char* dtype_name<int8_t>() {
  return "int8";
}
template <>
inline const char* dtype_name<uint8_t>() {
  return "uint8";
}
template <>
inline const char* dtype_name<int16_t>() {
  return "int16";
}

// A NumPy array that takes ownership of `v` (no copy).
template <typename T>
py::array to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  if (v.empty()) return py::array_t<T>(shape);
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, owned->data(), owner);
}

// The name of an argument in messages: head then tail (a feature's name, then " ids"),
// joined only when a message is raised, so that a call whose arguments are right builds no
// string. Holds views: the strings must outlive it (a temporary lives to the end of the call).
struct ArgName {
  ArgName(const std::string& head) : head(head) {}
  ArgName(const char* head) : head(head) {}
  ArgName(std::string_view head, std::string_view tail) : head(head), tail(tail) {}
  std::string str() const { return std::string(head).append(tail); }
  std::string_view head, tail;
};

// `arr` must be a C-contiguous array of T; `shape` entries < 0 are free. Returns its data.
template <typename T>
const T* checked_array(const py::array& arr, ArgName name, std::vector<py::ssize_t> shape) {
  if (!py::dtype::of<T>().is(arr.dtype()) && !(arr.dtype().kind() == py::dtype::of<T>().kind() &&
                                               arr.dtype().itemsize() == static_cast<py::ssize_t>(sizeof(T)))) {
    throw TypeMismatch(name.str() + " must have dtype " + dtype_name<T>() + ", got " +
                       std::string(py::str(arr.dtype())));
  }
  if (arr.ndim() != static_cast<py::ssize_t>(shape.size())) {
    throw TypeMismatch(name.str() + " must have " + std::to_string(shape.size()) + " dimension(s), got " +
                       std::to_string(arr.ndim()));
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] >= 0 && arr.shape(d) != shape[d]) {
      std::string want = "(", got = "(";
      for (size_t k = 0; k < shape.size(); ++k) {
        want += (k ? ", " : "") + (shape[k] < 0 ? std::string("*") : std::to_string(shape[k]));
        got += (k ? ", " : "") + std::to_string(arr.shape(k));
      }
      throw InvalidArgument(name.str() + " must have shape " + want + (shape.size() == 1 ? ",)" : ")") + ", got " +
                            got + (shape.size() == 1 ? ",)" : ")"));
    }
  }
  if (!(arr.flags() & py::array::c_style)) throw InvalidArgument(name.str() + " must be C-contiguous");
  return static_cast<const T*>(arr.data());
}

// A (rows, cols) float32 array whose rows may be strided (a column block of a wider matrix:
// `m[:, c0:c1]`), elements of a row contiguous, aligned to float. Returns (data, row stride in
// floats); `writable` also requires a writeable array. TypeError / ValueError name `what`.
inline std::pair<float*, int64_t> row_strided_floats(const py::array& arr, const std::string& what, py::ssize_t rows,
                                                     py::ssize_t cols, bool writable) {
  if (!py::dtype::of<float>().is(arr.dtype()))
    throw TypeMismatch(what + " must have dtype float32, got " + std::string(py::str(arr.dtype())));
  if (arr.ndim() != 2) throw TypeMismatch(what + " must have 2 dimensions, got " + std::to_string(arr.ndim()));
  if (arr.shape(0) != rows || arr.shape(1) != cols)
    throw InvalidArgument(what + " must have shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                          "), got (" + std::to_string(arr.shape(0)) + ", " + std::to_string(arr.shape(1)) + ")");
  const py::ssize_t f = sizeof(float);
  const py::ssize_t s0 = rows > 1 ? arr.strides(0) : cols * f, s1 = cols > 1 ? arr.strides(1) : f;
  if (s1 != f || s0 % f != 0 || s0 < cols * f || reinterpret_cast<uintptr_t>(arr.data()) % alignof(float) != 0)
    throw InvalidArgument(what + " must have contiguous, float-aligned rows that do not overlap (row stride " +
                          std::to_string(s0) + " bytes, element stride " + std::to_string(s1) + ")");
  if (writable && !arr.writeable()) throw InvalidArgument(what + " must be writeable");
  return {static_cast<float*>(const_cast<void*>(arr.data())), s0 / f};
}

// A batch's groups as the bindings receive them, each a tuple (table index, ids int64[n],
// offsets int64[B+1], weights float32[n] or None). The returned pointers stay valid while `keep_alive` holds the arrays
// (an element that was not an array already is converted into one there). table_name(index) names a group in messages
// (and throws for an index out of range).
template <typename TableName>
std::vector<GroupInput> group_inputs(const std::vector<py::tuple>& groups, std::vector<py::array>& keep_alive,
                                     const TableName& table_name) {
  std::vector<GroupInput> inputs;
  inputs.reserve(groups.size());
  for (const py::tuple& grp : groups) {
    GroupInput in;
    in.table = grp[0].cast<int>();
    std::string name = "group '" + std::string(table_name(in.table)) + "'";
    py::array ids = grp[1].cast<py::array>();
    py::array offsets = grp[2].cast<py::array>();
    in.ids = checked_array<int64_t>(ids, name + " ids", {-1});
    in.num_ids = ids.shape(0);
    keep_alive.push_back(ids);
    keep_alive.push_back(offsets);
    in.offsets = checked_array<int64_t>(offsets, name + " offsets", {-1});
    if (offsets.shape(0) < 1) throw InvalidArgument(name + " offsets must have at least one element (B + 1)");
    in.batch_size = offsets.shape(0) - 1;
    if (!grp[3].is_none()) {
      py::array w = grp[3].cast<py::array>();
      in.weights = checked_array<float>(w, name + " weights", {in.num_ids});
      keep_alive.push_back(w);
    }
    inputs.push_back(in);
  }
  return inputs;
}

}  // namespace sparsecore::python
