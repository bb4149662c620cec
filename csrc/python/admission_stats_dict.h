// The feature admission statistics of a table as Python sees them (a dict of ints, or None
// for a table without admission), for every collection that holds tables.
#pragma once

#include <pybind11/pybind11.h>

#include "sparsecore/table/admission.h"

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

}  // namespace sparsecore::python
