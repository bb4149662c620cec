// Bindings of the compressed tables' batch planning (ops/compressed_batch.h): a collection's
// layouts, built once, and per batch one CompressedBatch that plans every compressed group,
// hands out the core groups, composes their outputs and splits the gradients, each in one
// call for the whole batch with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <memory>
#include <tuple>

#include "array_args.h"
#include "binding_registry.h"
#include "prepared_batch.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/compressed_batch.h"

namespace py = pybind11;
using namespace sparsecore;
using sparsecore::python::checked_array;
using sparsecore::python::PyPrepared;

namespace {

struct CompressedLayouts {
  std::vector<CompressedLayout> tables;
};

struct CompressedBatch {
  std::shared_ptr<const CompressedLayouts> layouts;
  std::vector<CompressedGroupPlan> plans;
  // Per plan, per core group: its output, then its gradient (reused by backward), so the
  // compiled forward and backward hand no intermediate array to Python.
  std::vector<std::vector<PodVector<float>>> scratch;
};

// Per group of a batch: (first core group, core groups, plan index or -1 for a plain table).
using GroupSpan = std::tuple<int, int, int>;

// The core group pointers of `b`'s scratch (sized here) and of plain groups' arrays: checks
// that `spans` covers `batch` and that each plan's core groups are the batch's.
std::vector<float*> scratch_pointers(CompressedBatch& b, const PreparedBatch& batch,
                                     const std::vector<GroupSpan>& spans) {
  std::vector<float*> ptrs(batch.groups.size(), nullptr);
  b.scratch.resize(b.plans.size());
  size_t next = 0;
  for (const auto& [first, count, plan] : spans) {
    SC_CHECK_ARG(first >= 0 && static_cast<size_t>(first) == next && count >= 1 &&
                     static_cast<size_t>(first + count) <= batch.groups.size(),
                 "compressed batch: group spans do not cover the prepared batch");
    next = static_cast<size_t>(first + count);
    if (plan < 0) {
      SC_CHECK_ARG(count == 1, "compressed batch: a plain group has one core group");
      continue;
    }
    SC_CHECK_ARG(static_cast<size_t>(plan) < b.plans.size() && b.plans[plan].num_core_groups() == count,
                 "compressed batch: group spans do not match its plans");
    const CompressedGroupPlan& p = b.plans[plan];
    b.scratch[plan].resize(count);
    for (int i = 0; i < count; ++i) {
      SC_CHECK_ARG(batch.groups[first + i].output_size() == p.core_output_size(i), "compressed batch: core group of '",
                   p.layout->name, "' does not match its plan");
      b.scratch[plan][i].resize(p.core_output_size(i));
      ptrs[first + i] = b.scratch[plan][i].data();
    }
  }
  SC_CHECK_ARG(next == batch.groups.size(), "compressed batch: group spans do not cover the prepared batch");
  return ptrs;
}

std::vector<const float*> scratch_of(CompressedBatch& b, int plan) {
  std::vector<const float*> out;
  for (const auto& v : b.scratch[plan]) out.push_back(v.data());
  return out;
}

std::vector<float*> mutable_scratch_of(CompressedBatch& b, int plan) {
  std::vector<float*> out;
  for (auto& v : b.scratch[plan]) out.push_back(v.data());
  return out;
}

std::vector<py::ssize_t> group_shape(const PreparedGroup& g) {
  if (g.pooling == Pooling::kNone) return {g.batch_size, g.max_len, g.dim};
  return {g.batch_size, g.dim};
}

using LayoutTuple = std::tuple<std::string, std::string, uint64_t, std::vector<int>, std::vector<std::string>, int,
                               std::string, int, int, std::string>;

template <typename T>
py::array_t<T> view(const std::vector<int64_t>& shape, const T* data, const py::object& owner) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()), data, owner);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

