// Bindings of the train layer: the C++ training pipeline fed by a Python source, the
// synthetic generator or the file readers.
//
// The Python adapter calls `produce()` with the GIL and nothing else under it: the queue,
// the waiting and prepare run without the GIL, so the dense step on the calling thread and
// the source's own compiled work overlap with planning. The compiled sources (synthetic(),
// text_files()) read and prepare without the GIL at all. Python objects that C++ threads hold
// are dropped under the GIL.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "array_args.h"
#include "binding_registry.h"
#include "prepared_batch.h"
#include "sample_batch_dict.h"
#include "sparsecore/train/step_pipeline.h"
#include "sparsecore/train/synthetic_source.h"
#include "sparsecore/train/text_reader_source.h"

namespace py = pybind11;
using namespace sparsecore;
using namespace sparsecore::train;

namespace {

// A Python object owned from C++: the last owner may be any thread, so it takes the GIL to drop it.
std::shared_ptr<const void> hold(py::object obj) {
  return std::shared_ptr<const void>(new py::object(std::move(obj)), [](const void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<const py::object*>(p);
  });
}

const py::object& held(const std::shared_ptr<const void>& p) { return *static_cast<const py::object*>(p.get()); }

// produce() returns None at the end of the data, or (payload, groups): payload is handed to
// the consumer as is, groups lists (table index, ids int64[n], offsets int64[B+1], weights
// float32[n] or None) per group the pipeline prepares (empty without a collection).
class PythonBatchSource : public BatchSource {
 public:
  PythonBatchSource(py::object produce, const EmbeddingCollection* collection)
      : produce_(hold(std::move(produce))), collection_(collection) {}

  std::optional<SourceBatch> next_batch() override {
    py::gil_scoped_acquire gil;
    py::object result = held(produce_)();
    if (result.is_none()) return std::nullopt;
    if (!py::isinstance<py::tuple>(result) || py::len(result) != 2)
      throw TypeMismatch("the pipeline's produce() must return None or (payload, groups)");
    SourceBatch out;
    std::vector<py::tuple> groups = result.cast<py::tuple>()[1].cast<std::vector<py::tuple>>();
    if (!groups.empty()) {
      SC_CHECK_ARG(collection_ != nullptr, "produce() returned groups for a pipeline without a collection");
      std::vector<py::array> keep_alive;  // the arrays are also held by `result`
      const auto name = [this](int t) -> const std::string& { return collection_->table_name(t); };
      for (const GroupInput& in : python::group_inputs(groups, keep_alive, name)) {
        out.groups.push_back({name(in.table), in.ids, in.num_ids, in.offsets, in.batch_size, in.weights});
      }
      // group_inputs may have converted a non-array into a new one: keep those too.
      out.attachment = hold(py::make_tuple(result, py::cast(keep_alive)));
    } else {
      out.attachment = hold(py::make_tuple(result, py::none()));
    }
    return out;
  }

 private:
  std::shared_ptr<const void> produce_;
  const EmbeddingCollection* collection_;
};

struct PyStepPipeline {
  py::object collection;  // keeps the collection alive for the pipeline (declared first: dropped last)
  std::unique_ptr<StepPipeline> pipeline;

  ~PyStepPipeline() {
    if (pipeline) {
      py::gil_scoped_release release;  // the producer may be waiting for the GIL in produce()
      pipeline->close();
    }
  }
};

std::unique_ptr<PyStepPipeline> make_pipeline(py::object collection, std::shared_ptr<BatchSource> source,
                                              std::vector<std::string> groups, int prefetch, int64_t max_steps,
                                              bool pull_rows, bool prepare_on_pool = false) {
  StepPipelineOptions options;
  options.prepare_on_pool = prepare_on_pool;
  options.prefetch = prefetch;
  options.max_steps = max_steps;
  options.groups = std::move(groups);
  options.pull_rows = pull_rows;
  auto out = std::make_unique<PyStepPipeline>();
  out->collection = collection;
  EmbeddingCollection* c = collection.is_none() ? nullptr : collection.cast<EmbeddingCollection*>();
  out->pipeline = std::make_unique<StepPipeline>(c, std::move(source), std::move(options));
  return out;
}

py::object pulled_arrays(PipelineStep& step) {
  if (step.pulled.empty()) return py::none();
  py::list out;
  for (size_t g = 0; g < step.pulled.size(); ++g) {
    const PreparedGroup& pg = step.prepared->groups[g];
    std::vector<py::ssize_t> shape = {pg.batch_size};
    if (pg.pooling == Pooling::kNone) shape.push_back(pg.max_len);
    shape.push_back(pg.dim);
    out.append(python::to_numpy(std::move(step.pulled[g]), shape));
  }
  return out;
}

}  // namespace

