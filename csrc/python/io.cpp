// io bindings (module sparsecore._core.io): text readers, the synthetic generator, metrics,
// id hashing and dedup. Batches cross as plain dicts of NumPy arrays that own the C++
// vectors (no copy); sparsecore.data wraps them in its Batch type.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>

#include "array_args.h"
#include "binding_registry.h"
#include "sample_batch_dict.h"
#include "sparsecore/core/error.h"
#include "sparsecore/io/criteo_format.h"
#include "sparsecore/io/csv_format.h"
#include "sparsecore/io/feature_hash.h"
#include "sparsecore/io/libffm_format.h"
#include "sparsecore/io/libsvm_format.h"
#include "sparsecore/io/metrics.h"
#include "sparsecore/io/synthetic_generator.h"
#include "sparsecore/io/text_reader.h"
#include "sparsecore/table/sharded_dedup.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::io;
using sparsecore::python::batch_to_python;
using sparsecore::python::to_numpy;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
std::vector<T> to_vector(const py::handle& h, const char* what) {
  auto a = CArray<T>::ensure(h);
  SC_CHECK(a && a.ndim() == 1, TypeMismatch, what, " must be a 1-D array");
  return std::vector<T>(a.data(), a.data() + a.size());
}

// groups: [(ids, offsets, shared)], sample_group: int64[B] or None.
SampleBatch batch_from_python(int64_t num_samples, const py::list& groups, const py::object& sample_group) {
  SampleBatch b;
  b.num_samples = num_samples;
  b.has_labels = false;
  if (!sample_group.is_none()) b.sample_group = to_vector<int64_t>(sample_group, "sample_group");
  for (const auto& item : groups) {
    auto t = item.cast<py::tuple>();
    FeatureGroupBatch g;
    g.ids = to_vector<int64_t>(t[0], "ids");
    g.offsets = to_vector<int64_t>(t[1], "offsets");
    g.shared = t[2].cast<bool>();
    b.groups.push_back(std::move(g));
  }
  b.validate();
  return b;
}

py::tuple position_tuple(const ReaderPosition& p) { return py::make_tuple(p.file_index, p.byte_offset, p.line_number); }

std::pair<const double*, int64_t> doubles(const CArray<double>& a, const char* what) {
  SC_CHECK(a.ndim() == 1, TypeMismatch, what, " must be 1-D, got ", a.ndim(), " dimensions");
  return {a.data(), static_cast<int64_t>(a.size())};
}

}  // namespace

