// Bindings of the CUDA backend: cuda::DeviceEmbeddingCollection (device or emulated) and
// device discovery. Importing never touches a driver; only constructing a device-backed
// collection does (RuntimeError "no CUDA device ..." when there is none).
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "sparsecore/cuda/device_embedding_collection.h"
#include "sparsecore/cuda/emulator_counters.h"
#include "table_policy_binding.h"

namespace py = pybind11;
using namespace sparsecore;
using sparsecore::cuda::DeviceEmbeddingCollection;
using sparsecore::cuda::DevicePreparedBatch;
using sparsecore::python::checked_array;

namespace {

struct PyDevicePrepared {
  std::shared_ptr<DevicePreparedBatch> batch;
};

std::vector<py::ssize_t> output_shape(const cuda::DeviceGroupInfo& g) {
  if (g.pooling == Pooling::kNone) return {g.batch_size, g.max_len, g.dim};
  return {g.batch_size, g.dim};
}

cuda::Backend backend_of(bool emulate) { return emulate ? cuda::Backend::kEmulated : cuda::Backend::kDevice; }

// A Python callable kept by C++ (an external allocator), released under the GIL (and not at
// all once the interpreter is gone).
std::shared_ptr<py::object> keep_callable(py::object f) {
  return std::shared_ptr<py::object>(new py::object(std::move(f)), [](py::object* p) {
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;
      delete p;
    }
  });
}

// cuda::DeviceAllocator over allocate(nbytes, device, stream) -> int and release(int).
cuda::DeviceAllocator python_allocator(const py::object& allocate, const py::object& release) {
  if (allocate.is_none() && release.is_none()) return {};
  if (!PyCallable_Check(allocate.ptr()) || !PyCallable_Check(release.ptr()))
    throw py::type_error("set_allocator: allocate and free must both be callables (or both None)");
  auto alloc = keep_callable(allocate), free = keep_callable(release);
  cuda::DeviceAllocator a;
  a.allocate = [alloc](size_t bytes, int device, uintptr_t stream) -> void* {
    py::gil_scoped_acquire gil;
    return reinterpret_cast<void*>((*alloc)(bytes, device, stream).cast<uintptr_t>());
  };
  a.release = [free](void* block) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      (*free)(reinterpret_cast<uintptr_t>(block));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("sparsecore device allocator (free)");
    }
  };
  return a;
}

}  // namespace

