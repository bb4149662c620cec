// CudaError: a CUDA runtime call failed, or no CUDA device is usable (message starts with
// "no CUDA device"). The Python bindings map it to RuntimeError.
#pragma once

#include "sparsecore/core/error.h"

namespace sparsecore::cuda {

class CudaError : public Error {
 public:
  using Error::Error;
};

}  // namespace sparsecore::cuda
