// Bindings of the table and ops layers: EmbeddingCollection and its prepared batches.
// Configs cross as JSON text (the same form the checkpoint manifest stores), so validation
// lives in one place, the C++ from_json.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "prepared_batch.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/table/compressed_ids.h"
#include "sparsecore/table/table_stats.h"
#include "table_policy_binding.h"

namespace py = pybind11;
using namespace sparsecore;
using sparsecore::python::checked_array;
using sparsecore::python::PyPrepared;
using sparsecore::python::row_strided_floats;

namespace {

std::vector<TableConfig> configs_from_json(const std::string& text) {
  Json j = Json::parse(text);
  std::vector<TableConfig> out;
  for (const Json& t : j.as_array("tables")) out.push_back(TableConfig::from_json(t));
  return out;
}

py::array_t<float> output_array(const PreparedGroup& g) {
  if (g.pooling == Pooling::kNone) return py::array_t<float>({g.batch_size, g.max_len, static_cast<int64_t>(g.dim)});
  return py::array_t<float>({g.batch_size, static_cast<int64_t>(g.dim)});
}

std::vector<GroupInput> group_inputs(const EmbeddingCollection& c, const std::vector<py::tuple>& groups,
                                     std::vector<py::array>& keep_alive) {
  return python::group_inputs(groups, keep_alive, [&c](int t) { return c.table_name(t); });
}

Expiry& table_expiry(EmbeddingCollection& c, int t) { return python::expiry_of(c.table(t).expiry(), c.table_name(t)); }

}  // namespace

