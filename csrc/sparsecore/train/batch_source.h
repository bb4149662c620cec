// BatchSource: where the training pipeline (step_pipeline.h) reads its batches from.
//
// A source yields SourceBatch values: per feature group, a view of its CSR arrays
// (ids int64[n], offsets int64[bags + 1], optional weights float32[n], host memory) and the
// owner that keeps those arrays alive. Sources written in C++ (synthetic_source.h,
// text_reader_source.h) own an io::SampleBatch and view its groups; a foreign source (the
// Python adapter of the bindings) owns its arrays through `attachment` and leaves `samples`
// empty. Whatever `attachment` holds travels with the batch to the consumer of the pipeline.
//
// Resume: state() is the position just past the last batch returned, as JSON text (empty
// when the source cannot resume); load_state() continues from a state() taken earlier.
//
// Thread-safety: one thread at a time calls a source (the pipeline's producer thread);
// a SourceBatch is an immutable value once returned and may be read from any thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sparsecore/io/sample_batch.h"

namespace sparsecore::train {

// One feature group of a SourceBatch. Pointers are host memory owned by the batch.
struct GroupView {
  std::string name;
  const int64_t* ids = nullptr;      // (num_ids)
  int64_t num_ids = 0;
  const int64_t* offsets = nullptr;  // (num_bags + 1), CSR
  int64_t num_bags = 0;
  const float* weights = nullptr;    // (num_ids) or nullptr
};

struct SourceBatch {
  std::shared_ptr<const io::SampleBatch> samples;  // the batch of a C++ source; null for a foreign one
  std::vector<GroupView> groups;                   // views into `samples` or into `attachment`
  std::shared_ptr<const void> attachment;          // a foreign source's data and anything it hands on

  // A batch that owns `batch` and views each of its groups.
  static SourceBatch of(io::SampleBatch batch);
  // The group named `name`, or nullptr.
  const GroupView* group(const std::string& name) const;
  // Samples of the batch: samples->num_samples, or the first group's bag count for a foreign one.
  int64_t num_samples() const;
};

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
