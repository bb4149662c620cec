#include "sparsecore/train/source_batch.h"

namespace sparsecore::train {

SourceBatch SourceBatch::of(io::SampleBatch batch) {
  SourceBatch out;
  auto owned = std::make_shared<const io::SampleBatch>(std::move(batch));
  out.groups.reserve(owned->groups.size());
  for (const io::FeatureGroupBatch& g : owned->groups) {
    GroupView v;
    v.name = g.name;
    v.ids = g.ids.data();
    v.num_ids = static_cast<int64_t>(g.ids.size());
    v.offsets = g.offsets.data();
    v.num_bags = g.num_bags();
    v.weights = g.weighted ? g.weights.data() : nullptr;
    out.groups.push_back(std::move(v));
  }
  out.samples = std::move(owned);
  return out;
}

const GroupView* SourceBatch::group(const std::string& name) const {
  for (const GroupView& g : groups)
    if (g.name == name) return &g;
  return nullptr;
}

int64_t SourceBatch::num_samples() const {
  if (samples) return samples->num_samples;
  return groups.empty() ? 0 : groups.front().num_bags;
}

}  // namespace sparsecore::train