SPARSECORE_BINDING(train, 80) {
  py::class_<PyStepPipeline>(m, "StepPipeline",
                             "The pipelined training step on a C++ thread (sparsecore.Trainer drives it).")
      .def(py::init([](py::object collection, py::object produce, std::vector<std::string> groups, int prefetch,
                       int64_t max_steps, bool pull_rows, bool prepare_on_pool) {
             if (!PyCallable_Check(produce.ptr())) throw TypeMismatch("produce must be callable");
             const EmbeddingCollection* c = collection.is_none() ? nullptr : collection.cast<EmbeddingCollection*>();
             auto source = std::make_shared<PythonBatchSource>(std::move(produce), c);
             return make_pipeline(collection, std::move(source), std::move(groups), prefetch, max_steps, pull_rows,
                                  prepare_on_pool);
           }),
           py::arg("collection"), py::arg("produce"), py::arg("groups") = std::vector<std::string>{},
           py::arg("prefetch") = 2, py::arg("max_steps") = -1, py::arg("pull_rows") = false,
           py::arg("prepare_on_pool") = false)
      .def_static(
          "synthetic",
          [](py::object collection, const io::SyntheticGenerator& generator, int64_t batch_size, int64_t start,
             int64_t num_batches, bool compressed, std::vector<std::string> groups, int prefetch, int64_t max_steps,
             bool pull_rows) {
            io::SyntheticGenerator copy = generator;
            copy.seek(start);
            auto source = std::make_shared<SyntheticSource>(std::move(copy), batch_size, num_batches, compressed);
            return make_pipeline(collection, std::move(source), std::move(groups), prefetch, max_steps, pull_rows);
          },
          py::arg("collection"), py::arg("generator"), py::arg("batch_size"), py::arg("start") = 0,
          py::arg("num_batches") = -1, py::arg("compressed") = false, py::arg("groups") = std::vector<std::string>{},
          py::arg("prefetch") = 2, py::arg("max_steps") = -1, py::arg("pull_rows") = false,
          "A pipeline over the synthetic generator, generating and preparing without the GIL.")
      .def_static(
          "text_files",
          [](py::object collection, std::vector<std::string> paths, std::shared_ptr<io::LineFormat> format,
             int64_t batch_size, int num_threads, double max_bad_fraction, std::vector<std::string> groups,
             int prefetch, int64_t max_steps, bool pull_rows) {
            io::TextReaderOptions options;
            options.num_threads = num_threads;
            options.max_bad_fraction = max_bad_fraction;
            std::unique_ptr<io::TextReader> reader;
            {
              py::gil_scoped_release release;  // opens every file
              reader = std::make_unique<io::TextReader>(std::move(paths), std::move(format), options);
            }
            auto source = std::make_shared<TextReaderSource>(std::move(reader), batch_size);
            return make_pipeline(collection, std::move(source), std::move(groups), prefetch, max_steps, pull_rows);
          },
          py::arg("collection"), py::arg("paths"), py::arg("format"), py::arg("batch_size"), py::arg("num_threads") = 1,
          py::arg("max_bad_fraction") = 0.01, py::arg("groups") = std::vector<std::string>{}, py::arg("prefetch") = 2,
          py::arg("max_steps") = -1, py::arg("pull_rows") = false,
          "A pipeline over sample files (sparsecore._core.io formats), reading and preparing without the GIL.")
      .def(
          "next",
          [](PyStepPipeline& p) -> py::object {
            SC_CHECK_ARG(p.pipeline != nullptr, "the pipeline is closed");
            // Wait in slices so that Ctrl-C (a signal handled on this thread) is not held up.
            std::optional<PipelineStep> step;
            std::optional<io::SampleBatch> samples;
            for (;;) {
              bool ready;
              {
                py::gil_scoped_release release;
                ready = p.pipeline->wait_ready(std::chrono::milliseconds(100));
                if (ready) {
                  step = p.pipeline->next();                                        // ready: does not block
                  if (step && step->batch.samples) samples = *step->batch.samples;  // the step keeps its own
                }
              }
              if (ready) break;
              if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            }
            if (!step) return py::none();
            py::object payload;
            if (samples) {
              payload = python::batch_to_python(std::move(*samples));
            } else {
              // The Python adapter's attachment: (produce()'s result, arrays).
              const auto attachment = held(step->batch.attachment).cast<py::tuple>();
              payload = attachment[0].cast<py::tuple>()[0];
            }
            py::object prepared = step->prepared ? py::cast(python::PyPrepared{step->prepared}) : py::none();
            py::object state = step->source_state.empty() ? py::none() : py::object(py::str(step->source_state));
            return py::make_tuple(payload, prepared, pulled_arrays(*step), state);
          },
          "(payload, prepared or None, pulled rows or None, source state (JSON) or None), or None at the end "
          "of the data; the payload is produce()'s, or a compiled source's batch as a dict of arrays. "
          "Raises the source's (or prepare's) error after the steps produced before it.")
      .def(
          "close",
          [](PyStepPipeline& p) {
            if (!p.pipeline) return;
            py::gil_scoped_release release;
            p.pipeline->close();
          },
          "Stops and joins the producer thread; idempotent.");
}
