#include "sparsecore/io/synthetic_generator.h"

#include <cmath>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore::io {

namespace {

// Stream domains, so bags, labels and weights never share counters.
constexpr uint64_t kViewBagDomain = 0x5553455242414753ULL;
constexpr uint64_t kSampleBagDomain = 0x4144424147530000ULL;
constexpr uint64_t kLabelDomain = 0x4c4142454c530000ULL;
constexpr uint64_t kWeightDomain = 0x574549474854ULL;
constexpr int64_t kGrain = 256;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

void SyntheticConfig::validate() const {
  SC_CHECK_ARG(!group_names.empty(), "synthetic: group_names is empty");
  std::set<std::string> seen;
  for (const auto& n : group_names) {
    SC_CHECK_ARG(!n.empty(), "synthetic: group_names has an empty name");
    SC_CHECK_ARG(seen.insert(n).second, "synthetic: group name '", n, "' repeats");
  }
  SC_CHECK_ARG(vocab_size >= 1, "synthetic: vocab_size must be >= 1, got ", vocab_size);
  SC_CHECK_ARG(min_bag >= 0 && max_bag >= min_bag, "synthetic: need 0 <= min_bag <= max_bag, got ", min_bag, ", ",
               max_bag);
  SC_CHECK_ARG(std::isfinite(zipf_exponent) && zipf_exponent > 0, "synthetic: zipf_exponent must be > 0, got ",
               zipf_exponent);
  SC_CHECK_ARG(std::isfinite(weight_std) && weight_std >= 0, "synthetic: weight_std must be >= 0, got ", weight_std);
  SC_CHECK_ARG(std::isfinite(bias), "synthetic: bias must be finite");
  SC_CHECK_ARG(num_user_groups >= 0 && num_user_groups <= static_cast<int64_t>(group_names.size()),
               "synthetic: num_user_groups must be in [0, ", group_names.size(), "], got ", num_user_groups);
  SC_CHECK_ARG(samples_per_view >= 1, "synthetic: samples_per_view must be >= 1, got ", samples_per_view);
  SC_CHECK_ARG(drift_period >= 0, "synthetic: drift_period must be >= 0, got ", drift_period);
}

SyntheticGenerator::SyntheticGenerator(SyntheticConfig config)
    : config_((config.validate(), std::move(config))), zipf_(config_.vocab_size, config_.zipf_exponent) {
  for (size_t g = 0; g < config_.group_names.size(); ++g)
    group_seeds_.push_back(hash_combine(config_.seed ^ kWeightDomain, g));
  for (uint64_t round = 0; round < 4; ++round) perm_round_keys_[round] = hash_combine(config_.permutation_seed, round);
  while ((uint64_t{1} << (2 * perm_half_bits_)) < static_cast<uint64_t>(config_.vocab_size)) ++perm_half_bits_;
}

int64_t SyntheticGenerator::rank_to_id(int64_t rank) const {
  // Balanced 4-round Feistel network on 2h bits, cycle-walked into [0, vocab_size): a
  // bijection of [0, vocab_size) with no table.
  const int h = perm_half_bits_;
  const uint64_t mask = (uint64_t{1} << h) - 1;
  uint64_t x = static_cast<uint64_t>(rank - 1);
  do {
    uint64_t left = x >> h, right = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = splitmix64(right ^ perm_round_keys_[round]) & mask;
      const uint64_t next_right = left ^ f;
      left = right;
      right = next_right;
    }
    x = (left << h) | right;
  } while (x >= static_cast<uint64_t>(config_.vocab_size));
  return static_cast<int64_t>(x);
}

int64_t SyntheticGenerator::id_at(int64_t rank, int64_t sample) const {
  if (config_.drift_period == 0) return rank_to_id(rank);
  // A 4-round Feistel network on two 31-bit halves: a bijection of [0, 2^62), so positions
  // never collide and ids stay non-negative.
  constexpr int h = 31;
  constexpr uint64_t mask = (uint64_t{1} << h) - 1;
  const auto period = static_cast<uint64_t>(config_.drift_period);
  const uint64_t phase = splitmix64(perm_round_keys_[0] ^ static_cast<uint64_t>(rank)) % period;
  const uint64_t generation = (static_cast<uint64_t>(sample) + phase) / period;
  const uint64_t q = generation * static_cast<uint64_t>(config_.vocab_size) + static_cast<uint64_t>(rank - 1);
  uint64_t left = (q >> h) & mask, right = q & mask;
  for (uint64_t round = 0; round < 4; ++round) {
    const uint64_t f = splitmix64(right ^ perm_round_keys_[round]) & mask;
    const uint64_t next_right = left ^ f;
    left = right;
    right = next_right;
  }
  return static_cast<int64_t>((left << h) | right);
}

double SyntheticGenerator::planted_weight(int64_t group, int64_t id) const {
  // Irwin-Hall: the sum of four 16-bit uniforms of one hash, standardised. Close to N(0, 1)
  // (bounded by +-2 sqrt(3)) at a fraction of Box-Muller's cost; this runs once per id.
  const uint64_t h = hash_combine(group_seeds_[group], static_cast<uint64_t>(id));
  const double sum = static_cast<double>((h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48));
  return config_.weight_std * (sum * (1.0 / 65536.0) - 2.0) * 1.7320508075688772;
}

