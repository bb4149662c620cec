// SyntheticSource: a BatchSource over the synthetic generator (io/synthetic_generator.h).
//
// Batch k holds samples [start + k * batch_size, start + (k + 1) * batch_size) of the
// generator's stream; the stream is endless, so `num_batches` (< 0: no limit) ends it.
// State: {"position": next sample index, "batches": batches returned}.
//
// Thread-safety: one thread at a time (BatchSource). Generation runs on the compute pool.
#pragma once

#include <cstdint>

#include "sparsecore/io/synthetic_generator.h"
#include "sparsecore/train/batch_source.h"

namespace sparsecore::train {

class SyntheticSource : public BatchSource {
 public:
  // Throws InvalidArgument for batch_size < 1.
  SyntheticSource(io::SyntheticGenerator generator, int64_t batch_size, int64_t num_batches = -1,
                  bool compressed = false);

  std::optional<SourceBatch> next_batch() override;
  std::string state() const override;
  void load_state(const std::string& state) override;

  const io::SyntheticGenerator& generator() const { return generator_; }

 private:
  io::SyntheticGenerator generator_;
  int64_t batch_size_;
  int64_t num_batches_;
  bool compressed_;
  int64_t batches_ = 0;
};

}  // namespace sparsecore::train
