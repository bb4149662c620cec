// Binding of the serving layer's DenseGraph: load or build a graph, run it on NumPy inputs.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/core/error.h"
#include "sparsecore/serving/dense_graph.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::serving;
using sparsecore::python::checked_array;

SPARSECORE_BINDING(dense_graph, 80) {
  py::class_<DenseGraph>(m, "DenseGraph",
                         "The dense network of an exported model (serving/dense_graph.h), run without Python.")
      .def(py::init([](const std::string& graph_json, const py::bytes& tensors) {
             std::string_view bytes = tensors;
             Json graph = Json::parse(graph_json);
             return DenseGraph(graph, std::vector<uint8_t>(bytes.begin(), bytes.end()));
           }),
           py::arg("graph_json"), py::arg("tensors"))
      .def_static("load", &DenseGraph::load, py::arg("dir"), "Reads dir/dense.json and dir/dense.bin.")
      .def_property_readonly("inputs",
                             [](const DenseGraph& g) {
                               py::list out;
                               for (const auto& s : g.inputs()) out.append(py::make_tuple(s.name, s.kind, s.width));
                               return out;
                             })
      .def_property_readonly("output_width", &DenseGraph::output_width)
      .def_property_readonly("num_nodes", &DenseGraph::num_nodes)
      .def(
          "run",
          [](const DenseGraph& g, const py::dict& values, const py::dict& lengths) {
            // inputs by name: (batch, width) float32, or (batch, max_len, width) for a sequence
            // with lengths[name] (batch) int64.
            std::vector<DenseInputView> views(g.inputs().size());
            std::vector<py::array> keep;
            int64_t batch = -1;
            for (size_t k = 0; k < views.size(); ++k) {
              const auto& spec = g.inputs()[k];
              if (!values.contains(spec.name))
                throw InvalidArgument("dense graph: input '" + spec.name + "' is missing");
              py::array a = py::array::ensure(values[py::str(spec.name)]);
              keep.push_back(a);
              const bool seq = spec.kind == "sequence";
              const float* p = checked_array<float>(
                  a, spec.name,
                  seq ? std::vector<py::ssize_t>{-1, -1, spec.width} : std::vector<py::ssize_t>{-1, spec.width});
              const int64_t rows = a.shape(0);
              SC_CHECK_ARG(batch < 0 || rows == batch, "dense graph: input '", spec.name, "' has ", rows,
                           " rows, another input ", batch);
              batch = rows;
              views[k].values = p;
              if (seq) {
                views[k].max_len = a.shape(1);
                if (!lengths.contains(spec.name))
                  throw InvalidArgument("dense graph: sequence input '" + spec.name + "' needs lengths");
                py::array l = py::array::ensure(lengths[py::str(spec.name)]);
                keep.push_back(l);
                views[k].lengths = checked_array<int64_t>(l, spec.name + " lengths", {rows});
              }
            }
            if (batch < 0) batch = 0;
            py::array_t<float> out({batch, g.output_width()});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              thread_local DenseWorkspace ws;
              g.run(views.data(), batch, o, ws);
            }
            return out;
          },
          py::arg("values"), py::arg("lengths") = py::dict());
}
