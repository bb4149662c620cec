// Bindings of the serving layer: incremental export of an embedded collection, the export
// reader and the Subscriber.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/serving/export.h"
#include "sparsecore/serving/subscriber.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::serving;
using sparsecore::python::checked_array;
using sparsecore::python::to_numpy;

SPARSECORE_BINDING(serving, 90) {
  m.def(
      "export_full",
      [](EmbeddingCollection& c, const std::string& dir, const std::string& dtype) {
        const ExportDtype d = export_dtype_from_name(dtype);
        py::gil_scoped_release release;
        return export_full(c, dir, d);
      },
      py::arg("collection"), py::arg("dir"), py::arg("dtype") = "fp32");
  m.def(
      "export_delta",
      [](EmbeddingCollection& c, const std::string& dir, int64_t since, const std::string& dtype) {
        const ExportDtype d = export_dtype_from_name(dtype);
        py::gil_scoped_release release;
        return export_delta(c, dir, since, d);
      },
      py::arg("collection"), py::arg("dir"), py::arg("since"), py::arg("dtype") = "fp32");
  m.def(
      "set_deleted_keys_capacity",
      [](EmbeddingCollection& c, int t, int64_t capacity) {
        SC_CHECK_ARG(capacity >= 1, "capacity must be >= 1, got ", capacity);
        c.table(t).deleted_keys().set_capacity(static_cast<size_t>(capacity));
      },
      py::arg("collection"), py::arg("table"), py::arg("capacity"));
  m.def(
      "read_export_part",
      [](const std::string& dir) {
        ExportPart p;
        {
          py::gil_scoped_release release;
          p = read_export_part(dir);
        }
        py::dict tables;
        for (auto& t : p.tables) {
          py::dict d;
          const auto rows = static_cast<py::ssize_t>(t.keys.size());
          d["keys"] = to_numpy(std::move(t.keys), {rows});
          d["weights"] = to_numpy(std::move(t.weights), {rows, static_cast<py::ssize_t>(t.config.dim)});
          const auto deleted = static_cast<py::ssize_t>(t.deleted.size());
          d["deleted"] = to_numpy(std::move(t.deleted), {deleted});
          tables[py::str(t.config.name)] = d;
        }
        py::dict out;
        out["kind"] = p.delta ? "delta" : "full";
        out["version"] = p.version;
        out["since"] = p.delta ? py::object(py::int_(p.since)) : py::none();
        out["part"] = p.part;
        out["num_parts"] = p.num_parts;
        out["dtype"] = export_dtype_name(p.dtype);
        out["tables"] = tables;
        return out;
      },
      py::arg("dir"));
  m.def("complete_export_parts", &complete_export_parts, py::arg("export_dir"));

  py::class_<Subscriber>(m, "Subscriber")
      .def(py::init<std::string>(), py::arg("stream_dir"))
      .def_property_readonly("stream_dir", &Subscriber::stream_dir)
      .def("poll", &Subscriber::poll, py::call_guard<py::gil_scoped_release>())
      .def("apply", &Subscriber::apply, py::arg("export_dir"), py::call_guard<py::gil_scoped_release>())
      .def(
          "start",
          [](Subscriber& s, double seconds) {
            SC_CHECK_ARG(seconds > 0 && seconds < 1e7, "interval must be in (0, 1e7) seconds, got ", seconds);
            s.start(std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(seconds * 1000))));
          },
          py::arg("interval"))
      .def("stop", &Subscriber::stop, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("running", &Subscriber::running)
      .def_property_readonly("last_error", &Subscriber::last_error)
      .def_property_readonly("version", &Subscriber::version)
      .def_property_readonly("tables", &Subscriber::tables)
      .def("dim", &Subscriber::dim, py::arg("table"))
      .def("size", &Subscriber::size, py::arg("table"))
      .def(
          "lookup",
          [](const Subscriber& s, const std::string& table, const py::array& ids) {
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            const int64_t n = ids.shape(0);
            py::array_t<float> out({n, static_cast<int64_t>(s.dim(table))});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release release;
              s.lookup(table, k, n, o);
            }
            return out;
          },
          py::arg("table"), py::arg("ids"))
      .def(
          "rows",
          [](const Subscriber& s, const std::string& table) {
            std::vector<int64_t> keys;
            std::vector<float> weights;
            {
              py::gil_scoped_release release;
              s.rows(table, keys, weights);
            }
            const auto n = static_cast<py::ssize_t>(keys.size());
            const auto dim = n ? static_cast<py::ssize_t>(weights.size()) / n : static_cast<py::ssize_t>(s.dim(table));
            return py::make_tuple(to_numpy(std::move(keys), {n}), to_numpy(std::move(weights), {n, dim}));
          },
          py::arg("table"));
}
