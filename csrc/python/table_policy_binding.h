// The row policies of a table as Python sees them, for every collection that holds tables
// (the CPU collection and the device collection): admission and expiry statistics as dicts
// of ints (None for a table without the policy), and Python callables installed as an
// expiry predicate or clock.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/table/admission.h"
#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/expiry.h"

namespace sparsecore::python {

inline pybind11::object admission_stats_dict(const Admission* a) {
  if (!a) return pybind11::none();
  const AdmissionStats s = a->stats();
  pybind11::dict d;
  d["admitted"] = s.admitted;
  d["pending"] = s.pending;
  d["rejected"] = s.rejected;
  d["dropped_gradients"] = s.dropped_gradients;
  return d;
}

inline pybind11::object expiry_stats_dict(const Expiry* e) {
  if (!e) return pybind11::none();
  const ExpiryStats s = e->stats();
  pybind11::dict d;
  d["expired"] = s.expired;
  d["evicted"] = s.evicted;
  d["refused"] = s.refused;
  d["dropped_gradients"] = s.dropped_gradients;
  return d;
}

// A Python callable kept by C++ code that may copy or drop it without the GIL: the last
// owner takes the GIL to release it.
inline std::shared_ptr<pybind11::function> held_callable(const pybind11::function& fn) {
  return std::shared_ptr<pybind11::function>(new pybind11::function(fn), [](pybind11::function* f) {
    pybind11::gil_scoped_acquire gil;
    delete f;
  });
}

// `e` of table `table` (InvalidArgument when the table has no expiry).
inline Expiry& expiry_of(Expiry* e, const std::string& table) {
  SC_CHECK_ARG(e, "table '", table, "' has no expiry (TableConfig(expiry=...))");
  return *e;
}

// predicate(id, update_count, last_step) -> bool, or None to clear it. It is called from the
// thread of a training or expire call, which runs without the GIL.
inline void set_expiry_predicate(Expiry& e, const std::string& table, const pybind11::object& fn) {
  SC_CHECK_ARG(e.config().predicate, "table '", table, "' was not configured for a predicate (Expiry(predicate=...))");
  if (fn.is_none()) {
    e.set_predicate(nullptr);
    return;
  }
  e.set_predicate([held = held_callable(fn)](int64_t key, const RowMeta& m) -> bool {
    pybind11::gil_scoped_acquire gil;
    try {
      return (*held)(key, m.update_count, m.last_step).cast<bool>();
    } catch (pybind11::error_already_set& err) {
      throw InvalidArgument(std::string("the expiry predicate raised: ") + err.what());
    } catch (const pybind11::cast_error&) {
      throw InvalidArgument("the expiry predicate must return a bool");
    }
  });
}

// clock() -> seconds as a float, or None for the system clock.
inline void set_expiry_clock(Expiry& e, const pybind11::object& fn) {
  if (fn.is_none()) {
    e.set_clock(nullptr);
    return;
  }
  e.set_clock([held = held_callable(fn)]() -> double {
    pybind11::gil_scoped_acquire gil;
    try {
      return (*held)().cast<double>();
    } catch (pybind11::error_already_set& err) {
      throw InvalidArgument(std::string("the expiry clock raised: ") + err.what());
    } catch (const pybind11::cast_error&) {
      throw InvalidArgument("the expiry clock must return seconds as a float");
    }
  });
}

}  // namespace sparsecore::python
