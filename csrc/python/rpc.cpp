// RPC bindings: the RpcError family, the client (GIL released while it waits) and a server
// whose methods may be Python callables (run with the GIL on the reactor thread).
#include <pybind11/stl.h>

#include <memory>

#include "binding_registry.h"
#include "sparsecore/rpc/rpc_client.h"
#include "sparsecore/rpc/rpc_error.h"
#include "sparsecore/rpc/rpc_server.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::rpc;

namespace {

// A contiguous read-only view of any buffer-protocol object (bytes, bytearray, numpy).
struct BufferView {
  py::buffer_info info;
  explicit BufferView(const py::object& obj, const char* what) {
    if (!PyObject_CheckBuffer(obj.ptr()))
      throw TypeMismatch(std::string(what) + " must be bytes-like (bytes, bytearray, memoryview, ndarray), got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
    info = py::reinterpret_borrow<py::buffer>(obj).request();
    bool contiguous = true;
    py::ssize_t expect = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
      if (info.shape[d] > 1 && info.strides[d] != expect) contiguous = false;
      expect *= info.shape[d];
    }
    if (!contiguous) throw InvalidArgument(std::string(what) + " must be C-contiguous");
  }
  size_t bytes() const { return static_cast<size_t>(info.size * info.itemsize); }
  iovec iov() const { return {info.ptr, bytes()}; }
};

py::object make_exception(py::module_& m, const char* name, py::handle base, py::handle extra, const char* doc) {
  py::tuple bases = extra ? py::tuple(py::make_tuple(base, extra)) : py::tuple(py::make_tuple(base));
  py::dict ns;
  ns["__doc__"] = doc;
  ns["__module__"] = "sparsecore";
  py::object t = py::module_::import("builtins").attr("type")(name, bases, ns);
  m.attr(name) = t;
  return t;
}

}  // namespace