SPARSECORE_BINDING(compressed, 31) {
  py::class_<CompressedLayouts, std::shared_ptr<CompressedLayouts>>(
      m, "CompressedLayouts", "How a collection's compressed tables map onto its core tables (ops/compressed_batch.h).")
      .def(py::init([](const std::vector<LayoutTuple>& tables) {
             auto out = std::make_shared<CompressedLayouts>();
             for (const auto& [name, spec, seed, components, pooling, exact, exact_pooling, dim, component_dim,
                               table_pooling] : tables) {
               CompressedLayout l;
               l.name = name;
               l.spec = CompressionSpec::from_json(Json::parse(spec));
               l.base_seed = seed;
               l.components = components;
               for (const std::string& p : pooling) l.component_pooling.push_back(pooling_from_name(p));
               l.exact = exact;
               l.exact_pooling = pooling_from_name(exact_pooling);
               l.dim = dim;
               l.component_dim = component_dim;
               l.pooling = pooling_from_name(table_pooling);
               l.validate();
               out->tables.push_back(std::move(l));
             }
             return out;
           }),
           py::arg("tables"),
           "tables: (name, spec json, base seed, component core tables, their poolings, exact core table or "
           "-1, its pooling, dim, component dim, pooling) per compressed table.");

  py::class_<CompressedBatch>(m, "CompressedBatch",
                              "The compressed groups of one batch, planned: core groups, composition, gradients.")
      .def(py::init([](std::shared_ptr<const CompressedLayouts> layouts, const std::vector<py::tuple>& groups) {
             const int count = static_cast<int>(layouts->tables.size());
             for (const py::tuple& grp : groups) {
               const int t = grp[0].cast<int>();
               if (t < 0 || t >= count)
                 throw InvalidArgument("compressed group: no compressed table " + std::to_string(t));
             }
             std::vector<py::array> keep_alive;
             std::vector<GroupInput> inputs = python::group_inputs(
                 groups, keep_alive, [&](int t) -> const std::string& { return layouts->tables[t].name; });
             auto batch = std::make_unique<CompressedBatch>();
             batch->layouts = layouts;
             batch->plans.resize(inputs.size());
             py::gil_scoped_release release;
             parallel_for(static_cast<int64_t>(inputs.size()), 1, [&](int64_t begin, int64_t end) {
               for (int64_t g = begin; g < end; ++g)
                 batch->plans[g] = plan_compressed_group(layouts->tables[inputs[g].table], inputs[g]);
             });
             return batch;
           }),
           py::arg("layouts"), py::arg("groups"), "groups: (compressed table, ids, offsets, weights or None) each.")
      .def_property_readonly("num_groups", [](const CompressedBatch& b) { return b.plans.size(); })
      .def(
          "core_groups",
          [](py::object self, size_t g) {
            const CompressedGroupPlan& p = self.cast<const CompressedBatch&>().plans.at(g);
            std::vector<GroupInput> inputs;
            append_core_inputs(p, inputs);
            py::list out;
            for (const GroupInput& in : inputs) {
              py::object weights = py::none();
              if (in.weights) weights = view<float>({in.num_ids}, in.weights, self);
              out.append(py::make_tuple(in.table, view<int64_t>({in.num_ids}, in.ids, self),
                                        view<int64_t>({in.batch_size + 1}, in.offsets, self), weights));
            }
            return out;
          },
          py::arg("group"), "Group g's core groups: (core table, ids, offsets, weights or None) each, views.")
      .def(
          "output_shape",
          [](const CompressedBatch& b, size_t g) { return py::tuple(py::cast(b.plans.at(g).output_shape())); },
          py::arg("group"))
      .def_property_readonly("needs_rows",
                             [](const CompressedBatch& b) {
                               for (const auto& p : b.plans)
                                 if (p.needs_rows()) return true;
                               return false;
                             })
      .def(
          "compose",
          [](CompressedBatch& b, const std::vector<std::vector<py::array>>& core_outputs) {
            if (core_outputs.size() != b.plans.size())
              throw InvalidArgument("compose: got " + std::to_string(core_outputs.size()) + " groups for " +
                                    std::to_string(b.plans.size()));
            std::vector<std::vector<const float*>> ins(b.plans.size());
            std::vector<py::array_t<float>> outs;
            std::vector<float*> out_ptrs;
            for (size_t g = 0; g < b.plans.size(); ++g) {
              const CompressedGroupPlan& p = b.plans[g];
              if (static_cast<int>(core_outputs[g].size()) != p.num_core_groups())
                throw InvalidArgument("compose: group '" + p.layout->name + "' needs " +
                                      std::to_string(p.num_core_groups()) + " core outputs");
              for (int i = 0; i < p.num_core_groups(); ++i) {
                const auto shape = p.core_output_shape(i);
                ins[g].push_back(checked_array<float>(core_outputs[g][i], "core output of '" + p.layout->name + "'",
                                                      std::vector<py::ssize_t>(shape.begin(), shape.end())));
              }
              const auto shape = p.output_shape();
              outs.emplace_back(std::vector<py::ssize_t>(shape.begin(), shape.end()));
              out_ptrs.push_back(outs.back().mutable_data());
            }
            py::gil_scoped_release release;
            parallel_for(static_cast<int64_t>(b.plans.size()), 1, [&](int64_t begin, int64_t end) {
              for (int64_t g = begin; g < end; ++g) compose_compressed_group(b.plans[g], ins[g], out_ptrs[g]);
            });
            return outs;
          },
          py::arg("core_outputs"), "Each group's output from its core groups' outputs.")
      .def(
          "split",
          [](const CompressedBatch& b, const std::vector<py::array>& grads) {
            if (grads.size() != b.plans.size())
              throw InvalidArgument("split: got " + std::to_string(grads.size()) + " gradients for " +
                                    std::to_string(b.plans.size()) + " groups");
            std::vector<const float*> ins;
            std::vector<std::vector<py::array_t<float>>> outs(b.plans.size());
            std::vector<std::vector<float*>> out_ptrs(b.plans.size());
            for (size_t g = 0; g < b.plans.size(); ++g) {
              const CompressedGroupPlan& p = b.plans[g];
              const auto shape = p.output_shape();
              const py::array& grad = grads[g];
              bool same = grad.ndim() == static_cast<py::ssize_t>(shape.size());
              for (size_t d = 0; same && d < shape.size(); ++d) same = grad.shape(d) == shape[d];
              if (!same) {
                std::vector<int64_t> got(grad.shape(), grad.shape() + grad.ndim());
                throw InvalidArgument("gradient of group '" + p.layout->name + "' must have shape " +
                                      shape_text(shape) + ", got " + shape_text(got));
              }
              ins.push_back(checked_array<float>(grad, "gradient of group '" + p.layout->name + "'",
                                                 std::vector<py::ssize_t>(shape.begin(), shape.end())));
              for (int i = 0; i < p.num_core_groups(); ++i) {
                const auto core_shape = p.core_output_shape(i);
                outs[g].emplace_back(std::vector<py::ssize_t>(core_shape.begin(), core_shape.end()));
                out_ptrs[g].push_back(outs[g].back().mutable_data());
              }
            }
            {
              py::gil_scoped_release release;
              // Every gradient is checked before any is split, so a bad one names its group
              // whatever the order the groups run in.
              for (size_t g = 0; g < b.plans.size(); ++g)
                SC_CHECK_ARG(compressed_gradient_is_finite(b.plans[g], ins[g]), "gradient of group '",
                             b.plans[g].layout->name, "' contains NaN or Inf; no row was updated");
              parallel_for(static_cast<int64_t>(b.plans.size()), 1, [&](int64_t begin, int64_t end) {
                for (int64_t g = begin; g < end; ++g) split_compressed_gradient(b.plans[g], ins[g], out_ptrs[g]);
              });
            }
            return outs;
          },
          py::arg("grads"), "Each group's core gradients from its gradient.")
      .def(
          "forward",
          [](CompressedBatch& b, const EmbeddingCollection& c, const PyPrepared& p,
             const std::vector<GroupSpan>& spans) {
            std::vector<float*> ptrs = scratch_pointers(b, *p.batch, spans);
            std::vector<py::array_t<float>> outs;
            std::vector<float*> out_ptrs;
            for (const auto& [first, count, plan] : spans) {
              const auto shape = plan < 0 ? group_shape(p.batch->groups[first]) : [&] {
                const auto s = b.plans[plan].output_shape();
                return std::vector<py::ssize_t>(s.begin(), s.end());
              }();
              outs.emplace_back(shape);
              out_ptrs.push_back(outs.back().mutable_data());
              if (plan < 0) ptrs[first] = out_ptrs.back();
            }
            py::gil_scoped_release release;
            c.forward(*p.batch, ptrs);
            parallel_for(static_cast<int64_t>(spans.size()), 1, [&](int64_t begin, int64_t end) {
              for (int64_t g = begin; g < end; ++g) {
                const int plan = std::get<2>(spans[g]);
                if (plan >= 0) compose_compressed_group(b.plans[plan], scratch_of(b, plan), out_ptrs[g]);
              }
            });
            return outs;
          },
          py::arg("collection"), py::arg("prepared"), py::arg("spans"),
          "The collection's forward of the prepared batch, its compressed groups composed: one output per "
          "group. spans: (first core group, count, plan or -1) per group.")
      .def(
          "backward",
          [](CompressedBatch& b, EmbeddingCollection& c, const PyPrepared& p, const std::vector<GroupSpan>& spans,
             const std::vector<py::array>& grads) {
            SC_CHECK_ARG(grads.size() == spans.size(), "backward: got ", grads.size(), " gradients for ", spans.size(),
                         " groups");
            std::vector<float*> ptrs = scratch_pointers(b, *p.batch, spans);
            std::vector<const float*> ins(spans.size());
            for (size_t g = 0; g < spans.size(); ++g) {
              const auto [first, count, plan] = spans[g];
              if (plan < 0) {
                const PreparedGroup& pg = p.batch->groups[first];
                ins[g] = checked_array<float>(grads[g], "gradient of group '" + c.table_name(pg.table) + "'",
                                              group_shape(pg));
                continue;
              }
              const CompressedGroupPlan& cp = b.plans[plan];
              const auto shape = cp.output_shape();
              const py::array& grad = grads[g];
              bool same = grad.ndim() == static_cast<py::ssize_t>(shape.size());
              for (size_t d = 0; same && d < shape.size(); ++d) same = grad.shape(d) == shape[d];
              if (!same) {
                std::vector<int64_t> got(grad.shape(), grad.shape() + grad.ndim());
                throw InvalidArgument("gradient of group '" + cp.layout->name + "' must have shape " +
                                      shape_text(shape) + ", got " + shape_text(got));
              }
              ins[g] = checked_array<float>(grad, "gradient of group '" + cp.layout->name + "'",
                                            std::vector<py::ssize_t>(shape.begin(), shape.end()));
              SC_CHECK_ARG(!cp.needs_rows(), "compressed table '", cp.layout->name,
                           "': the batch must be composed (forward) before its gradient is split");
            }
            py::gil_scoped_release release;
            for (size_t g = 0; g < spans.size(); ++g) {
              const int plan = std::get<2>(spans[g]);
              SC_CHECK_ARG(plan < 0 || compressed_gradient_is_finite(b.plans[plan], ins[g]), "gradient of group '",
                           b.plans[plan].layout->name, "' contains NaN or Inf; no row was updated");
            }
            parallel_for(static_cast<int64_t>(spans.size()), 1, [&](int64_t begin, int64_t end) {
              for (int64_t g = begin; g < end; ++g) {
                const int plan = std::get<2>(spans[g]);
                if (plan >= 0) split_compressed_gradient(b.plans[plan], ins[g], mutable_scratch_of(b, plan));
              }
            });
            std::vector<const float*> core(ptrs.begin(), ptrs.end());
            for (size_t g = 0; g < spans.size(); ++g)
              if (std::get<2>(spans[g]) < 0) core[std::get<0>(spans[g])] = ins[g];
            return c.backward(*p.batch, core);
          },
          py::arg("collection"), py::arg("prepared"), py::arg("spans"), py::arg("grads"),
          "Splits the groups' gradients and runs the collection's backward of the prepared batch; returns the "
          "step. Gradients of compressed groups with NaN or Inf raise ValueError and change nothing.");
}
