// Synthetic CTR samples with a planted ground truth (workloads W1 and W2 of bench/README.md).
//
// Sample s (a global index: batches of any size cut the same stream) has, per feature group
// g, a bag of L ids, L uniform in [min_bag, max_bag]; each id is a Zipf(zipf_exponent) rank
// in [1, vocab_size] mapped through a fixed pseudo-random permutation of [0, vocab_size)
// (keyed by permutation_seed) so hot ids are scattered. Its label is Bernoulli(p) with
//   p = sigmoid(bias + sum_g sum_{id in bag_g} w_g(id)),
//   w_g(id) = weight_std * z, z ~ approximately N(0, 1) (Irwin-Hall of 4 uniforms) drawn
//   from a counter hash of (seed, g, id),
// so the best achievable AUC is the AUC of p itself (planted optimum).
//
// Sample compression: with samples_per_view = r > 1, samples [v r, (v + 1) r) form page view
// v, and the first num_user_groups groups describe its user: their bags depend on v only.
// A compressed batch carries those groups once per page view touched (a view cut by a
// batch boundary appears in both batches) with sample_group mapping samples to views; an
// uncompressed batch repeats them per sample. users[i] = v (GAUC groups by page view).
//
// Drift (drift_period = D > 0): ids come and go as they do in an online log. Each Zipf rank k
// is a slot that a sequence of ids occupies in turn, each for D samples: at sample s the slot
// holds its generation n = (s + phase_k) / D, phase_k a hash of k in [0, D), and the id is
// perm62(n * vocab_size + k - 1) (a fixed bijection of [0, 2^62), keyed by permutation_seed).
// Every D samples each slot gets a new id (staggered, so about vocab_size / D slots change per
// sample) and its old id is never drawn again, at every popularity. Page-view bags use the
// view's first sample. D = 0 is the stationary stream above.
//
// Everything is a pure function of (config, sample index): deterministic for any batch size
// and thread count. Generation runs on the compute pool.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/io/sample_batch.h"
#include "sparsecore/io/zipf_sampler.h"

namespace sparsecore::io {

struct SyntheticConfig {
  std::vector<std::string> group_names;  // one per feature group
  int64_t vocab_size = 1'000'000;
  int64_t min_bag = 1;
  int64_t max_bag = 20;
  double zipf_exponent = 1.1;
  uint64_t permutation_seed = 1234;
  uint64_t seed = 0;        // planted weights and the sample stream
  double weight_std = 0.1;  // of the planted per-id weights
  double bias = -1.0;       // planted logit bias
  int64_t num_user_groups = 0;
  int64_t samples_per_view = 1;
  int64_t drift_period = 0;  // samples per popularity shift (0: no drift)

  // Throws InvalidArgument naming the field at fault.
  void validate() const;
};

class SyntheticGenerator {
 public:
  explicit SyntheticGenerator(SyntheticConfig config);

  const SyntheticConfig& config() const { return config_; }

  // Samples [first, first + count), compressed or not (compressed needs samples_per_view > 1
  // and num_user_groups > 0; otherwise the batch is uncompressed either way). Carries
  // labels, probabilities and users.
  SampleBatch generate(int64_t first, int64_t count, bool compressed) const;

  // Streaming: the next batch_size samples after position().
  SampleBatch next_batch(int64_t batch_size, bool compressed = false);
  int64_t position() const { return position_; }
  void seek(int64_t sample_index);

  // The planted weight of `id` in group `group` (for tests and the true-probability oracle).
  double planted_weight(int64_t group, int64_t id) const;
  // The planted click probability of every sample of `batch` (any batch with this
  // generator's groups, compressed or not): sigmoid(bias + sum of planted weights).
  std::vector<double> true_probabilities(const SampleBatch& batch) const;

  // The id of Zipf rank k (1-based) after the permutation (the stationary stream).
  int64_t rank_to_id(int64_t rank) const;
  // The id of Zipf rank k at sample `sample`: rank_to_id(k) without drift, else the id that
  // holds slot k then (the header comment).
  int64_t id_at(int64_t rank, int64_t sample) const;

 private:
  SyntheticConfig config_;
  ZipfSampler zipf_;
  std::vector<uint64_t> group_seeds_;  // planted weights per group
  uint64_t perm_round_keys_[4];
  int perm_half_bits_ = 1;  // the permutation is a Feistel network on 2 * this many bits
  int64_t position_ = 0;
};

}  // namespace sparsecore::io
