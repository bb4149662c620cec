#include "sparsecore/train/synthetic_source.h"

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"

namespace sparsecore::train {

SyntheticSource::SyntheticSource(io::SyntheticGenerator generator, int64_t batch_size, int64_t num_batches,
                                 bool compressed)
    : generator_(std::move(generator)), batch_size_(batch_size), num_batches_(num_batches), compressed_(compressed) {
  SC_CHECK_ARG(batch_size >= 1, "SyntheticSource: batch_size must be >= 1, got ", batch_size);
}

std::optional<SourceBatch> SyntheticSource::next_batch() {
  if (num_batches_ >= 0 && batches_ >= num_batches_) return std::nullopt;
  SourceBatch out = SourceBatch::of(generator_.next_batch(batch_size_, compressed_));
  ++batches_;
  return out;
}

std::string SyntheticSource::state() const {
  Json j = Json::object();
  j["position"] = generator_.position();
  j["batches"] = batches_;
  return j.dump();
}

void SyntheticSource::load_state(const std::string& state) {
  const Json j = Json::parse(state);
  const int64_t position = j.at("position").as_int("position");
  const int64_t batches = j.at("batches").as_int("batches");
  SC_CHECK_ARG(position >= 0 && batches >= 0, "SyntheticSource: a state needs position and batches >= 0, got ",
               position, " and ", batches);
  generator_.seek(position);
  batches_ = batches;
}

}  // namespace sparsecore::train