SPARSECORE_BINDING(cuda, 40) {
  m.def("cuda_device_available", &cuda::device_available,
        "True when this build has CUDA kernels and a CUDA device with a driver is present.");
  m.def("cuda_unavailable_reason", &cuda::device_unavailable_reason);
  m.def("cuda_emulator_counters", [] {
    const cuda::EmulatorCounters c = cuda::emulator_counters();
    py::dict kernels;
    for (const auto& [name, k] : c.kernels) {
      py::dict one;
      one["launches"] = k.launches;
      one["blocks"] = k.blocks;
      kernels[py::str(name)] = one;
    }
    py::dict d;
    d["launches"] = c.launches;
    d["host_syncs"] = c.host_syncs;
    d["h2d_copies"] = c.h2d_copies;
    d["h2d_bytes"] = c.h2d_bytes;
    d["d2h_copies"] = c.d2h_copies;
    d["d2h_bytes"] = c.d2h_bytes;
    d["d2d_copies"] = c.d2d_copies;
    d["d2d_bytes"] = c.d2d_bytes;
    d["memsets"] = c.memsets;
    d["memset_bytes"] = c.memset_bytes;
    d["kernels"] = kernels;
    return d;
  });
  m.def("cuda_emulator_reset_counters", &cuda::reset_emulator_counters);
  m.def("cuda_emulator_side_stream", &cuda::emulator_side_stream);
  m.def(
      "cuda_emulator_enqueue_copy",
      [](uintptr_t stream, uintptr_t dst, uintptr_t src, size_t bytes) {
        cuda::emulator_enqueue_copy(stream, reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
      },
      py::arg("stream"), py::arg("dst"), py::arg("src"), py::arg("bytes"));
  m.def("cuda_emulator_pending_work", &cuda::emulator_pending_work, py::arg("stream"));
  m.def("cuda_emulator_release_stream", &cuda::emulator_release_stream, py::arg("stream"));
  m.def(
      "cuda_memory_cache_stats",
      [](bool emulate, int device) {
        const cuda::MemoryCacheStats s = cuda::memory_cache_stats(backend_of(emulate), device);
        py::dict d;
        d["limit_bytes"] = s.limit_bytes;
        d["cached_bytes"] = s.cached_bytes;
        d["in_use_bytes"] = s.in_use_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["released_over_limit"] = s.released_over_limit;
        return d;
      },
      py::arg("emulate"), py::arg("device"));
  m.def(
      "cuda_set_memory_cache_limit",
      [](bool emulate, int device, int64_t bytes) { cuda::set_memory_cache_limit(backend_of(emulate), device, bytes); },
      py::arg("emulate"), py::arg("device"), py::arg("bytes"));
  m.def(
      "cuda_empty_memory_cache",
      [](bool emulate, int device) { cuda::empty_memory_cache(backend_of(emulate), device); }, py::arg("emulate"),
      py::arg("device"));
  m.def(
      "cuda_set_device_allocator",
      [](bool emulate, int device, const py::object& allocate, const py::object& release) {
        cuda::set_device_allocator(backend_of(emulate), device, python_allocator(allocate, release));
      },
      py::arg("emulate"), py::arg("device"), py::arg("allocate"), py::arg("free"));
  m.def("cuda_emulator_block_seed", &cuda::emulator_block_seed);
  m.def("cuda_set_emulator_block_seed", &cuda::set_emulator_block_seed, py::arg("seed"));

  py::class_<PyDevicePrepared>(m, "DevicePreparedBatch")
      .def_property_readonly("train", [](const PyDevicePrepared& p) { return p.batch->train(); })
      .def("num_unique", [](const PyDevicePrepared& p, int g) { return p.batch->num_unique(g); })
      .def("unique_ids", [](const PyDevicePrepared& p, int g) {
        auto ids = p.batch->unique_ids(g);
        return py::array_t<int64_t>(static_cast<py::ssize_t>(ids.size()), ids.data());
      });

  py::class_<DeviceEmbeddingCollection>(m, "DeviceEmbeddingCollection")
      .def(py::init([](const std::string& configs_json, uint64_t seed, const std::string& storage, bool emulate,
                       int block_threads, int max_blocks, int device) {
             std::vector<TableConfig> tables;
             const Json parsed = Json::parse(configs_json);  // outlives the loop over its array
             for (const Json& t : parsed.as_array("tables")) tables.push_back(TableConfig::from_json(t));
             return std::make_unique<DeviceEmbeddingCollection>(
                 std::move(tables), seed, cuda::row_storage_from_name(storage), backend_of(emulate),
                 cuda::LaunchLimits{block_threads, max_blocks}, device);
           }),
           py::arg("configs_json"), py::arg("seed"), py::arg("storage") = "fp32", py::arg("emulate") = false,
           py::arg("block_threads") = 128, py::arg("max_blocks") = 0, py::arg("device") = -1)
      .def_property_readonly("device", &DeviceEmbeddingCollection::device)
      .def_property_readonly("step", &DeviceEmbeddingCollection::step)
      .def_property_readonly("seed", &DeviceEmbeddingCollection::seed)
      .def_property_readonly("num_tables", &DeviceEmbeddingCollection::num_tables)
      .def_property_readonly("storage",
                             [](const DeviceEmbeddingCollection& c) { return cuda::row_storage_name(c.storage()); })
      .def_property_readonly("emulated",
                             [](const DeviceEmbeddingCollection& c) { return c.backend() == cuda::Backend::kEmulated; })
      .def("table_name", [](const DeviceEmbeddingCollection& c, int t) { return c.config(t).name; })
      .def("table_config_json", [](const DeviceEmbeddingCollection& c, int t) { return c.config(t).to_json().dump(); })
      .def("table_size", &DeviceEmbeddingCollection::table_size)
      .def("table_capacity", &DeviceEmbeddingCollection::table_capacity)
      .def("table_row_bytes", &DeviceEmbeddingCollection::row_bytes)
      .def("memory_bytes", &DeviceEmbeddingCollection::memory_bytes)
      .def("set_max_load_factor", &DeviceEmbeddingCollection::set_max_load_factor)
      .def("table_admission_stats",
           [](const DeviceEmbeddingCollection& c, int t) { return python::admission_stats_dict(c.admission(t)); })
      .def("table_expiry_stats",
           [](const DeviceEmbeddingCollection& c, int t) { return python::expiry_stats_dict(c.expiry(t)); })
      .def(
          "set_expiry_predicate",
          [](DeviceEmbeddingCollection& c, int t, const py::object& fn) {
            python::set_expiry_predicate(python::expiry_of(c.expiry(t), c.config(t).name), c.config(t).name, fn);
          },
          py::arg("table"), py::arg("predicate"))
      .def(
          "set_expiry_clock",
          [](DeviceEmbeddingCollection& c, int t, const py::object& fn) {
            python::set_expiry_clock(python::expiry_of(c.expiry(t), c.config(t).name), fn);
          },
          py::arg("table"), py::arg("clock"))
      .def(
          "expire",
          [](DeviceEmbeddingCollection& c, int t) {
            py::gil_scoped_release release;
            return c.expire(t);
          },
          py::arg("table"))
      .def("set_deleted_keys_capacity",
           [](DeviceEmbeddingCollection& c, int t, int64_t capacity) {
             SC_CHECK_ARG(capacity >= 1, "deleted keys capacity must be >= 1, got ", capacity);
             c.deleted_keys(t).set_capacity(static_cast<size_t>(capacity));
           })
      .def(
          "prepare",
          [](DeviceEmbeddingCollection& c, const std::vector<py::tuple>& groups, bool train,
             std::optional<uintptr_t> stream) {
            std::vector<py::array> keep_alive;
            std::vector<GroupInput> inputs =
                python::group_inputs(groups, keep_alive, [&c](int t) { return c.config(t).name; });
            py::gil_scoped_release release;  // `keep_alive` holds the arrays
            return PyDevicePrepared{c.prepare(inputs, train, cuda::MemorySpace::kHost, {stream, {}})};
          },
          py::arg("groups"), py::arg("train"), py::arg("stream") = std::nullopt)
      // Zero-copy entry points: arrays in device memory, passed as addresses (parsed from
      // __cuda_array_interface__ by sparsecore.cuda, which keeps the arrays alive and checks
      // dtypes and shapes). Each group: (table, ids, num_ids, offsets, batch_size, weights or 0).
      .def(
          "prepare_device",
          [](DeviceEmbeddingCollection& c,
             const std::vector<std::tuple<int, uintptr_t, int64_t, uintptr_t, int64_t, uintptr_t>>& groups, bool train,
             std::optional<uintptr_t> stream, const std::vector<uintptr_t>& wait_for) {
            std::vector<GroupInput> inputs;
            for (const auto& [table, ids, n, offsets, batch_size, weights] : groups) {
              GroupInput in;
              in.table = table;
              in.ids = reinterpret_cast<const int64_t*>(ids);
              in.num_ids = n;
              in.offsets = reinterpret_cast<const int64_t*>(offsets);
              in.batch_size = batch_size;
              in.weights = reinterpret_cast<const float*>(weights);
              inputs.push_back(in);
            }
            py::gil_scoped_release release;
            return PyDevicePrepared{c.prepare(inputs, train, cuda::MemorySpace::kDevice, {stream, wait_for})};
          },
          py::arg("groups"), py::arg("train"), py::arg("stream") = std::nullopt,
          py::arg("wait_for") = std::vector<uintptr_t>{})
      .def("output_shapes",
           [](const DeviceEmbeddingCollection&, const PyDevicePrepared& p) {
             std::vector<std::vector<py::ssize_t>> shapes;
             for (const auto& g : p.batch->groups()) shapes.push_back(output_shape(g));
             return shapes;
           })
      .def(
          "forward_device",
          [](DeviceEmbeddingCollection& c, const PyDevicePrepared& p, const std::vector<uintptr_t>& outputs,
             std::optional<uintptr_t> stream, const std::vector<uintptr_t>& wait_for) {
            std::vector<float*> ptrs;
            for (uintptr_t o : outputs) ptrs.push_back(reinterpret_cast<float*>(o));
            py::gil_scoped_release release;
            c.forward(*p.batch, ptrs, cuda::MemorySpace::kDevice, {stream, wait_for});
          },
          py::arg("prepared"), py::arg("outputs"), py::arg("stream") = std::nullopt,
          py::arg("wait_for") = std::vector<uintptr_t>{})
      .def(
          "backward_device",
          [](DeviceEmbeddingCollection& c, const PyDevicePrepared& p, const std::vector<uintptr_t>& grads,
             std::optional<uintptr_t> stream, const std::vector<uintptr_t>& wait_for) {
            std::vector<const float*> ptrs;
            for (uintptr_t g : grads) ptrs.push_back(reinterpret_cast<const float*>(g));
            py::gil_scoped_release release;
            return c.backward(*p.batch, ptrs, cuda::MemorySpace::kDevice, {stream, wait_for});
          },
          py::arg("prepared"), py::arg("grads"), py::arg("stream") = std::nullopt,
          py::arg("wait_for") = std::vector<uintptr_t>{})
      .def(
          "lookup_device",
          [](DeviceEmbeddingCollection& c, int t, uintptr_t keys, int64_t n, uintptr_t out, bool insert,
             std::optional<uintptr_t> stream, const std::vector<uintptr_t>& wait_for) {
            py::gil_scoped_release release;
            c.lookup(t, reinterpret_cast<const int64_t*>(keys), n, reinterpret_cast<float*>(out), insert,
                     cuda::MemorySpace::kDevice, {stream, wait_for});
          },
          py::arg("table"), py::arg("keys"), py::arg("n"), py::arg("out"), py::arg("insert") = false,
          py::arg("stream") = std::nullopt, py::arg("wait_for") = std::vector<uintptr_t>{})
      .def(
          "erase_device",
          [](DeviceEmbeddingCollection& c, int t, uintptr_t keys, int64_t n, std::optional<uintptr_t> stream,
             const std::vector<uintptr_t>& wait_for) {
            py::gil_scoped_release release;
            return c.erase(t, reinterpret_cast<const int64_t*>(keys), n, cuda::MemorySpace::kDevice,
                           {stream, wait_for});
          },
          py::arg("table"), py::arg("keys"), py::arg("n"), py::arg("stream") = std::nullopt,
          py::arg("wait_for") = std::vector<uintptr_t>{})
      .def(
          "forward",
          [](DeviceEmbeddingCollection& c, const PyDevicePrepared& p, std::optional<uintptr_t> stream) {
            std::vector<py::array_t<float>> outs;
            std::vector<float*> ptrs;
            for (const auto& g : p.batch->groups()) {
              outs.emplace_back(output_shape(g));
              ptrs.push_back(outs.back().mutable_data());
            }
            py::gil_scoped_release release;
            c.forward(*p.batch, ptrs, cuda::MemorySpace::kHost, {stream, {}});
            return outs;
          },
          py::arg("prepared"), py::arg("stream") = std::nullopt)
      .def(
          "backward",
          [](DeviceEmbeddingCollection& c, const PyDevicePrepared& p, const std::vector<py::array>& grads,
             std::optional<uintptr_t> stream) {
            const auto& groups = p.batch->groups();
            if (grads.size() != groups.size())
              throw InvalidArgument("backward: got " + std::to_string(grads.size()) + " gradients for " +
                                    std::to_string(groups.size()) + " groups");
            std::vector<const float*> ptrs;
            for (size_t g = 0; g < grads.size(); ++g)
              ptrs.push_back(checked_array<float>(
                  grads[g], "gradient of group '" + c.config(groups[g].table).name + "'", output_shape(groups[g])));
            py::gil_scoped_release release;
            return c.backward(*p.batch, ptrs, cuda::MemorySpace::kHost, {stream, {}});
          },
          py::arg("prepared"), py::arg("grads"), py::arg("stream") = std::nullopt)
      .def(
          "lookup",
          [](DeviceEmbeddingCollection& c, int t, const py::array& ids, bool insert, std::optional<uintptr_t> stream) {
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            const int64_t n = ids.shape(0);
            py::array_t<float> out({n, static_cast<int64_t>(c.config(t).dim)});
            float* o = out.mutable_data();
            py::gil_scoped_release release;
            c.lookup(t, k, n, o, insert, cuda::MemorySpace::kHost, {stream, {}});
            return out;
          },
          py::arg("table"), py::arg("ids"), py::arg("insert") = false, py::arg("stream") = std::nullopt)
      .def(
          "erase",
          [](DeviceEmbeddingCollection& c, int t, const py::array& ids, std::optional<uintptr_t> stream) {
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            const int64_t n = ids.shape(0);
            py::gil_scoped_release release;
            return c.erase(t, k, n, cuda::MemorySpace::kHost, {stream, {}});
          },
          py::arg("table"), py::arg("ids"), py::arg("stream") = std::nullopt)
      .def(
          "save",
          [](const DeviceEmbeddingCollection& c, const std::string& dir, bool overwrite) {
            py::gil_scoped_release release;
            c.save(dir, overwrite);
          },
          py::arg("dir"), py::arg("overwrite") = false)
      .def_static(
          "load",
          [](const std::string& dir, const std::string& storage, bool emulate, int block_threads, int max_blocks,
             int device) {
            py::gil_scoped_release release;
            return DeviceEmbeddingCollection::load(dir, cuda::row_storage_from_name(storage), backend_of(emulate),
                                                   cuda::LaunchLimits{block_threads, max_blocks}, device);
          },
          py::arg("dir"), py::arg("storage"), py::arg("emulate"), py::arg("block_threads"), py::arg("max_blocks"),
          py::arg("device") = -1)
      .def_static(
          "from_host",
          [](const EmbeddingCollection& host, const std::string& storage, bool emulate, int block_threads,
             int max_blocks, int device) {
            py::gil_scoped_release release;
            return DeviceEmbeddingCollection::from_host(host, cuda::row_storage_from_name(storage), backend_of(emulate),
                                                        cuda::LaunchLimits{block_threads, max_blocks}, device);
          },
          py::arg("host"), py::arg("storage"), py::arg("emulate"), py::arg("block_threads"), py::arg("max_blocks"),
          py::arg("device") = -1)
      .def(
          "restore",
          [](DeviceEmbeddingCollection& c, const std::string& dir) {
            py::gil_scoped_release release;
            c.restore(dir);
          },
          py::arg("dir"))
      .def("to_host",
           [](const DeviceEmbeddingCollection& c) {
             py::gil_scoped_release release;
             return c.to_host();
           })
      .def(
          "export",
          [](const DeviceEmbeddingCollection& c, int t) {
            DeviceEmbeddingCollection::Export e;
            {
              py::gil_scoped_release release;
              e = c.export_rows(t);
            }
            const auto n = static_cast<py::ssize_t>(e.keys.size());
            const py::ssize_t dim = c.config(t).dim, sd = c.config(t).optimizer.state_dim(c.config(t).dim);
            return py::make_tuple(
                py::array_t<int64_t>(n, e.keys.data()), py::array_t<float>({n, dim}, e.weights.data()),
                py::array_t<float>({n, sd}, e.state.data()), py::array_t<int64_t>(n, e.update_count.data()),
                py::array_t<int64_t>(n, e.last_step.data()));
          },
          py::arg("table"));
}
