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
        py::array_t<float> out = p == Pooling::kNone ? py::array_t<float>({batch, longest_bag(off, batch), dim})
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
  m.def(
      "sum_gradients_by_id",
      [](const py::array& ids, const py::array& offsets, const py::array& grad, const std::optional<py::array>& weights,
         const std::string& pooling) {
        const int64_t* off = checked_offsets(offsets);
        const int64_t batch = offsets.shape(0) - 1;
        const int64_t* id = checked_array<int64_t>(ids, "ids", {-1});
        const int64_t n = ids.shape(0);
        if (off[0] != 0 || off[batch] != n)
          throw InvalidArgument("offsets must start at 0 and end at len(ids) (" + std::to_string(n) + ")");
        const Pooling p = pooling_from_name(pooling);
        const float* w = optional_weights(weights, n);
        const float* g = nullptr;
        int64_t dim = 0;
        if (p == Pooling::kNone) {
          g = checked_array<float>(grad, "grad", {batch, longest_bag(off, batch), -1});
          dim = grad.shape(2);
        } else {
          g = checked_array<float>(grad, "grad", {batch, -1});
          dim = grad.shape(1);
        }
        if (dim < 1 || dim > INT32_MAX) throw InvalidArgument("grad must have 1 to 2^31 - 1 columns");
        std::vector<int64_t> unique_ids;
        std::vector<float> unique_grads;
        {
          py::gil_scoped_release release;
          sum_gradients_by_id(id, static_cast<int>(dim), off, batch, w, p, g, unique_ids, unique_grads);
        }
        const auto u = static_cast<int64_t>(unique_ids.size());
        py::array_t<int64_t> out_ids(u);
        py::array_t<float> out_grads({u, dim});
        std::copy(unique_ids.begin(), unique_ids.end(), out_ids.mutable_data());
        std::copy(unique_grads.begin(), unique_grads.end(), out_grads.mutable_data());
        return py::make_tuple(out_ids, out_grads);
      },
      py::arg("ids"), py::arg("offsets"), py::arg("grad"), py::arg("weights") = py::none(), py::arg("pooling") = "sum",
      "The gradient a worker pushes for a group: (int64[U] distinct ids in first-occurrence order, "
      "float32[U, dim] each id's gradient summed over its positions exactly as the collection's "
      "backward sums it). grad: float32[B, dim], or [B, L_max, dim] for pooling 'none'.");
}
