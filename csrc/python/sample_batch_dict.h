// A SampleBatch as the Python package receives it from readers and the synthetic generator:
// a dict of NumPy arrays that take over the batch's vectors (no copy). sparsecore.data turns
// it into a Batch.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "array_args.h"
#include "sparsecore/io/sample_batch.h"

namespace sparsecore::python {

inline py::dict batch_to_python(io::SampleBatch&& b) {
  const auto B = static_cast<py::ssize_t>(b.num_samples);
  py::dict d;
  d["num_samples"] = b.num_samples;
  d["labels"] = b.has_labels ? py::object(to_numpy(std::move(b.labels), {B})) : py::none();
  d["dense"] = b.dense_dim > 0 ? py::object(to_numpy(std::move(b.dense), {B, static_cast<py::ssize_t>(b.dense_dim)}))
                               : py::none();
  py::list groups;
  for (auto& g : b.groups) {
    const auto n = static_cast<py::ssize_t>(g.ids.size());
    const auto bags = static_cast<py::ssize_t>(g.offsets.size());
    groups.append(py::make_tuple(g.name, to_numpy(std::move(g.ids), {n}), to_numpy(std::move(g.offsets), {bags}),
                                 g.weighted ? py::object(to_numpy(std::move(g.weights), {n})) : py::none(), g.shared));
  }
  d["groups"] = groups;
  d["sample_group"] = b.compressed() ? py::object(to_numpy(std::move(b.sample_group), {B})) : py::none();
  d["probabilities"] = b.probabilities.empty() ? py::none() : py::object(to_numpy(std::move(b.probabilities), {B}));
  d["users"] = b.users.empty() ? py::none() : py::object(to_numpy(std::move(b.users), {B}));
  return d;
}

}  // namespace sparsecore::python
