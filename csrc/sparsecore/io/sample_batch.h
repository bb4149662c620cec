// A batch of samples in the engine's input format (docs/architecture.md, "One training step"), as readers and the
// synthetic generator produce it.
//
// Per feature group: ids int64[n] and offsets int64[bags + 1] (CSR bags: offsets[0] = 0,
// non-decreasing, offsets[bags] = n), and weights float32[n] when the group carries them.
// An uncompressed batch has one bag per sample in every group. A compressed batch (sample
// compression, as in XDL) carries each `shared` group once per page view: G bags, and
// sample_group int64[B] maps every sample to its page view in [0, G). expand_compressed()
// turns it into the uncompressed batch.
//
// Thread-safety: a plain value; one writer at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsecore::io {

struct FeatureGroupBatch {
  std::string name;
  bool weighted = false;  // weights holds one value per id
  bool shared = false;    // one bag per page view (compressed batches only)
  std::vector<int64_t> ids;
  std::vector<int64_t> offsets{0};
  std::vector<float> weights;

  int64_t num_bags() const { return static_cast<int64_t>(offsets.size()) - 1; }
};

struct SampleBatch {
  int64_t num_samples = 0;
  bool has_labels = true;
  std::vector<float> labels;  // (B,) when has_labels
  int64_t dense_dim = 0;
  std::vector<float> dense;  // (B, dense_dim), row-major
  std::vector<FeatureGroupBatch> groups;
  std::vector<int64_t> sample_group;  // (B,) page view of each sample; empty: uncompressed
  std::vector<double> probabilities;  // (B,) synthetic data: the planted click probability
  std::vector<int64_t> users;         // (B,) synthetic data: user of each sample (GAUC)

  bool compressed() const { return !sample_group.empty(); }

  // Sizes at a point in time, so a parser can undo a half-written sample.
  struct Mark {
    size_t labels, dense;
    std::vector<size_t> ids;
  };
  Mark mark() const;
  void rollback(const Mark& m);
  // Closes the current sample: one bag per group ends here. Parsers append the label, the
  // dense values and every group's ids (and weights) first, then call this.
  void end_sample();

  // Appends samples [begin, end) of `src` (same layout, uncompressed) to this batch.
  void append_samples(const SampleBatch& src, int64_t begin, int64_t end);
  // A batch with the same layout and no samples.
  SampleBatch empty_like() const;
  // Checks the CSR invariants and sizes; throws CorruptData naming the group (for tests).
  void validate() const;
};

// The uncompressed twin of a compressed batch: every shared group gets one bag per sample,
// a copy of its page view's bag. An uncompressed batch is returned unchanged.
SampleBatch expand_compressed(const SampleBatch& batch);

}  // namespace sparsecore::io