SPARSECORE_BINDING(io, 40) {
  auto io = m.def_submodule("io", "Readers, synthetic data, metrics (use sparsecore.data)");

  py::class_<LineFormat, std::shared_ptr<LineFormat>>(io, "LineFormat");
  py::class_<CriteoFormat, LineFormat, std::shared_ptr<CriteoFormat>>(io, "CriteoFormat")
      .def(py::init<bool>(), py::arg("has_labels") = true);
  py::class_<LibsvmFormat, LineFormat, std::shared_ptr<LibsvmFormat>>(io, "LibsvmFormat")
      .def(py::init<std::string, bool>(), py::arg("group_name") = "features", py::arg("binary_labels") = true);
  py::class_<LibffmFormat, LineFormat, std::shared_ptr<LibffmFormat>>(io, "LibffmFormat")
      .def(py::init<std::vector<std::string>, bool>(), py::arg("field_names"), py::arg("binary_labels") = true);
  py::class_<CsvFormat, LineFormat, std::shared_ptr<CsvFormat>>(io, "CsvFormat")
      .def(py::init([](const std::vector<std::tuple<std::string, std::string, std::string>>& columns,
                       const std::string& delimiter, const std::string& multi_separator, bool header) {
             SC_CHECK_ARG(delimiter.size() == 1, "schema: delimiter must be one character, got '", delimiter, "'");
             SC_CHECK_ARG(multi_separator.size() == 1, "schema: multi_separator must be one character, got '",
                          multi_separator, "'");
             CsvSchema s;
             for (const auto& [name, type, group] : columns)
               s.columns.push_back({name, parse_csv_column_type(type, name), group});
             s.delimiter = delimiter[0];
             s.multi_separator = multi_separator[0];
             s.header = header;
             return std::make_shared<CsvFormat>(std::move(s));
           }),
           py::arg("columns"), py::arg("delimiter") = ",", py::arg("multi_separator") = "|", py::arg("header") = false);

  py::class_<TextReader>(io, "TextReader")
      .def(py::init([](std::vector<std::string> paths, std::shared_ptr<LineFormat> format, int64_t block_bytes,
                       int num_threads, int prefetch_blocks, int64_t max_reported_errors, double max_bad_fraction,
                       std::vector<int64_t> end_offsets) {
             py::gil_scoped_release release;
             TextReaderOptions o{block_bytes,         num_threads,      prefetch_blocks,
                                 max_reported_errors, max_bad_fraction, std::move(end_offsets)};
             return std::make_unique<TextReader>(std::move(paths), std::move(format), o);
           }),
           py::arg("paths"), py::arg("format"), py::arg("block_bytes") = int64_t{4} << 20, py::arg("num_threads") = 1,
           py::arg("prefetch_blocks") = 2, py::arg("max_reported_errors") = 100, py::arg("max_bad_fraction") = 0.01,
           py::arg("end_offsets") = std::vector<int64_t>{})
      .def(
          "next_batch",
          [](TextReader& r, int64_t batch_size) {
            SampleBatch b;
            {
              py::gil_scoped_release release;
              b = r.next_batch(batch_size);
            }
            return batch_to_python(std::move(b));
          },
          py::arg("batch_size"))
      .def("empty_batch", [](const TextReader& r) { return batch_to_python(r.empty_batch()); })
      .def_property_readonly("position", [](const TextReader& r) { return position_tuple(r.position()); })
      .def(
          "seek",
          [](TextReader& r, int64_t file_index, int64_t byte_offset, int64_t line_number) {
            py::gil_scoped_release release;
            r.seek({file_index, byte_offset, line_number});
          },
          py::arg("file_index"), py::arg("byte_offset"), py::arg("line_number"))
      .def_property_readonly("samples_read", &TextReader::samples_read)
      .def_property_readonly("malformed_count", &TextReader::malformed_count)
      .def_property_readonly("malformed_lines", [](const TextReader& r) {
        py::list out;
        for (const auto& e : r.malformed_lines()) out.append(py::make_tuple(e.file_index, e.line_number, e.reason));
        return out;
      });

  py::class_<SyntheticGenerator>(io, "SyntheticGenerator")
      .def(py::init([](std::vector<std::string> group_names, int64_t vocab_size, int64_t min_bag, int64_t max_bag,
                       double zipf_exponent, uint64_t permutation_seed, uint64_t seed, double weight_std, double bias,
                       int64_t num_user_groups, int64_t samples_per_view, int64_t drift_period) {
             SyntheticConfig c{std::move(group_names), vocab_size,  min_bag,    max_bag, zipf_exponent,
                               permutation_seed,       seed,        weight_std, bias,    num_user_groups,
                               samples_per_view,       drift_period};
             return std::make_unique<SyntheticGenerator>(std::move(c));
           }),
           py::arg("group_names"), py::arg("vocab_size"), py::arg("min_bag"), py::arg("max_bag"),
           py::arg("zipf_exponent"), py::arg("permutation_seed"), py::arg("seed"), py::arg("weight_std"),
           py::arg("bias"), py::arg("num_user_groups"), py::arg("samples_per_view"), py::arg("drift_period") = 0)
      .def(
          "generate",
          [](const SyntheticGenerator& g, int64_t first, int64_t count, bool compressed) {
            SampleBatch b;
            {
              py::gil_scoped_release release;
              b = g.generate(first, count, compressed);
            }
            return batch_to_python(std::move(b));
          },
          py::arg("first"), py::arg("count"), py::arg("compressed") = false)
      .def(
          "true_probabilities",
          [](const SyntheticGenerator& g, int64_t num_samples, const py::list& groups, const py::object& sample_group) {
            SampleBatch b = batch_from_python(num_samples, groups, sample_group);
            std::vector<double> p;
            {
              py::gil_scoped_release release;
              p = g.true_probabilities(b);
            }
            return to_numpy(std::move(p), {static_cast<py::ssize_t>(num_samples)});
          },
          py::arg("num_samples"), py::arg("groups"), py::arg("sample_group"))
      .def("planted_weight", &SyntheticGenerator::planted_weight, py::arg("group"), py::arg("id"))
      .def("rank_to_id", &SyntheticGenerator::rank_to_id, py::arg("rank"))
      .def("id_at", &SyntheticGenerator::id_at, py::arg("rank"), py::arg("sample"));

  io.def(
      "auc",
      [](const CArray<double>& labels, const CArray<double>& scores) {
        auto [y, n] = doubles(labels, "labels");
        auto [s, ns] = doubles(scores, "scores");
        SC_CHECK_ARG(n == ns, "auc: labels has ", n, " values, scores ", ns);
        py::gil_scoped_release release;
        return auc(y, s, n);
      },
      py::arg("labels"), py::arg("scores"));
  io.def(
      "gauc",
      [](const CArray<double>& labels, const CArray<double>& scores, const CArray<int64_t>& users) {
        auto [y, n] = doubles(labels, "labels");
        auto [s, ns] = doubles(scores, "scores");
        SC_CHECK(users.ndim() == 1, TypeMismatch, "users must be 1-D");
        SC_CHECK_ARG(n == ns && n == static_cast<int64_t>(users.size()),
                     "gauc: labels, scores and users differ in length (", n, ", ", ns, ", ", users.size(), ")");
        py::gil_scoped_release release;
        return gauc(y, s, users.data(), n);
      },
      py::arg("labels"), py::arg("scores"), py::arg("users"));
  io.def(
      "logloss",
      [](const CArray<double>& labels, const CArray<double>& probabilities, double eps) {
        auto [y, n] = doubles(labels, "labels");
        auto [p, np_] = doubles(probabilities, "probabilities");
        SC_CHECK_ARG(n == np_, "logloss: labels has ", n, " values, probabilities ", np_);
        py::gil_scoped_release release;
        return logloss(y, p, n, eps);
      },
      py::arg("labels"), py::arg("probabilities"), py::arg("eps") = 1e-7);

  io.def(
      "dedup_ids",
      [](const CArray<int64_t>& ids) {
        SC_CHECK(ids.ndim() == 1, TypeMismatch, "ids must be 1-D");
        std::vector<int64_t> unique, inverse;
        {
          py::gil_scoped_release release;
          dedup_ids(ids.data(), static_cast<int64_t>(ids.size()), unique, inverse);
        }
        const auto u = static_cast<py::ssize_t>(unique.size()), n = static_cast<py::ssize_t>(inverse.size());
        return py::make_tuple(to_numpy(std::move(unique), {u}), to_numpy(std::move(inverse), {n}));
      },
      py::arg("ids"));

  io.def(
      "feature_value_id",
      [](const std::string& feature, const py::bytes& value) {
        return feature_value_id(feature_seed(feature), std::string_view(value));
      },
      py::arg("feature"), py::arg("value"));
  // Arrow-layout strings: value i is data[value_offsets[i]:value_offsets[i+1]]; bag b holds
  // values [bag_offsets[b], bag_offsets[b+1]). Empty values are missing (no id).
  io.def(
      "hash_string_bags",
      [](const std::string& feature, const CArray<int64_t>& value_offsets, const CArray<uint8_t>& data,
         const CArray<int64_t>& bag_offsets) {
        SC_CHECK(value_offsets.ndim() == 1 && data.ndim() == 1 && bag_offsets.ndim() == 1, TypeMismatch,
                 "hash_string_bags: arrays must be 1-D");
        const int64_t nv = static_cast<int64_t>(value_offsets.size()) - 1;
        const int64_t nb = static_cast<int64_t>(bag_offsets.size()) - 1;
        SC_CHECK_ARG(nv >= 0 && nb >= 0, "hash_string_bags: offsets must have at least one entry");
        const int64_t* vo = value_offsets.data();
        const int64_t* bo = bag_offsets.data();
        const auto* bytes = reinterpret_cast<const char*>(data.data());
        std::vector<int64_t> ids, offsets(nb + 1, 0);
        {
          py::gil_scoped_release release;
          SC_CHECK_ARG(bo[0] >= 0 && bo[nb] <= nv, "hash_string_bags: bag_offsets outside the values");
          const uint64_t seed = feature_seed(feature);
          for (int64_t b = 0; b < nb; ++b) {
            SC_CHECK_ARG(bo[b] <= bo[b + 1], "hash_string_bags: bag_offsets decrease at ", b);
            for (int64_t v = bo[b]; v < bo[b + 1]; ++v) {
              SC_CHECK_ARG(0 <= vo[v] && vo[v] <= vo[v + 1] && vo[v + 1] <= static_cast<int64_t>(data.size()),
                           "hash_string_bags: value_offsets outside data at ", v);
              if (vo[v + 1] > vo[v])
                ids.push_back(feature_value_id(seed, std::string_view(bytes + vo[v], vo[v + 1] - vo[v])));
            }
            offsets[b + 1] = static_cast<int64_t>(ids.size());
          }
        }
        const auto n = static_cast<py::ssize_t>(ids.size());
        return py::make_tuple(to_numpy(std::move(ids), {n}), to_numpy(std::move(offsets), {nb + 1}));
      },
      py::arg("feature"), py::arg("value_offsets"), py::arg("data"), py::arg("bag_offsets"));
}
