// Core bindings: exception mapping, the compute pool, build facts, the directory switch of
// checkpoints (commit_directory) for the Python writers of checkpoints, and the seeded id hash
// that compressed tables map ids with.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "binding_registry.h"
#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/thread_pool.h"

namespace py = pybind11;
using namespace sparsecore;

SPARSECORE_BINDING(core, 0) {
  // CorruptData is a ValueError too: the file was read, its contents are wrong.
  static py::exception<CorruptData> corrupt(m, "CorruptDataError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CorruptData& e) {
      py::set_error(corrupt, e.what());
    } catch (const InvalidArgument& e) {
      py::set_error(PyExc_ValueError, e.what());
    } catch (const TypeMismatch& e) {
      py::set_error(PyExc_TypeError, e.what());
    } catch (const NotFound& e) {
      py::set_error(PyExc_KeyError, e.what());
    } catch (const IoError& e) {
      py::set_error(PyExc_OSError, e.what());
    }
  });

  m.def(
      "commit_directory",
      [](const std::string& staging, const std::string& target, bool files_synced) {
        py::gil_scoped_release r;
        commit_directory(staging, target, files_synced);
      },
      py::arg("staging"), py::arg("target"), py::arg("files_synced") = false,
      "Makes the finished directory `staging` replace `target` in one atomic, durable step.");
  m.def(
      "remove_stale_stagings",
      [](const std::string& parent, const std::string& prefix) {
        py::gil_scoped_release r;
        return remove_stale_stagings(parent, prefix);
      },
      py::arg("parent"), py::arg("prefix"),
      "Removes the real directories of `parent` named `prefix` + 16 hex digits (stagings of writes "
      "that died before their switch); symlinks and other names are left. Returns how many.");
  m.def("committed_directory", &committed_directory, py::arg("target"),
        "`target`, or the directory an interrupted commit left beside it, or '' when neither exists.");
  m.def(
      "num_threads", [] { return ThreadPool::global().num_threads(); },
      "Number of threads in the process-wide compute pool.");
  m.def(
      "set_num_threads",
      [](int n) {
        py::gil_scoped_release release;
        ThreadPool::set_global_num_threads(n);
      },
      py::arg("n"), "Resize the compute pool (n <= 0: one per core). Results do not depend on it.");
  m.def(
      "cpu_features", [] { return cpu_feature_names(); },
      "Instruction sets the running CPU offers to the dispatched kernels.");
  m.def(
      "seeded_hash",
      [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids, uint64_t seed) {
        const py::ssize_t n = ids.size();
        py::array_t<uint64_t> out(n);
        const int64_t* in = ids.data();
        uint64_t* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          for (py::ssize_t i = 0; i < n; ++i) dst[i] = hash_combine(seed, key_hash(in[i]));
        }
        return out;
      },
      py::arg("ids"), py::arg("seed"),
      "hash_combine(seed, fmix64(id)) of every id (core/hash.h) as uint64[n]: the stateless, "
      "seeded hash of compressed tables, the same in every process.");
}
