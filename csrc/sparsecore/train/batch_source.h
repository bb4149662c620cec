// BatchSource: where the training pipeline (step_pipeline.h) reads its batches from.
//
// A source yields SourceBatch values (source_batch.h): views of each feature group's CSR
// arrays and their owner. Sources written in C++ (synthetic_source.h, text_reader_source.h)
// own an io::SampleBatch; the Python adapter of the bindings owns Python arrays.
//
// Resume: state() is the position just past the last batch returned, as JSON text (empty
// when the source cannot resume); load_state() continues from a state() taken earlier.
//
// Thread-safety: one thread at a time calls a source (the pipeline's producer thread).
#pragma once

#include <optional>
#include <string>

#include "sparsecore/train/source_batch.h"

namespace sparsecore::train {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // The next batch, or nullopt at the end of the data. May throw (any typed Error); the
  // pipeline hands the exception to its consumer.
  virtual std::optional<SourceBatch> next_batch() = 0;
  // Position after the last batch returned, as JSON text; "" when the source cannot resume.
  virtual std::string state() const { return {}; }
  // Continues from a state() of this kind of source. Throws InvalidArgument when the state
  // does not fit the source (the default: a source that cannot resume).
  virtual void load_state(const std::string& state);
};

}  // namespace sparsecore::train