SPARSECORE_BINDING(rpc, 60) {
  static py::object rpc_error =
      make_exception(m, "RpcError", PyExc_RuntimeError, py::handle(), "A remote call failed (base of the RPC errors).");
  static py::object conn_error = make_exception(m, "RpcConnectionError", rpc_error, PyExc_ConnectionError,
                                                "The peer is unreachable, died, or closed the connection.");
  static py::object timeout_error = make_exception(m, "RpcTimeoutError", rpc_error, PyExc_TimeoutError,
                                                   "A call did not complete before its deadline.");
  static py::object unknown_method =
      make_exception(m, "RpcUnknownMethodError", rpc_error, py::handle(), "The server has no such method.");
  static py::object protocol_error =
      make_exception(m, "RpcProtocolError", rpc_error, py::handle(), "A frame was malformed or over the size limit.");
  static py::object auth_error =
      make_exception(m, "RpcAuthError", rpc_error, PyExc_PermissionError, "The shared token did not match.");
  static py::object step_aborted =
      make_exception(m, "RpcStepAbortedError", rpc_error, py::handle(),
                     "A synchronous step or barrier was abandoned because a worker left or rejoined; nothing of "
                     "it was applied. Every worker gets it: roll back to the last snapshot together.");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const RpcConnectionError& e) {
      PyErr_SetString(conn_error.ptr(), e.what());
    } catch (const RpcTimeout& e) {
      PyErr_SetString(timeout_error.ptr(), e.what());
    } catch (const RpcUnknownMethod& e) {
      PyErr_SetString(unknown_method.ptr(), e.what());
    } catch (const RpcProtocolError& e) {
      PyErr_SetString(protocol_error.ptr(), e.what());
    } catch (const RpcAuthError& e) {
      PyErr_SetString(auth_error.ptr(), e.what());
    } catch (const RpcStepAborted& e) {
      PyErr_SetString(step_aborted.ptr(), e.what());
    } catch (const RpcError& e) {
      PyErr_SetString(rpc_error.ptr(), e.what());
    }
  });

  py::class_<RpcClient>(m, "RpcClient", "One connection to one reactor of an RPC server.")
      .def(py::init([](const std::string& host, int port, const std::string& token, int reactor, int connect_timeout_ms,
                       int timeout_ms, int heartbeat_ms) {
             ClientOptions o;
             o.token = token;
             o.reactor = reactor;
             o.connect_timeout_ms = connect_timeout_ms;
             o.call_timeout_ms = timeout_ms;
             o.heartbeat_ms = heartbeat_ms;
             py::gil_scoped_release release;
             return std::make_unique<RpcClient>(host, port, o);
           }),
           py::arg("host"), py::arg("port"), py::arg("token") = "", py::arg("reactor") = 0,
           py::arg("connect_timeout_ms") = 5000, py::arg("timeout_ms") = 0, py::arg("heartbeat_ms") = 0)
      .def(
          "call",
          [](RpcClient& c, int method, const py::object& payload, int timeout_ms) {
            SC_CHECK_ARG(method >= 0 && method < kFirstReservedMethod, "method must be in [0, ", kFirstReservedMethod,
                         "), got ", method);
            BufferView in(payload, "payload");
            iovec seg = in.iov();
            Response r;
            {
              py::gil_scoped_release release;
              r = c.call(static_cast<uint16_t>(method), {&seg, 1}, timeout_ms);
            }
            return py::bytes(reinterpret_cast<const char*>(r.data.data()), r.bytes);
          },
          py::arg("method"), py::arg("payload") = py::bytes(), py::arg("timeout_ms") = -1,
          "Sends payload (bytes-like) and returns the reply as bytes.")
      .def(
          "call_into",
          [](RpcClient& c, int method, const py::object& payload, const py::buffer& out, int timeout_ms) {
            SC_CHECK_ARG(method >= 0 && method < kFirstReservedMethod, "method out of range: ", method);
            BufferView in(payload, "payload");
            py::buffer_info o = out.request(true);
            iovec seg = in.iov();
            size_t cap = static_cast<size_t>(o.size * o.itemsize);
            Response r;
            {
              py::gil_scoped_release release;
              r = c.call(static_cast<uint16_t>(method), {&seg, 1}, timeout_ms, o.ptr, cap);
            }
            if (!r.in_caller_buffer)
              throw InvalidArgument("reply of " + std::to_string(r.bytes) + " bytes does not fit in out (" +
                                    std::to_string(cap) + " bytes)");
            return r.bytes;
          },
          py::arg("method"), py::arg("payload"), py::arg("out"), py::arg("timeout_ms") = -1,
          "Like call, but the reply is read straight into the writable buffer `out`; returns its size.")
      .def(
          "call_many",
          [](RpcClient& c, int method, const std::vector<py::object>& payloads, int timeout_ms) {
            SC_CHECK_ARG(method >= 0 && method < kFirstReservedMethod, "method out of range: ", method);
            std::vector<BufferView> views;
            views.reserve(payloads.size());
            for (auto& p : payloads) views.emplace_back(p, "payload");
            std::vector<Response> replies(views.size());
            {
              py::gil_scoped_release release;
              std::vector<RpcFuture> futures;
              futures.reserve(views.size());
              for (auto& v : views) {
                iovec seg = v.iov();
                futures.push_back(c.call_async(static_cast<uint16_t>(method), {&seg, 1}, timeout_ms));
              }
              for (size_t i = 0; i < futures.size(); ++i) replies[i] = futures[i].get();
            }
            py::list out;
            for (auto& r : replies) out.append(py::bytes(reinterpret_cast<const char*>(r.data.data()), r.bytes));
            return out;
          },
          py::arg("method"), py::arg("payloads"), py::arg("timeout_ms") = -1,
          "Sends every payload before waiting (pipelined); returns the replies in order.")
      .def(
          "ping",
          [](RpcClient& c, int timeout_ms) {
            py::gil_scoped_release release;
            c.ping(timeout_ms);
          },
          py::arg("timeout_ms") = -1)
      .def(
          "transport_stats",
          [](RpcClient& c, int timeout_ms) {
            std::string json;
            {
              py::gil_scoped_release release;
              json = c.transport_stats(timeout_ms);
            }
            return py::module_::import("json").attr("loads")(json);
          },
          py::arg("timeout_ms") = -1,
          "The server's transport counters as a dict: connections_accepted, open_connections, "
          "frames_rejected, accept_backoffs, handshake_timeouts, idle_timeouts, memory_refusals, "
          "out_of_memory, memory_reserved_bytes, memory_budget_bytes.")
      .def_property_readonly("num_reactors", &RpcClient::num_reactors)
      .def_property_readonly("connected", &RpcClient::connected)
      .def_property_readonly("peer", &RpcClient::peer);

  py::class_<RpcServer>(m, "RpcServer", "An epoll RPC server: one reactor thread per core.")
      .def(py::init([](const std::string& address, int port, int num_reactors, const std::string& token,
                       uint64_t max_frame_bytes, uint64_t connection_memory_bytes, int idle_timeout_ms,
                       bool pin_threads, uint64_t memory_budget_bytes, int handshake_timeout_ms) {
             ServerOptions o;
             o.address = address;
             o.port = port;
             o.num_reactors = num_reactors;
             o.token = token;
             o.max_frame_bytes = max_frame_bytes;
             o.connection_memory_bytes = connection_memory_bytes;
             o.idle_timeout_ms = idle_timeout_ms;
             o.pin_threads = pin_threads;
             o.memory_budget_bytes = memory_budget_bytes;
             o.handshake_timeout_ms = handshake_timeout_ms;
             return std::make_unique<RpcServer>(o);
           }),
           py::arg("address") = "127.0.0.1", py::arg("port") = 0, py::arg("num_reactors") = 1, py::arg("token") = "",
           py::arg("max_frame_bytes") = 64ull << 20, py::arg("connection_memory_bytes") = 256ull << 20,
           py::arg("idle_timeout_ms") = 0, py::arg("pin_threads") = false,
           py::arg("memory_budget_bytes") = ServerOptions{}.memory_budget_bytes,
           py::arg("handshake_timeout_ms") = ServerOptions{}.handshake_timeout_ms)
      .def(
          "register",
          [](RpcServer& s, int method, py::function fn) {
            SC_CHECK_ARG(method >= 0 && method < kFirstReservedMethod, "method must be in [0, ", kFirstReservedMethod,
                         "), got ", method);
            auto holder = std::make_shared<py::function>(std::move(fn));
            s.register_method(static_cast<uint16_t>(method), [holder](const Request& req, Reply& reply) {
              py::gil_scoped_acquire gil;
              try {
                py::object result =
                    (*holder)(py::bytes(reinterpret_cast<const char*>(req.payload.data()), req.payload.size()));
                if (!result.is_none()) {
                  BufferView out(result, "handler result");
                  reply.append(out.info.ptr, out.bytes());
                }
              } catch (py::error_already_set& e) {
                std::string message = py::str(e.value());
                if (e.matches(PyExc_ValueError)) throw InvalidArgument(message);
                if (e.matches(PyExc_TypeError)) throw TypeMismatch(message);
                if (e.matches(PyExc_KeyError)) throw NotFound(message);
                throw Error(message);
              }
            });
          },
          py::arg("method"), py::arg("fn"),
          "Serves `method` with fn(payload: bytes) -> bytes-like | None, run with the GIL on a reactor thread.")
      .def("start", [](RpcServer& s) { s.start(); })
      .def("stop",
           [](RpcServer& s) {
             py::gil_scoped_release release;
             s.stop();
           })
      .def_property_readonly("port", &RpcServer::port)
      .def_property_readonly("num_reactors", &RpcServer::num_reactors)
      .def_property_readonly("connections_accepted", &RpcServer::connections_accepted)
      .def_property_readonly("connections_open", &RpcServer::connections_open)
      .def_property_readonly("frames_rejected", &RpcServer::frames_rejected)
      .def(
          "transport_stats",
          [](RpcServer& s) { return py::module_::import("json").attr("loads")(s.transport_stats().to_json()); },
          "The transport counters (see RpcClient.transport_stats).");
}
