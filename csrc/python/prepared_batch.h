// The Python face of a prepared batch (sparsecore._core.PreparedBatch), shared by the
// bindings that hand one out: EmbeddingCollection.prepare and the training pipeline.
#pragma once

#include <memory>

#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::python {

struct PyPrepared {
  std::shared_ptr<PreparedBatch> batch;
};

}  // namespace sparsecore::python
