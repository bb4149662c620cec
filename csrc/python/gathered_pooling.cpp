// Bindings of ops/gathered_pooling.h: the collection's pooling and gradient scaling applied to
// rows gathered by the caller (the cluster collection's rows pulled from servers).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/ops/gathered_pooling.h"

namespace py = pybind11;
using namespace sparsecore;
using sparsecore::python::checked_array;

namespace {

const int64_t* checked_offsets(const py::array& offsets) {
  const int64_t* off = checked_array<int64_t>(offsets, "offsets", {-1});
  if (offsets.shape(0) < 1) throw InvalidArgument("offsets must have at least one element (B + 1)");
  return off;
}

const float* optional_weights(const std::optional<py::array>& weights, int64_t n) {
  return weights ? checked_array<float>(*weights, "weights", {n}) : nullptr;
}

}  // namespace

SPARSECORE_BINDING(gathered_pooling, 31) {
  m.def(
      "pool_gathered_rows",
      [](const py::array& rows, const py::array& offsets, const std::optional<py::array>& weights,
         const std::string& pooling) {
        const int64_t* off = checked_offsets(offsets);
        const int64_t batch = offsets.shape(0) - 1;
        const float* r = checked_array<float>(rows, "rows", {-1, -1});
        const int64_t n = rows.shape(0), dim = rows.shape(1);
        if (off[0] != 0 || off[batch] != n)
          throw InvalidArgument("offsets must start at 0 and end at the number of rows (" + std::to_string(n) + ")");
        if (dim < 1 || dim > INT32_MAX) throw InvalidArgument("rows must have 1 to 2^31 - 1 columns");
        const float* w = optional_weights(weights, n);
        const Pooling p = pooling_from_name(pooling);
        py::array_t<float> out = p == Pooling::kNone
                                     ? py::array_t<float>({batch, longest_bag(off, batch), dim})
                                     : py::array_t<float>({batch, dim});
        float* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          pool_gathered_rows(r, static_cast<int>(dim), off, batch, w, p, o);
        }
        return out;
      },
      py::arg("rows"), py::arg("offsets"), py::arg("weights") = py::none(), py::arg("pooling") = "sum",
      "Pools rows (float32[n, dim], one per id position) over CSR offsets as the collection's "
      "forward does: float32[B, dim], or [B, L_max, dim] zero-padded for pooling 'none'.");
  m.def(
      "bag_gradient_scales",
      [](const py::array& offsets, const std::optional<py::array>& weights, const std::string& pooling) {
        const int64_t* off = checked_offsets(offsets);
        const int64_t batch = offsets.shape(0) - 1;
        if (off[0] != 0 || off[batch] < 0) throw InvalidArgument("offsets must start at 0 and end at len(weights)");
        const float* w = optional_weights(weights, off[batch]);
        py::array_t<float> out(batch);
        bag_gradient_scales(pooling_from_name(pooling), off, batch, w, out.mutable_data());
        return out;
      },
      py::arg("offsets"), py::arg("weights") = py::none(), py::arg("pooling") = "sum",
      "The factor of each bag's gradient in the collection's backward: float32[B] (1 for sum and "
      "none; 1 / length or 1 / weight sum for mean, 0 for an empty bag).");
}
