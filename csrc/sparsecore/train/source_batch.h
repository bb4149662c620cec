// SourceBatch: one batch as a BatchSource (batch_source.h) yields it.
//
// Per feature group, a view of its CSR arrays (ids int64[n], offsets int64[bags + 1],
// optional weights float32[n], host memory) and the owner that keeps those arrays alive: a
// C++ source owns an io::SampleBatch in `samples` and views its groups; a foreign source (the
// Python adapter of the bindings) owns its arrays through `attachment` and leaves `samples`
// null. Whatever `attachment` holds travels with the batch to the consumer of the pipeline.
//
// Thread-safety: an immutable value once built; may be read from any thread. Copies share
// the owners.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "sparsecore/io/sample_batch.h"

namespace sparsecore::train {

// One feature group of a SourceBatch. Pointers are host memory owned by the batch.
struct GroupView {
  std::string name;
  const int64_t* ids = nullptr;  // (num_ids)
  int64_t num_ids = 0;
  const int64_t* offsets = nullptr;  // (num_bags + 1), CSR
  int64_t num_bags = 0;
  const float* weights = nullptr;  // (num_ids) or nullptr
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

}  // namespace sparsecore::train