SPARSECORE_BINDING(embedding, 30) {
  py::class_<PyPrepared>(m, "PreparedBatch", "A validated, deduplicated batch (see EmbeddingCollection.prepare).")
      .def_property_readonly("train", [](const PyPrepared& p) { return p.batch->train; })
      .def_property_readonly("num_groups", [](const PyPrepared& p) { return p.batch->groups.size(); })
      .def("num_unique", [](const PyPrepared& p, size_t g) { return p.batch->groups.at(g).num_unique(); })
      .def("unique_ids",
           [](const PyPrepared& p, size_t g) {
             const auto& keys = p.batch->groups.at(g).unique_keys;
             return py::array_t<int64_t>(static_cast<py::ssize_t>(keys.size()), keys.data());
           })
      .def("inverse",
           [](const PyPrepared& p, size_t g) {
             const auto& inv = p.batch->groups.at(g).inverse;
             return py::array_t<int32_t>(static_cast<py::ssize_t>(inv.size()), inv.data());
           })
      .def("max_length", [](const PyPrepared& p, size_t g) { return p.batch->groups.at(g).max_len; })
      .def("batch_size", [](const PyPrepared& p, size_t g) { return p.batch->groups.at(g).batch_size; });

  // The names of TableStats' fields, in order (Python sums server shards' statistics by them).
  py::list stat_fields;
  TableStats{}.for_each([&](const char* name, const char*, const char*, int64_t) { stat_fields.append(name); });
  m.attr("TABLE_STATS_FIELDS") = py::tuple(stat_fields);

  py::class_<EmbeddingCollection>(m, "EmbeddingCollection")
      .def(py::init([](const std::string& configs_json, uint64_t seed) {
             return std::make_unique<EmbeddingCollection>(configs_from_json(configs_json), seed);
           }),
           py::arg("configs_json"), py::arg("seed"))
      .def_static(
          "load",
          [](const std::string& dir) {
            py::gil_scoped_release release;
            return EmbeddingCollection::load(dir);
          },
          py::arg("path"))
      .def(
          "restore",
          [](EmbeddingCollection& c, const std::string& dir) {
            py::gil_scoped_release release;
            c.restore(dir);
          },
          py::arg("path"))
      .def(
          "save",
          [](const EmbeddingCollection& c, const std::string& dir, bool overwrite) {
            py::gil_scoped_release release;
            c.save(dir, overwrite);
          },
          py::arg("path"), py::arg("overwrite") = false)
      .def_property_readonly("seed", &EmbeddingCollection::seed)
      .def_property("step", &EmbeddingCollection::step, &EmbeddingCollection::set_step)
      .def_property_readonly("num_tables", &EmbeddingCollection::num_tables)
      .def("table_index", &EmbeddingCollection::table_index, py::arg("name"))
      .def_property_readonly("has_local_tables", &EmbeddingCollection::has_local_tables)
      .def("table_name", [](const EmbeddingCollection& c, int t) { return c.table_name(t); })
      .def("table_config_json", [](const EmbeddingCollection& c, int t) { return c.config(t).to_json().dump(); })
      .def("table_size", [](const EmbeddingCollection& c, int t) { return c.table(t).size(); })
      .def("table_admission_stats",
           [](const EmbeddingCollection& c, int t) { return python::admission_stats_dict(c.table(t).admission()); })
      .def(
          "table_stats",
          [](const EmbeddingCollection& c, int t) {
            py::dict d;
            table_stats(c.table(t)).for_each([&](const char* name, const char*, const char*, int64_t v) {
              d[name] = v;
            });
            return d;
          },
          py::arg("table"), "The table's statistics (TableStats) as a dict of ints.")
      .def("table_expiry_stats",
           [](const EmbeddingCollection& c, int t) { return python::expiry_stats_dict(c.table(t).expiry()); })
      .def(
          "set_expiry_predicate",
          [](EmbeddingCollection& c, int t, const py::object& fn) {
            python::set_expiry_predicate(table_expiry(c, t), c.table_name(t), fn);
          },
          py::arg("table"), py::arg("predicate"))
      .def(
          "set_expiry_clock",
          [](EmbeddingCollection& c, int t, const py::object& fn) { python::set_expiry_clock(table_expiry(c, t), fn); },
          py::arg("table"), py::arg("clock"))
      .def(
          "expire",
          [](EmbeddingCollection& c, int t) {
            py::gil_scoped_release release;
            return c.expire(t);
          },
          py::arg("table"))
      .def("table_row_floats", [](const EmbeddingCollection& c, int t) { return c.table(t).row_floats(); })
      .def("table_row_bytes", [](const EmbeddingCollection& c, int t) { return c.table(t).row_bytes(); })
      .def("memory_bytes", &EmbeddingCollection::memory_bytes)
      .def(
          "prepare",
          [](EmbeddingCollection& c, const std::vector<py::tuple>& groups, bool train, bool sight) {
            std::vector<py::array> keep_alive;
            std::vector<GroupInput> inputs = group_inputs(c, groups, keep_alive);
            py::gil_scoped_release release;  // the arrays stay alive: `groups` holds them
            return PyPrepared{c.prepare(inputs, train, sight)};
          },
          py::arg("groups"), py::arg("train"), py::arg("sight") = true)
      .def(
          "forward",
          [](const EmbeddingCollection& c, const PyPrepared& p) {
            std::vector<py::array_t<float>> outs;
            std::vector<float*> ptrs;
            for (const auto& g : p.batch->groups) {
              outs.push_back(output_array(g));
              ptrs.push_back(outs.back().mutable_data());
            }
            {
              py::gil_scoped_release release;
              c.forward(*p.batch, ptrs);
            }
            return outs;
          },
          py::arg("prepared"))
      .def(
          "forward_into",
          [](const EmbeddingCollection& c, const PyPrepared& p, const std::vector<py::array>& outs) {
            if (outs.size() != p.batch->groups.size())
              throw InvalidArgument("forward_into: got " + std::to_string(outs.size()) + " outputs for " +
                                    std::to_string(p.batch->groups.size()) + " groups");
            std::vector<float*> ptrs;
            std::vector<int64_t> strides;
            for (size_t g = 0; g < outs.size(); ++g) {
              const PreparedGroup& pg = p.batch->groups[g];
              if (pg.pooling == Pooling::kNone)
                throw InvalidArgument("forward_into: group '" + c.table_name(pg.table) +
                                      "' uses pooling 'none' (padded sequences); use forward()");
              auto [data, stride] = row_strided_floats(outs[g], "output of group '" + c.table_name(pg.table) + "'",
                                                       pg.batch_size, pg.dim, /*writable=*/true);
              ptrs.push_back(data);
              strides.push_back(stride);
            }
            py::gil_scoped_release release;  // `outs` holds the arrays
            c.forward(*p.batch, ptrs, strides);
          },
          py::arg("prepared"), py::arg("outputs"),
          "Pools each group into outputs[g], a float32 (B, dim) array whose rows may be strided "
          "(e.g. a column block of the dense model's input matrix): no output array is allocated.")
      .def(
          "evaluate",
          [](const EmbeddingCollection& c, const std::vector<py::tuple>& groups) {
            std::vector<py::array> keep_alive;
            std::vector<GroupInput> inputs = group_inputs(c, groups, keep_alive);
            std::vector<py::array_t<float>> outs;
            std::vector<float*> ptrs;
            for (const GroupInput& in : inputs) {
              const int64_t dim = c.config(in.table).dim;
              if (c.config(in.table).pooling == Pooling::kNone) {
                // Bad offsets are reported by evaluate(); size the output only when sane.
                bool sane = in.offsets[0] == 0 && in.offsets[in.batch_size] == in.num_ids;
                for (int64_t b = 0; sane && b < in.batch_size; ++b) sane = in.offsets[b + 1] >= in.offsets[b];
                const int64_t len = sane ? EmbeddingCollection::max_bag_length(in) : 0;
                outs.push_back(py::array_t<float>({in.batch_size, len, dim}));
              } else {
                outs.push_back(py::array_t<float>({in.batch_size, dim}));
              }
              ptrs.push_back(outs.back().mutable_data());
            }
            py::gil_scoped_release release;
            c.evaluate(inputs, ptrs);
            return outs;
          },
          py::arg("groups"))
      .def(
          "backward",
          [](EmbeddingCollection& c, const PyPrepared& p, const std::vector<py::array>& grads) {
            if (grads.size() != p.batch->groups.size())
              throw InvalidArgument("backward: got " + std::to_string(grads.size()) + " gradients for " +
                                    std::to_string(p.batch->groups.size()) + " groups");
            std::vector<const float*> ptrs;
            std::vector<int64_t> strides;
            for (size_t g = 0; g < grads.size(); ++g) {
              const PreparedGroup& pg = p.batch->groups[g];
              std::string name = "gradient of group '" + c.table_name(pg.table) + "'";
              if (pg.pooling != Pooling::kNone && grads[g].ndim() == 2 && !(grads[g].flags() & py::array::c_style)) {
                // A column block of a wider matrix (the dense model's input gradient): read in place.
                auto [data, stride] = row_strided_floats(grads[g], name, pg.batch_size, pg.dim, /*writable=*/false);
                ptrs.push_back(data);
                strides.push_back(stride);
                continue;
              }
              std::vector<py::ssize_t> shape = {pg.batch_size};
              if (pg.pooling == Pooling::kNone) shape.push_back(pg.max_len);
              shape.push_back(pg.dim);
              ptrs.push_back(checked_array<float>(grads[g], name, shape));
              strides.push_back(0);
            }
            py::gil_scoped_release release;
            return c.backward(*p.batch, ptrs, strides);
          },
          py::arg("prepared"), py::arg("grads"))
      .def(
          "lookup",
          [](EmbeddingCollection& c, int t, const py::array& ids, bool insert) {
            const int dim = c.table(t).dim();
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            int64_t n = ids.shape(0);
            py::array_t<float> out({n, static_cast<int64_t>(dim)});
            float* o = out.mutable_data();
            py::gil_scoped_release release;
            c.lookup(t, k, n, insert, o);
            return out;
          },
          py::arg("table"), py::arg("ids"), py::arg("insert") = false)
      .def(
          "erase",
          [](EmbeddingCollection& c, int t, const py::array& ids) {
            const int64_t* k = checked_array<int64_t>(ids, "ids", {-1});
            int64_t n = ids.shape(0);
            py::gil_scoped_release release;
            return c.erase(t, k, n);
          },
          py::arg("table"), py::arg("ids"))
      .def("prune",
           [](EmbeddingCollection& c) {
             py::gil_scoped_release release;
             return c.prune();
           })
      .def(
          "export",
          [](const EmbeddingCollection& c, int t) {
            const EmbeddingTable& table = c.table(t);
            int64_t n = static_cast<int64_t>(table.size());
            py::array_t<int64_t> keys(n);
            py::array_t<float> rows({n, static_cast<int64_t>(table.row_floats())});
            std::vector<RowMeta> meta(n);
            int64_t got;
            {
              py::gil_scoped_release release;
              got = table.export_rows(keys.mutable_data(), rows.mutable_data(), meta.data(), n);
            }
            py::array_t<int64_t> count(got), last(got);
            for (int64_t i = 0; i < got; ++i) {
              count.mutable_data()[i] = meta[i].update_count;
              last.mutable_data()[i] = meta[i].last_step;
            }
            return py::make_tuple(keys, rows, count, last);
          },
          py::arg("table"));

  m.def(
      "compressed_component_keys",
      [](const std::string& spec_json, py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids,
         uint64_t base_seed) {
        const CompressionSpec spec = CompressionSpec::from_json(Json::parse(spec_json));
        const py::ssize_t n = ids.size(), m = spec.keys_per_id();
        const bool with_signs = spec.kind == CompressionKind::kRandomCoding && spec.is_signed;
        py::list out;
        for (int c = 0; c < spec.num_components(); ++c) {
          py::array_t<int64_t> keys({n, m});
          py::object signs = py::none();
          float* sign_data = nullptr;
          if (with_signs) {
            py::array_t<float> s({n, m});
            sign_data = s.mutable_data();
            signs = s;
          }
          int64_t* key_data = keys.mutable_data();
          const int64_t* id_data = ids.data();
          {
            py::gil_scoped_release release;
            compressed_component_keys(spec, c, base_seed, id_data, n, key_data, sign_data);
          }
          out.append(py::make_tuple(keys, signs));
        }
        return out;
      },
      py::arg("spec_json"), py::arg("ids"), py::arg("base_seed"),
      "Per component of a compressed table: (keys int64[n, keys_per_id], signs float32[n, keys_per_id] or "
      "None) of `ids` (table/compressed_ids.h).");
}
