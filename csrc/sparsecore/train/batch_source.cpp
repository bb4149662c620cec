#include "sparsecore/train/batch_source.h"

#include "sparsecore/core/error.h"

namespace sparsecore::train {

void BatchSource::load_state(const std::string&) {
  throw InvalidArgument("this batch source cannot resume from a saved state");
}

}  // namespace sparsecore::train
