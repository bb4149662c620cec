#include "sparsecore/io/sample_batch.h"

#include <algorithm>

#include "sparsecore/core/error.h"

namespace sparsecore::io {

SampleBatch::Mark SampleBatch::mark() const {
  Mark m{labels.size(), dense.size(), {}};
  m.ids.reserve(groups.size());
  for (const auto& g : groups) m.ids.push_back(g.ids.size());
  return m;
}

void SampleBatch::rollback(const Mark& m) {
  labels.resize(m.labels);
  dense.resize(m.dense);
  for (size_t i = 0; i < groups.size(); ++i) {
    groups[i].ids.resize(m.ids[i]);
    if (groups[i].weighted) groups[i].weights.resize(m.ids[i]);
  }
}

void SampleBatch::end_sample() {
  for (auto& g : groups) g.offsets.push_back(static_cast<int64_t>(g.ids.size()));
  ++num_samples;
}

SampleBatch SampleBatch::empty_like() const {
  SampleBatch out;
  out.has_labels = has_labels;
  out.dense_dim = dense_dim;
  out.groups.reserve(groups.size());
  for (const auto& g : groups) {
    FeatureGroupBatch e;
    e.name = g.name;
    e.weighted = g.weighted;
    e.shared = g.shared;
    out.groups.push_back(std::move(e));
  }
  return out;
}

void SampleBatch::append_samples(const SampleBatch& src, int64_t begin, int64_t end) {
  SC_CHECK_ARG(!src.compressed() && !compressed(), "append_samples: batches must be uncompressed");
  SC_CHECK_ARG(src.groups.size() == groups.size() && src.dense_dim == dense_dim,
               "append_samples: batch layouts differ");
  SC_CHECK_ARG(0 <= begin && begin <= end && end <= src.num_samples, "append_samples: range [", begin, ", ", end,
               ") outside [0, ", src.num_samples, ")");
  if (has_labels) labels.insert(labels.end(), src.labels.begin() + begin, src.labels.begin() + end);
  dense.insert(dense.end(), src.dense.begin() + begin * dense_dim, src.dense.begin() + end * dense_dim);
  if (!src.probabilities.empty())
    probabilities.insert(probabilities.end(), src.probabilities.begin() + begin, src.probabilities.begin() + end);
  if (!src.users.empty()) users.insert(users.end(), src.users.begin() + begin, src.users.begin() + end);
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const auto& s = src.groups[gi];
    auto& d = groups[gi];
    const int64_t lo = s.offsets[begin], hi = s.offsets[end];
    const int64_t shift = static_cast<int64_t>(d.ids.size()) - lo;
    d.ids.insert(d.ids.end(), s.ids.begin() + lo, s.ids.begin() + hi);
    if (d.weighted) d.weights.insert(d.weights.end(), s.weights.begin() + lo, s.weights.begin() + hi);
    d.offsets.reserve(d.offsets.size() + (end - begin));
    for (int64_t b = begin + 1; b <= end; ++b) d.offsets.push_back(s.offsets[b] + shift);
  }
  num_samples += end - begin;
}

void SampleBatch::validate() const {
  const auto B = static_cast<size_t>(num_samples);
  SC_CHECK(!has_labels || labels.size() == B, CorruptData, "batch: labels has ", labels.size(), " values for ", B,
           " samples");
  SC_CHECK(dense.size() == B * static_cast<size_t>(dense_dim), CorruptData, "batch: dense has ", dense.size(),
           " values, expected ", B, " x ", dense_dim);
  int64_t views = 0;
  if (compressed()) {
    SC_CHECK(sample_group.size() == B, CorruptData, "batch: sample_group has ", sample_group.size(), " entries for ", B,
             " samples");
    for (int64_t v : sample_group) {
      SC_CHECK(v >= 0, CorruptData, "batch: negative sample_group entry ", v);
      views = std::max(views, v + 1);
    }
  }
  for (const auto& g : groups) {
    const int64_t bags = (compressed() && g.shared) ? views : num_samples;
    SC_CHECK(g.num_bags() == bags, CorruptData, "batch: group '", g.name, "' has ", g.num_bags(), " bags, expected ",
             bags);
    SC_CHECK(g.offsets.front() == 0 && g.offsets.back() == static_cast<int64_t>(g.ids.size()), CorruptData,
             "batch: group '", g.name, "' offsets do not span its ids");
    for (size_t i = 1; i < g.offsets.size(); ++i)
      SC_CHECK(g.offsets[i - 1] <= g.offsets[i], CorruptData, "batch: group '", g.name, "' offsets decrease at ", i);
    SC_CHECK(!g.weighted || g.weights.size() == g.ids.size(), CorruptData, "batch: group '", g.name, "' has ",
             g.weights.size(), " weights for ", g.ids.size(), " ids");
  }
}

SampleBatch expand_compressed(const SampleBatch& batch) {
  if (!batch.compressed()) return batch;
  batch.validate();
  SampleBatch out = batch;
  out.sample_group.clear();
  for (auto& g : out.groups) {
    if (!g.shared) continue;
    const auto& src = batch.groups[&g - out.groups.data()];
    g.ids.clear();
    g.weights.clear();
    g.offsets.assign(1, 0);
    g.offsets.reserve(batch.num_samples + 1);
    for (int64_t view : batch.sample_group) {
      const int64_t lo = src.offsets[view], hi = src.offsets[view + 1];
      g.ids.insert(g.ids.end(), src.ids.begin() + lo, src.ids.begin() + hi);
      if (g.weighted) g.weights.insert(g.weights.end(), src.weights.begin() + lo, src.weights.begin() + hi);
      g.offsets.push_back(static_cast<int64_t>(g.ids.size()));
    }
    g.shared = false;
  }
  return out;
}

}  // namespace sparsecore::io
