// Parameter-server bindings: PsServer (embedded or listening) and PsClient. Every call
// releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/cuda/device_shard_rows.h"
#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_metrics.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/ps/ps_shard.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "sparsecore/ps/remote_row_store.h"
#include "sparsecore/serving/export.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::ps;
using sparsecore::python::checked_array;

SPARSECORE_BINDING(ps, 70) {
  py::class_<PsServer>(m, "PsServer", "Parameter server: shards over reactors; embedded until started.")
      .def(py::init([](const std::string& address, int port, int shards, const std::string& token, int server_index,
                       int num_servers, uint64_t max_frame_bytes, int poll_us, int idle_timeout_ms,
                       int handshake_timeout_ms, uint64_t memory_budget_bytes, const std::string& snapshot_dir,
                       const std::string& export_dir, int64_t keep_snapshots, const std::string& device, bool emulate,
                       int device_index) {
             PsServerOptions o;
             SC_CHECK_ARG(device == "cpu" || device == "cuda", "device must be 'cpu' or 'cuda', got '", device, "'");
             SC_CHECK_ARG(!emulate || device == "cuda", "emulate=True needs device='cuda'");
             if (device == "cuda") {
               const auto backend = emulate ? cuda::Backend::kEmulated : cuda::Backend::kDevice;
               SC_CHECK(emulate || cuda::device_available(), cuda::CudaError,
                        "no CUDA device for a server with device='cuda' (", cuda::device_unavailable_reason(),
                        "); emulate=True runs the device kernels on the CPU, for tests");
               o.device_rows = cuda::device_rows_factory(backend, device_index);
             }
             o.snapshot_dir = snapshot_dir;
             o.keep_snapshots = keep_snapshots;
             o.export_dir = export_dir;
             o.export_writer = serving::ps_export_writer();
             o.rpc.poll_us = poll_us;
             o.rpc.idle_timeout_ms = idle_timeout_ms;
             o.rpc.handshake_timeout_ms = handshake_timeout_ms;
             o.rpc.memory_budget_bytes = memory_budget_bytes;
             o.rpc.address = address;
             o.rpc.port = port;
             o.rpc.num_reactors = shards;
             o.rpc.token = token;
             o.rpc.max_frame_bytes = max_frame_bytes;
             o.server_index = server_index;
             o.num_servers = num_servers;
             return std::make_unique<PsServer>(o);
           }),
           py::arg("address") = "127.0.0.1", py::arg("port") = 0, py::arg("shards") = 1, py::arg("token") = "",
           py::arg("server_index") = 0, py::arg("num_servers") = 1, py::arg("max_frame_bytes") = 256ull << 20,
           py::arg("poll_us") = 0, py::arg("idle_timeout_ms") = rpc::ServerOptions{}.idle_timeout_ms,
           py::arg("handshake_timeout_ms") = rpc::ServerOptions{}.handshake_timeout_ms,
           py::arg("memory_budget_bytes") = rpc::ServerOptions{}.memory_budget_bytes, py::arg("snapshot_dir") = "",
           py::arg("export_dir") = "", py::arg("keep_snapshots") = 0, py::arg("device") = "cpu",
           py::arg("emulate") = false, py::arg("device_index") = -1)
      .def("start", [](PsServer& s) { s.start(); })
      .def("stop",
           [](PsServer& s) {
             py::gil_scoped_release r;
             s.stop();
           })
      .def(
          "restore",
          [](PsServer& s, const std::string& name) {
            py::gil_scoped_release r;
            return s.restore(name);
          },
          py::arg("name"), "Restores snapshot `name` of the snapshot directory into every shard (before start).")
      .def_property_readonly("port", &PsServer::port)
      .def_property_readonly("num_shards", &PsServer::num_shards);

  py::class_<PsMetricsServer>(m, "PsMetricsServer",
                              "Prometheus text of a PsServer's statistics at GET /metrics (HTTP/1.1).")
      .def(py::init([](PsServer& server, const std::string& address, int port, int timeout_ms, int max_connections,
                       size_t max_header_bytes) {
             rpc::HttpServerOptions o;
             o.address = address;
             o.port = port;
             o.timeout_ms = timeout_ms;
             o.max_connections = max_connections;
             o.limits.max_header_bytes = max_header_bytes;
             o.limits.max_body_bytes = 0;  // GET only: no request has a body
             return std::make_unique<PsMetricsServer>(server, o);
           }),
           py::arg("server"), py::arg("address") = "127.0.0.1", py::arg("port") = 0,
           py::arg("timeout_ms") = rpc::HttpServerOptions{}.timeout_ms,
           py::arg("max_connections") = rpc::HttpServerOptions{}.max_connections,
           py::arg("max_header_bytes") = rpc::HttpLimits{}.max_header_bytes, py::keep_alive<1, 2>())
      .def("start", [](PsMetricsServer& s) { s.start(); })
      .def("stop",
           [](PsMetricsServer& s) {
             py::gil_scoped_release r;
             s.stop();
           })
      .def_property_readonly("port", &PsMetricsServer::port);
  m.def(
      "render_metrics",
      [](PsServer& server) {
        py::gil_scoped_release r;
        return render_metrics(server, nullptr, 5000);
      },
      py::arg("server"), "The Prometheus text of `server` (what GET /metrics answers).");

  m.def("place_by_size", &place_by_size, py::arg("sizes"), py::arg("num_shards"),
        "Global shard of each of `sizes` (numbers of values): largest first, each to the shard holding the fewest "
        "values so far (the lowest index on a tie).");
  m.def("latest_snapshot", &latest_snapshot, py::arg("root"),
        "Newest complete step-<k> snapshot directory under root, or '' when none.");
  py::class_<PsClient>(m, "PsClient")
      .def(py::init([](const std::vector<std::string>& addresses, const std::string& token, int timeout_ms,
                       uint32_t worker, uint32_t num_workers, int heartbeat_ms, int poll_us, int64_t staleness) {
             PsClientOptions o{token, timeout_ms, 5000, worker, num_workers, heartbeat_ms, poll_us, staleness};
             py::gil_scoped_release r;
             return std::make_unique<PsClient>(addresses, o);
           }),
           py::arg("addresses"), py::arg("token") = "", py::arg("timeout_ms") = 300000, py::arg("worker") = 0,
           py::arg("num_workers") = 0, py::arg("heartbeat_ms") = 0, py::arg("poll_us") = 0, py::arg("staleness") = -1)
      .def(py::init([](PsServer& server) { return std::make_unique<PsClient>(server, PsClientOptions{}); }),
           py::arg("server"), py::keep_alive<1, 2>())
      .def_property_readonly("total_shards", &PsClient::total_shards)
      .def(
          "close",
          [](PsClient& c) {
            py::gil_scoped_release r;
            c.close();
          },
          "Ends the connections to every server now; later calls raise RpcConnectionError.")
      .def("set_wire_dtype", &PsClient::set_wire_dtype, py::arg("table"), py::arg("dtype"),
           "The dtype of `table`'s values on the wire ('': the default of every table): 'float32' or 'float16'.")
      .def("wire_dtype", &PsClient::wire_dtype, py::arg("table"))
      .def("create_table",
           [](PsClient& c, const std::string& config_json, uint64_t seed) {
             TableConfig cfg = TableConfig::from_json(Json::parse(config_json));
             py::gil_scoped_release r;
             c.create_table(cfg, seed);
           })
      .def("dim", &PsClient::dim)
      .def(
          "pull",
          [](PsClient& c, const std::string& table, const py::array& ids, bool train, py::object out_arg) {
            const int64_t* p = checked_array<int64_t>(ids, "ids", {-1});
            int64_t n = ids.shape(0);
            int d = c.dim(table);
            // `out` (optional): a float32[n, dim] array the rows are read into (no allocation).
            py::array out =
                out_arg.is_none()
                    ? py::array(py::array_t<float>({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)}))
                    : py::array(out_arg);
            checked_array<float>(out, "out", {n, d});
            if (!out.writeable()) throw InvalidArgument("out must be writeable");
            float* o = static_cast<float*>(out.mutable_data());
            {
              py::gil_scoped_release r;
              c.pull(table, p, n, train, o);
            }
            return out;
          },
          py::arg("table"), py::arg("ids"), py::arg("train") = true, py::arg("out") = py::none())
      .def(
          "push",
          [](PsClient& c, const std::string& table, const py::array& ids, const py::array& grads, int64_t step) {
            const int64_t* p = checked_array<int64_t>(ids, "ids", {-1});
            int64_t n = ids.shape(0);
            const float* g = checked_array<float>(grads, "grads", {n, c.dim(table)});
            py::gil_scoped_release r;
            c.push(table, p, n, g, step);
          },
          py::arg("table"), py::arg("ids"), py::arg("grads"), py::arg("step") = 0)
      .def(
          "pull_tables",
          [](PsClient& c, const std::vector<std::pair<std::string, py::array>>& tables, bool train) {
            // One request per server shard for every table: [(table, ids int64[n])] ->
            // [float32[n, dim]] in the same order.
            std::vector<TableSlice> slices;
            py::list out;
            for (const auto& [table, ids] : tables) {
              const int64_t* p = checked_array<int64_t>(ids, "ids of table '" + table + "'", {-1});
              const int64_t n = ids.shape(0);
              py::array_t<float> rows({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(c.dim(table))});
              slices.push_back({table, p, n, rows.mutable_data(), nullptr});
              out.append(rows);
            }
            {
              py::gil_scoped_release r;
              c.pull_tables(slices, train).wait();
            }
            return out;
          },
          py::arg("tables"), py::arg("train") = true)
      .def(
          "push_tables",
          [](PsClient& c, const std::vector<std::tuple<std::string, py::array, py::array>>& tables, int64_t step) {
            // One request per server shard for every table: [(table, ids int64[n] distinct,
            // grads float32[n, dim])].
            std::vector<TableSlice> slices;
            for (const auto& [table, ids, grads] : tables) {
              const int64_t* p = checked_array<int64_t>(ids, "ids of table '" + table + "'", {-1});
              const int64_t n = ids.shape(0);
              const float* g = checked_array<float>(grads, "grads of table '" + table + "'", {n, c.dim(table)});
              slices.push_back({table, p, n, nullptr, g});
            }
            py::gil_scoped_release r;
            c.push_tables(slices, step);
          },
          py::arg("tables"), py::arg("step") = 0)
      .def(
          "save",
          [](PsClient& c, const std::string& name, int64_t step, bool overwrite) {
            py::gil_scoped_release r;
            return c.save(name, step, overwrite);
          },
          py::arg("name"), py::arg("step"), py::arg("overwrite") = false)
      .def(
          "prune_snapshots",
          [](PsClient& c, const std::string& prefix, int64_t keep, const std::vector<std::string>& protect) {
            py::gil_scoped_release r;
            return c.prune_snapshots(prefix, keep, protect);
          },
          py::arg("prefix"), py::arg("keep"), py::arg("protect"))
      .def("restore",
           [](PsClient& c, const std::string& dir) {
             py::gil_scoped_release r;
             return c.restore(dir);
           })
      .def("export_rows",
           [](PsClient& c, const std::string& stream, bool delta, int64_t since, int64_t version,
              const std::string& dtype) {
             Json out;
             {
               py::gil_scoped_release r;
               out = c.export_rows(stream, delta, since, version, dtype);
             }
             return out.dump();
           })
      .def("kv_put",
           [](PsClient& c, const std::string& key, const std::string& value_json) {
             Json v = Json::parse(value_json);
             py::gil_scoped_release r;
             c.kv_put(key, v);
           })
      .def("kv_get",
           [](PsClient& c, const std::string& key) {
             Json v;
             {
               py::gil_scoped_release r;
               v = c.kv_get(key);
             }
             return v.dump();
           })
      .def("barrier",
           [](PsClient& c, const std::string& name, int count) {
             py::gil_scoped_release r;
             c.barrier(name, count);
           })
      .def(
          "dense_pull",
          [](PsClient& c, const std::string& name, int64_t size, float init, int shard) {
            std::vector<float> v;
            {
              py::gil_scoped_release r;
              v = c.dense_pull(name, size, init, shard);
            }
            py::array_t<float> out(static_cast<py::ssize_t>(v.size()));
            std::copy(v.begin(), v.end(), out.mutable_data());
            return out;
          },
          py::arg("name"), py::arg("size"), py::arg("init"), py::arg("shard") = 0)
      .def("dense_push",
           [](PsClient& c, const std::string& name, const py::array& grads, float lr) {
             const float* g = checked_array<float>(grads, "grads", {-1});
             int64_t n = grads.shape(0);
             py::gil_scoped_release r;
             c.dense_push(name, g, n, lr);
           })
      .def(
          "dense_create",
          [](PsClient& c, int shard, const std::string& name, const py::array& values, const std::string& optimizer) {
            const float* v = checked_array<float>(values, "values", {-1});
            int64_t n = values.shape(0);
            py::gil_scoped_release r;
            c.dense_create(shard, name, v, n, optimizer);
          },
          py::arg("shard"), py::arg("name"), py::arg("values"), py::arg("optimizer"),
          "Creates dense variable `name` on global shard `shard` with a server-side optimizer (its JSON).")
      .def(
          "dense_step",
          [](PsClient& c, int shard, const std::string& name, const py::array& grads, int64_t step) {
            const float* g = checked_array<float>(grads, "grads", {-1});
            int64_t n = grads.shape(0);
            py::array_t<float> out(static_cast<py::ssize_t>(n));
            float* o = out.mutable_data();
            {
              py::gil_scoped_release r;
              c.dense_step(shard, name, g, n, step, o);
            }
            return out;
          },
          py::arg("shard"), py::arg("name"), py::arg("grads"), py::arg("step"),
          "Pushes the gradients of dense variable `name` and returns its values after the update.")
      .def(
          "erase",
          [](PsClient& c, const std::string& name, const py::array& ids) {
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            const int64_t n = ids.shape(0);
            py::gil_scoped_release r;
            return c.erase(name, k, n);
          },
          py::arg("table"), py::arg("ids"))
      .def(
          "expire",
          [](PsClient& c, const std::string& name) {
            py::gil_scoped_release r;
            return c.expire(name);
          },
          py::arg("table"))
      .def("stats", [](PsClient& c) {
        Json s;
        {
          py::gil_scoped_release r;
          s = c.stats();
        }
        return s.dump();
      });

  m.def(
      "remote_collection",
      [](const std::string& configs_json, uint64_t seed, PsClient& client) {
        const Json configs = Json::parse(configs_json);
        std::vector<TableConfig> tables;
        for (const Json& t : configs.as_array("tables")) tables.push_back(TableConfig::from_json(t));
        py::gil_scoped_release r;
        return remote_collection(std::move(tables), seed, client);
      },
      py::arg("configs_json"), py::arg("seed"), py::arg("client"), py::keep_alive<0, 3>(),
      "An EmbeddingCollection whose rows live on the servers of `client` (created there when missing).");
}
