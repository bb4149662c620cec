// PipelineStep: one training step as StepPipeline (step_pipeline.h) hands it to its consumer.
//
// The batch, its prepared form (validated, deduplicated, rows found or inserted) and, when
// the pipeline pulls rows ahead, the pooled rows read on the producer. Everything backward
// needs is here, so a step stays valid after the pipeline moved on or was closed.
//
// Ownership: owns its data (the prepared batch returns its buffers to the collection's cache
// when the last copy goes). Thread-safety: a value; one thread uses it at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/train/source_batch.h"

namespace sparsecore::train {

struct PipelineStep {
  int64_t index = 0;  // 0-based, in source order
  SourceBatch batch;
  std::shared_ptr<PreparedBatch> prepared;  // groups in feature-spec order; null without a collection
  std::vector<std::vector<float>> pulled;   // pull_rows: forward outputs per group (output_size())
  std::string source_state;                 // the source's state() right after this batch
};

}  // namespace sparsecore::train