SampleBatch SyntheticGenerator::generate(int64_t first, int64_t count, bool compressed) const {
  SC_CHECK_ARG(first >= 0 && count >= 0, "synthetic: first and count must be >= 0, got ", first, ", ", count);
  const auto& c = config_;
  const int64_t r = c.samples_per_view;
  compressed = compressed && r > 1 && c.num_user_groups > 0 && count > 0;
  const int64_t first_view = first / r;
  const int64_t views = count > 0 ? (first + count - 1) / r - first_view + 1 : 0;
  const auto num_groups = static_cast<int64_t>(c.group_names.size());
  const uint64_t bag_span = static_cast<uint64_t>(c.max_bag - c.min_bag + 1);

  SampleBatch out;
  out.num_samples = count;
  out.labels.resize(count);
  out.probabilities.resize(count);
  out.users.resize(count);
  if (compressed) out.sample_group.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    out.users[i] = (first + i) / r;
    if (compressed) out.sample_group[i] = out.users[i] - first_view;
  }

  // Per group: bags, their ids and each bag's planted logit.
  std::vector<std::vector<double>> bag_logit(num_groups);
  for (int64_t g = 0; g < num_groups; ++g) {
    FeatureGroupBatch grp;
    grp.name = c.group_names[g];
    const bool per_view = g < c.num_user_groups;
    grp.shared = compressed && per_view;
    const int64_t bags = grp.shared ? views : count;
    // The stream of bag b: keyed by its page view (user groups) or its sample.
    auto stream = [&](int64_t b) {
      const int64_t key = grp.shared ? first_view + b : (per_view ? (first + b) / r : first + b);
      const uint64_t domain = per_view ? kViewBagDomain : kSampleBagDomain;
      return SplitMixStream{hash_combine(hash_combine(c.seed ^ domain, static_cast<uint64_t>(key)), g)};
    };
    grp.offsets.assign(bags + 1, 0);
    parallel_for(bags, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        auto rng = stream(b);
        grp.offsets[b + 1] = c.min_bag + static_cast<int64_t>(rng.below(bag_span));
      }
    });
    for (int64_t b = 0; b < bags; ++b) grp.offsets[b + 1] += grp.offsets[b];
    grp.ids.resize(grp.offsets[bags]);
    auto& logit = bag_logit[g];
    logit.assign(bags, 0.0);
    parallel_for(bags, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        auto rng = stream(b);
        rng.next();  // the bag length
        const int64_t at = grp.shared ? (first_view + b) * r : (per_view ? (first + b) / r * r : first + b);
        double sum = 0.0;
        for (int64_t k = grp.offsets[b]; k < grp.offsets[b + 1]; ++k) {
          grp.ids[k] = id_at(zipf_.sample(rng), at);
          sum += planted_weight(g, grp.ids[k]);
        }
        logit[b] = sum;
      }
    });
    out.groups.push_back(std::move(grp));
  }

  parallel_for(count, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double z = c.bias;
      for (int64_t g = 0; g < num_groups; ++g) z += bag_logit[g][out.groups[g].shared ? out.sample_group[i] : i];
      const double p = sigmoid(z);
      SplitMixStream rng{hash_combine(c.seed ^ kLabelDomain, static_cast<uint64_t>(first + i))};
      out.probabilities[i] = p;
      out.labels[i] = rng.uniform() < p ? 1.0f : 0.0f;
    }
  });
  return out;
}

SampleBatch SyntheticGenerator::next_batch(int64_t batch_size, bool compressed) {
  SC_CHECK_ARG(batch_size >= 1, "next_batch: batch_size must be >= 1, got ", batch_size);
  SampleBatch b = generate(position_, batch_size, compressed);
  position_ += batch_size;
  return b;
}

void SyntheticGenerator::seek(int64_t sample_index) {
  SC_CHECK_ARG(sample_index >= 0, "seek: sample index must be >= 0, got ", sample_index);
  position_ = sample_index;
}

std::vector<double> SyntheticGenerator::true_probabilities(const SampleBatch& batch) const {
  batch.validate();
  const auto num_groups = static_cast<int64_t>(config_.group_names.size());
  SC_CHECK_ARG(static_cast<int64_t>(batch.groups.size()) == num_groups, "true_probabilities: batch has ",
               batch.groups.size(), " groups, the generator ", num_groups);
  std::vector<double> p(batch.num_samples);
  parallel_for(batch.num_samples, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double z = config_.bias;
      for (int64_t g = 0; g < num_groups; ++g) {
        const auto& grp = batch.groups[g];
        const int64_t bag = (batch.compressed() && grp.shared) ? batch.sample_group[i] : i;
        double sum = 0.0;  // summed per bag first, in generate()'s order: the same bits
        for (int64_t k = grp.offsets[bag]; k < grp.offsets[bag + 1]; ++k) sum += planted_weight(g, grp.ids[k]);
        z += sum;
      }
      p[i] = sigmoid(z);
    }
  });
  return p;
}

}  // namespace sparsecore::io
