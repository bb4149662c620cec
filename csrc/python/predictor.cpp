// Bindings of the serving layer's DenseGraph (load or build a graph, run it on NumPy inputs)
// and of a served model (load_model: the Predictor over a Subscriber).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/core/error.h"
#include "sparsecore/serving/dense_graph.h"
#include "sparsecore/serving/predictor.h"
#include "sparsecore/serving/subscriber.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::serving;
using sparsecore::python::checked_array;

SPARSECORE_BINDING(predictor, 95) {
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

  py::class_<LoadedModel>(m, "ServedModel", "A model directory served: load_model (serving/predictor.h).")
      .def(py::init([](const std::string& dir) {
             py::gil_scoped_release release;
             return load_model(dir);
           }),
           py::arg("dir"))
      .def_property_readonly("features",
                             [](const LoadedModel& lm) {
                               py::list out;
                               for (const auto& f : lm.predictor->features())
                                 out.append(py::make_tuple(f.input, f.table));
                               return out;
                             })
      .def_property_readonly("dense_width", [](const LoadedModel& lm) { return lm.predictor->dense_width(); })
      .def_property_readonly("output_width", [](const LoadedModel& lm) { return lm.predictor->output_width(); })
      .def_property_readonly("version", [](const LoadedModel& lm) { return lm.subscriber->version(); })
      .def("poll",
           [](LoadedModel& lm) {
             py::gil_scoped_release release;
             return lm.subscriber->poll();
           })
      .def(
          "start",
          [](LoadedModel& lm, double seconds) {
            SC_CHECK_ARG(seconds > 0 && seconds < 86400, "interval must be in (0, 86400) seconds, got ", seconds);
            lm.subscriber->start(std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000 + 0.5)));
          },
          py::arg("interval"))
      .def("stop",
           [](LoadedModel& lm) {
             py::gil_scoped_release release;
             lm.subscriber->stop();
           })
      .def(
          "predict",
          [](const LoadedModel& lm, const py::list& features, const py::object& dense) {
            // features: one (ids int64[n], offsets int64[B + 1], weights float32[n] or None)
            // per feature, in features order; dense (B, dense_width) float32 or None.
            const Predictor& p = *lm.predictor;
            SC_CHECK_ARG(features.size() == p.features().size(), "predict: ", p.features().size(),
                         " features expected, got ", features.size());
            std::vector<FeatureBatch> fb(features.size());
            std::vector<py::array> keep;
            int64_t batch = -1;
            for (size_t f = 0; f < fb.size(); ++f) {
              const std::string& name = p.features()[f].input;
              py::tuple t = py::reinterpret_borrow<py::tuple>(features[f]);
              SC_CHECK_ARG(t.size() == 3, "predict: feature '", name, "' needs (ids, offsets, weights)");
              py::array ids = py::array::ensure(t[0]), offsets = py::array::ensure(t[1]);
              keep.push_back(ids);
              keep.push_back(offsets);
              fb[f].ids = checked_array<int64_t>(ids, name + " ids", {-1});
              fb[f].num_ids = ids.shape(0);
              fb[f].offsets = checked_array<int64_t>(offsets, name + " offsets", {-1});
              const int64_t rows = offsets.shape(0) - 1;
              SC_CHECK_ARG(rows >= 0, "predict: feature '", name, "' offsets are empty");
              SC_CHECK_ARG(batch < 0 || rows == batch, "predict: feature '", name, "' has ", rows,
                           " bags, another feature ", batch);
              batch = rows;
              if (!t[2].is_none()) {
                py::array w = py::array::ensure(t[2]);
                keep.push_back(w);
                fb[f].weights = checked_array<float>(w, name + " weights", {fb[f].num_ids});
              }
            }
            const float* d = nullptr;
            if (!dense.is_none()) {
              py::array a = py::array::ensure(dense);
              keep.push_back(a);
              d = checked_array<float>(a, "dense", {-1, p.dense_width()});
              SC_CHECK_ARG(batch < 0 || a.shape(0) == batch, "predict: dense has ", a.shape(0), " rows, the features ",
                           batch);
              if (batch < 0) batch = a.shape(0);
            }
            if (batch < 0) batch = 0;
            py::array_t<float> out({batch, p.output_width()});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              thread_local PredictorWorkspace ws;
              p.predict(fb.data(), d, batch, o, ws);
            }
            return out;
          },
          py::arg("features"), py::arg("dense") = py::none());
}
