// Feature admission: which ids a training lookup may turn into rows. Until an id is admitted
// its training lookups read the table's default row (TableConfig::default_value in every
// element) and its gradients are dropped (counted, never applied, never inserted); evaluation
// lookups are unchanged.
//
// Each sighting (a training lookup that finds no row for the id; each distinct id counts once
// per lookup call) admits the id when
//   not denied  and  (allowed  or  (count  and  probability  and  frequency))
// deny list          ids never admitted (each sighting is rejected, nothing is counted);
// allow list         ids admitted at their first sighting whatever the other filters say
//                    (the two lists must not share an id);
//   count threshold n  the id has been sighted at least n times (this sighting included);
//   probability p      a hash of (table seed, id, sighting count) falls below p, so the
//                      decision is the same in every process and thread order;
//   frequency          the streaming frequency filter, with horizon H > 0: arrivals of an id
//                      are modelled as a Poisson process. Its first sighting (at clock tick
//                      t0) starts the observation; the c - 1 sightings after it up to now (t)
//                      give the rate estimate lambda = (c - 1) / max(t - t0, 1), and the
//                      probability that the id appears again within H ticks is
//                      P = 1 - exp(-lambda H) (0 at the first sighting). Threshold mode admits
//                      when P >= q (frequency_threshold); sample mode admits when a hash of
//                      (table seed, id, c), read as a uniform u in [0, 1), falls below P.
//                      The clock ticks once per training lookup call of the table that sights
//                      ids (embedded: each training prepare; a server shard: each training
//                      pull it answers), so t counts batches, not wall time. Exact counts only
//                      (a Bloom filter keeps no first sighting per id).
// The counts are exact (one entry per pending id, dropped when it is admitted) or, with
// bloom_capacity > 0, a counting Bloom filter of fixed memory: m = ceil(-C ln(f) / ln(2)^2)
// counters of 4 or 8 bits and k = round(m / C ln 2) hashes (1..16) for a capacity C and a
// false-positive rate f. Its estimate is the smallest of an id's k counters: it never
// under-counts, over-counts an id never sighted with probability about f once C distinct ids
// were sighted, and its counters saturate at 2^bits - 1 (so n must not exceed that).
//
// Thread-safety: sight() and the statistics may be called from any thread (one mutex).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/table/key_map.h"

namespace sparsecore {

// A sorted list of distinct ids, shared between copies of a config (lists may hold millions).
using IdList = std::shared_ptr<const std::vector<int64_t>>;
// Sorts and deduplicates ids into a list (nullptr when empty).
IdList make_id_list(std::vector<int64_t> ids);
inline bool list_contains(const IdList& list, int64_t key) {
  return list && std::binary_search(list->begin(), list->end(), key);
}

struct AdmissionConfig {
  int64_t count_threshold = 1;       // sightings before an id becomes a row (1: the first)
  double probability = 1.0;          // per-sighting admission probability, in (0, 1]
  int64_t bloom_capacity = 0;        // 0: exact counts; > 0: distinct ids the Bloom filter is sized for
  double bloom_fp_rate = 0.01;       // in (0, 1)
  int bloom_counter_bits = 8;        // 4 or 8
  IdList allow;                      // admitted at the first sighting (nullptr: none)
  IdList deny;                       // never admitted (nullptr: none)
  double frequency_horizon = 0.0;    // H in clock ticks; 0: no frequency filter
  double frequency_threshold = 0.5;  // q in (0, 1]: threshold mode admits when P >= q
  bool frequency_sample = false;     // admit with probability P instead (seeded hash)

  // Whether the table needs an admission filter (the default config admits every id at once;
  // an allow list alone admits every id too, but is kept with the config).
  bool enabled() const { return count_threshold > 1 || probability < 1.0 || frequency_horizon > 0.0 || allow || deny; }
  void validate(const std::string& table) const;  // InvalidArgument naming the table and field
  Json to_json() const;
  static AdmissionConfig from_json(const Json& j);
};

struct AdmissionStats {
  int64_t admitted = 0;           // ids admitted (rows created by admission)
  int64_t pending = 0;            // ids sighted but not admitted (Bloom: estimated, see pending())
  int64_t rejected = 0;           // sightings that did not admit their id
  int64_t dropped_gradients = 0;  // gradients of ids that were not rows (one per id and update)
};

// The counting Bloom filter alone (see the header comment for its sizing).
class CountingBloom {
 public:
  CountingBloom(int64_t capacity, double fp_rate, int counter_bits, uint64_t seed);

