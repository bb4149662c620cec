// Bindings of the serving layer's DenseGraph (load or build a graph, run it on NumPy inputs)
// of a served model (load_model: the Predictor over a Subscriber), and of the prediction
// server and its client.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/core/error.h"
#include "sparsecore/serving/dense_graph.h"
#include "sparsecore/serving/predict_client.h"
#include "sparsecore/serving/predict_server.h"
#include "sparsecore/serving/predictor.h"
#include "sparsecore/serving/subscriber.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::serving;
using sparsecore::python::checked_array;

namespace {

// A predict call's inputs from Python: one (ids int64[n], offsets int64[B + 1], weights
// float32[n] or None) per feature, in the model's order; dense (B, dense_width) float32 or
// None. Keeps the arrays alive while the views are used. name_of(f) (a string that outlives
// the batch) names feature f in messages, which alone build strings.
struct PythonBatch {
  std::vector<FeatureBatch> features;
  const float* dense = nullptr;
  int64_t batch = 0;
  std::vector<py::array> keep;

  template <typename NameOf>
  PythonBatch(size_t num_features, const NameOf& name_of, int64_t dense_width, const py::list& parts,
              const py::object& dense_rows) {
    SC_CHECK_ARG(parts.size() == num_features, "predict: ", num_features, " features expected, got ", parts.size());
    features.resize(parts.size());
    keep.reserve(3 * parts.size() + 1);
    int64_t rows_seen = -1;
    for (size_t f = 0; f < features.size(); ++f) {
      const std::string& name = name_of(f);
      py::tuple t = py::reinterpret_borrow<py::tuple>(parts[f]);
      SC_CHECK_ARG(t.size() == 3, "predict: feature '", name, "' needs (ids, offsets, weights)");
      py::array ids = py::array::ensure(t[0]), offsets = py::array::ensure(t[1]);
      keep.push_back(ids);
      keep.push_back(offsets);
      features[f].ids = checked_array<int64_t>(ids, {name, " ids"}, {-1});
      features[f].num_ids = ids.shape(0);
      features[f].offsets = checked_array<int64_t>(offsets, {name, " offsets"}, {-1});
      const int64_t rows = offsets.shape(0) - 1;
      SC_CHECK_ARG(rows >= 0, "predict: feature '", name, "' offsets are empty");
      SC_CHECK_ARG(rows_seen < 0 || rows == rows_seen, "predict: feature '", name, "' has ", rows,
                   " bags, another feature ", rows_seen);
      rows_seen = rows;
      if (!t[2].is_none()) {
        py::array w = py::array::ensure(t[2]);
        keep.push_back(w);
        features[f].weights = checked_array<float>(w, {name, " weights"}, {features[f].num_ids});
      }
    }
    if (!dense_rows.is_none()) {
      py::array a = py::array::ensure(dense_rows);
      keep.push_back(a);
      dense = checked_array<float>(a, "dense", {-1, dense_width});
      SC_CHECK_ARG(rows_seen < 0 || a.shape(0) == rows_seen, "predict: dense has ", a.shape(0), " rows, the features ",
                   rows_seen);
      if (rows_seen < 0) rows_seen = a.shape(0);
    }
    batch = std::max<int64_t>(rows_seen, 0);
  }
};

}  // namespace

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
      .def_property_readonly("columns",
                             [](const LoadedModel& lm) {
                               std::vector<std::vector<std::string>> out;
                               for (const auto& f : lm.predictor->features()) out.push_back(f.columns);
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
            const Predictor& p = *lm.predictor;
            const auto& specs = p.features();
            PythonBatch in(
                specs.size(), [&specs](size_t f) -> const std::string& { return specs[f].input; }, p.dense_width(),
                features, dense);
            const int64_t batch = in.batch;
            py::array_t<float> out({batch, p.output_width()});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              thread_local PredictorWorkspace ws;
              p.predict(in.features.data(), in.dense, batch, o, ws);
            }
            return out;
          },
          py::arg("features"), py::arg("dense") = py::none());

  py::class_<PredictServer>(m, "PredictServer",
                            "A model directory served over RPC and HTTP with batching (serving/predict_server.h).")
      .def(py::init([](const std::string& dir, const std::string& address, int port, int http_port,
                       const std::string& token, int reactors, int max_batch, int max_wait_us, int threads,
                       int max_queued, int default_timeout_ms, int http_timeout_ms, size_t max_body_bytes,
                       int max_http_connections, int poll_interval_ms) {
             PredictServerOptions o;
             o.address = address;
             o.port = port;
             o.http_port = http_port;
             o.token = token;
             o.reactors = reactors;
             o.batcher.max_batch = max_batch;
             o.batcher.max_wait_us = max_wait_us;
             o.batcher.threads = threads;
             o.batcher.max_queued = max_queued;
             o.default_timeout_ms = default_timeout_ms;
             o.http_timeout_ms = http_timeout_ms;
             o.max_body_bytes = max_body_bytes;
             o.max_http_connections = max_http_connections;
             o.poll_interval_ms = poll_interval_ms;
             py::gil_scoped_release release;
             return std::make_unique<PredictServer>(dir, o);
           }),
           py::arg("dir"), py::arg("address"), py::arg("port"), py::arg("http_port"), py::arg("token"),
           py::arg("reactors"), py::arg("max_batch"), py::arg("max_wait_us"), py::arg("threads"), py::arg("max_queued"),
           py::arg("default_timeout_ms"), py::arg("http_timeout_ms"), py::arg("max_body_bytes"),
           py::arg("max_http_connections"), py::arg("poll_interval_ms"))
      .def("start",
           [](PredictServer& s) {
             py::gil_scoped_release release;
             s.start();
           })
      .def("stop",
           [](PredictServer& s) {
             py::gil_scoped_release release;
             s.stop();
           })
      .def_property_readonly("port", &PredictServer::port)
      .def_property_readonly("http_port", &PredictServer::http_port)
      .def_property_readonly("version", &PredictServer::version)
      .def("metrics", &PredictServer::metrics)
      .def("stats", [](const PredictServer& s) {
        const BatcherStats b = s.batcher_stats();
        py::dict d;
        d["requests"] = b.requests;
        d["samples"] = b.samples;
        d["batches"] = b.batches;
        d["rejected"] = b.rejected;
        d["deadline_exceeded"] = b.deadline_exceeded;
        d["failed"] = b.failed;
        d["queued"] = b.queued;
        return d;
      });

  py::class_<PredictClient>(m, "PredictClient", "The RPC client of a PredictServer (serving/predict_client.h).")
      .def(py::init(
               [](const std::string& host, int port, const std::string& token, int timeout_ms, int connect_timeout_ms) {
                 rpc::ClientOptions o;
                 o.token = token;
                 o.call_timeout_ms = timeout_ms;
                 o.connect_timeout_ms = connect_timeout_ms;
                 py::gil_scoped_release release;
                 return std::make_unique<PredictClient>(host, port, o);
               }),
           py::arg("host"), py::arg("port"), py::arg("token"), py::arg("timeout_ms"), py::arg("connect_timeout_ms"))
      .def_property_readonly("features", [](const PredictClient& c) { return c.info().features; })
      .def_property_readonly("columns", [](const PredictClient& c) { return c.info().columns; })
      .def_property_readonly("dense_width", [](const PredictClient& c) { return c.info().dense_width; })
      .def_property_readonly("output_width", [](const PredictClient& c) { return c.info().output_width; })
      .def("refresh",
           [](PredictClient& c) {
             py::gil_scoped_release release;
             return c.refresh().version;
           })
      .def(
          "predict",
          [](PredictClient& c, const py::list& features, const py::object& dense, int timeout_ms) {
            const std::vector<std::string>& names = c.info().features;
            PythonBatch in(
                names.size(), [&names](size_t f) -> const std::string& { return names[f]; }, c.info().dense_width,
                features, dense);
            py::array_t<float> out({in.batch, c.info().output_width});
            float* o = out.mutable_data();
            int64_t version;
            {
              py::gil_scoped_release release;
              version = c.predict(in.features.data(), in.features.size(), in.dense, in.batch, o, timeout_ms);
            }
            return py::make_tuple(out, version);
          },
          py::arg("features"), py::arg("dense") = py::none(), py::arg("timeout_ms") = -1);
}
