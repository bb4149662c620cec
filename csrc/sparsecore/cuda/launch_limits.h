// cuda::LaunchLimits: the block shape every launch of the device backends uses.
//
// Kernels are grid-stride loops, so any block count is correct; the block size is bounded by
// kMaxBlockThreads, which every kernel also declares as its __launch_bounds__ (the compiler
// budgets registers for it, and a launch past it fails on a device): one constant for both.
#pragma once

#include "sparsecore/core/error.h"

namespace sparsecore::cuda {

struct LaunchLimits {
  static constexpr int kMaxBlockThreads = 256;

  int block_threads = 128;  // threads per block: a multiple of 32 in [32, kMaxBlockThreads]
  int max_blocks = 0;       // 0: as many as the work needs; kernels are grid-stride loops

  // InvalidArgument naming the bad field.
  void validate() const {
    SC_CHECK_ARG(block_threads >= 32 && block_threads <= kMaxBlockThreads && block_threads % 32 == 0,
                 "block_threads must be a multiple of 32 in [32, ", kMaxBlockThreads, "], got ", block_threads);
    SC_CHECK_ARG(max_blocks >= 0, "max_blocks must be >= 0, got ", max_blocks);
  }
};

}  // namespace sparsecore::cuda