  int64_t num_counters() const { return m_; }
  int num_hashes() const { return k_; }
  int counter_bits() const { return bits_; }
  uint32_t max_count() const { return max_; }
  // Adds one sighting of key (saturating) and returns the new estimate.
  uint32_t add(int64_t key);
  uint32_t estimate(int64_t key) const;
  std::vector<uint8_t>& bytes() { return cells_; }
  const std::vector<uint8_t>& bytes() const { return cells_; }

 private:
  friend class Admission;
  uint64_t index(uint64_t h1, uint64_t h2, int i) const;
  uint32_t get(uint64_t i) const;
  void set(uint64_t i, uint32_t v);

  int64_t m_;
  int k_;
  int bits_;
  uint32_t max_;
  uint64_t seed_;
  std::vector<uint8_t> cells_;
};

class Admission {
 public:
  Admission(AdmissionConfig config, uint64_t table_seed);

  const AdmissionConfig& config() const { return config_; }
  // One sighting of a key that has no row: true when it is admitted now.
  bool sight(int64_t key);
  // sight() of keys[0], keys[1], ... in that order under one lock (the same decisions):
  // admit (n) receives 1 where the key is admitted now. keys, admit: host.
  void sight_all(const int64_t* keys, int64_t n, unsigned char* admit);
  // Whether the probability filter admits key at its count-th sighting (the seeded hash).
  static bool probability_admits(double p, uint64_t table_seed, int64_t key, int64_t count);
  // The frequency filter's P = 1 - exp(-lambda * horizon), lambda = (count - 1) / max(elapsed, 1).
  static double reappearance_probability(int64_t count, int64_t elapsed, double horizon);
  // Whether the frequency filter admits key at its count-th sighting, `elapsed` ticks after its first.
  bool frequency_admits(int64_t key, int64_t count, int64_t elapsed) const;
  // Advances the clock by one tick (one training lookup call of the table); returns the new time.
  int64_t tick();
  int64_t clock() const { return clock_.load(std::memory_order_relaxed); }
  void count_dropped(int64_t n) { dropped_.fetch_add(n, std::memory_order_relaxed); }
  AdmissionStats stats() const;
  const CountingBloom* bloom() const { return bloom_.get(); }

  // Folds in the state of another table part with the same config (a server restoring a
  // snapshot written by another number of shards): exact counts of the ids `keep` accepts
  // (the larger count wins, with the earlier first sighting), or Bloom counters added cell by
  // cell (saturating, so the estimate still never under-counts); the later clock.
  // with_stats: also add its statistics (the same shard's part).
  void merge_from(const Admission& other, const std::function<bool(int64_t)>& keep, bool with_stats);
  // The whole state (counts or Bloom counters, the clock and the statistics) as bytes, and
  // back; the bytes are refused (InvalidArgument) unless they are exactly what serialize()
  // writes for this config. The allow and deny lists are part of the config, not the state.
  std::vector<uint8_t> serialize() const;
  void deserialize(const uint8_t* data, size_t size);
  // The size of the header serialize() writes, and of each exact-count entry after it.
  static constexpr size_t kHeaderBytes = 56;
  static constexpr size_t kEntryBytes = 16;

 private:
  AdmissionConfig config_;
  uint64_t seed_;
  mutable std::mutex mutex_;
  // Exact mode: the pending ids, their sightings and the tick of their first sighting
  // (saturating at 2^32 - 1, as row metadata keeps steps).
  struct Pending {
    uint32_t count;
    uint32_t first;
  };
  KeyMap<Pending> counts_;
  bool sight_locked(int64_t key);  // sight() with mutex_ held
  std::unique_ptr<CountingBloom> bloom_;
  int64_t admitted_ = 0;
  int64_t bloom_pending_ = 0;  // Bloom mode: sightings whose estimate was 0 before, less admitted
  int64_t rejected_ = 0;
  std::atomic<int64_t> dropped_{0};
  std::atomic<int64_t> clock_{0};
};

}  // namespace sparsecore
