// Row expiry and hard capacity of one hash table: which rows leave the table, and what a
// training lookup does when the table is full.
//
// Rules (a row is expired when any enabled rule names it):
//   ttl_steps N      the row was not updated in the last N steps: last_step < step - N;
//   ttl_seconds S    the row was not updated in the last S seconds of wall time. Rows carry
//                    no time: the table keeps a small monotone map step -> wall time (one
//                    entry per step it saw, thinned to every other entry past kMaxStepTimes),
//                    and a row is expired when last_step <= T, T the newest recorded step whose
//                    time is at or before now - S. Thinning only lowers T, so the rule never
//                    expires a row updated within S seconds;
//   min_l2_norm x    the L2 norm of the row's weights is below x;
//   predicate        a callable over (key, RowMeta) set at run time (not saved: the config
//                    only records that the table expects one; until it is set it names none).
// A table with expiry stamps a new row's last_step with the step it was created at, so a
// row not yet trained is neither the first one evicted nor expired at once.
//
// Capacity C > 0 is a hard bound on the rows of the table, split over its hash shards (shard
// s holds at most C / shards rows, the first C % shards shards one more), so it holds under
// concurrent training without a global lock. When a training lookup would pass a shard's
// bound, on_full decides: "evict" removes the shard's lowest-scored rows in one pass over the
// shard (nth_element; LRU scores by (last_step, update_count), LFU by (update_count,
// last_step), ties by key), freeing room for the rows needed plus eviction_headroom x the
// shard's capacity so the pass runs once per that many inserts; rows of the lookup itself are
// never evicted. "refuse" (or rows that do not fit even after eviction) leaves the id without
// a row: it reads the default row and its gradient is dropped and counted, as for an id that
// feature admission has not admitted yet. Never a silent zero: every refusal is counted.
//
// eviction "exact" (the default) ranks every row of the shard, as above. eviction "sampled"
// (approximate LRU/LFU, as Redis does it) ranks only a sample: a window of the shard's hash
// index of at least kSamplesPerEviction x the rows to evict (and kMinEvictionSample) live
// rows, starting at a slot chosen by a seeded hash of (table seed, shard, shard size, the
// lookup's keys) and widened to whole probe runs, and evicts the lowest-scored rows of the
// window. Keys sit in the index by their hash, independent of their scores, so the window is
// a random sample of the shard: what it guarantees is that every evicted row ranks among the
// lowest 1 / kSamplesPerEviction of its sample, not of the shard (an evicted row is in the
// shard's lowest-scored quarter, say, with a probability that grows quickly with the sample).
// The capacity bound is exact either way, and so is determinism: which slots a key set
// occupies under linear probing with backward-shift erase does not depend on the order the
// keys came in, so the same table history evicts the same ids for any thread count. A shard
// smaller than the sample is ranked whole, as by "exact".
//
// Expiry runs on demand (EmbeddingTable::expire) or incrementally: each step examines the
// next scan_per_step slots of the hash index (a cursor over shards and slots).
//
// Thread-safety: every method may be called from any thread (atomics and one mutex for the
// step clock); the predicate and clock are set before concurrent use.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"

namespace sparsecore {

struct RowMeta;

enum class EvictionPolicy : uint8_t { kLru = 0, kLfu = 1 };
enum class OnFull : uint8_t { kEvict = 0, kRefuse = 1 };
// How an eviction pass picks its victims: the lowest-scored rows of the whole shard, or of a
// seeded sample of it (see the header comment).
enum class EvictionMode : uint8_t { kExact = 0, kSampled = 1 };

const char* eviction_policy_name(EvictionPolicy p);
EvictionPolicy eviction_policy_from_name(const std::string& name);  // "lru" | "lfu"
const char* on_full_name(OnFull o);
OnFull on_full_from_name(const std::string& name);  // "evict" | "refuse"
const char* eviction_mode_name(EvictionMode m);
EvictionMode eviction_mode_from_name(const std::string& name);  // "exact" | "sampled"

struct ExpiryConfig {
  int64_t ttl_steps = 0;     // 0: off
  double ttl_seconds = 0.0;  // 0: off
  double min_l2_norm = 0.0;  // 0: off
  bool predicate = false;    // the table expects a run-time predicate
  int64_t capacity = 0;      // 0: unbounded
  EvictionPolicy policy = EvictionPolicy::kLru;
  OnFull on_full = OnFull::kEvict;
  double eviction_headroom = 1.0 / 16;  // in [0, 0.5]
  EvictionMode eviction = EvictionMode::kExact;
  int64_t scan_per_step = 0;  // slots examined per step (0: on demand only)

  // Whether anything is configured (the default config is no expiry at all).
  bool enabled() const;
  // Whether some rule can name rows (capacity alone expires nothing).
  bool has_rules() const { return ttl_steps > 0 || ttl_seconds > 0 || min_l2_norm > 0 || predicate; }
  // InvalidArgument naming the table and the field; shards: the table's hash shards.
  void validate(const std::string& table, int shards, bool dense) const;
  Json to_json() const;
  static ExpiryConfig from_json(const Json& j);
};

struct ExpiryStats {
  int64_t expired = 0;            // rows removed by a rule
  int64_t evicted = 0;            // rows removed to make room (capacity)
  int64_t refused = 0;            // inserts refused (the table or its shard was full)
  int64_t dropped_gradients = 0;  // gradients of refused ids (tables without admission)
};

class Expiry {
 public:
  // Wall-clock seconds (any epoch; only differences matter).
  using Clock = std::function<double()>;
  // True: the row is expired. Called with the row's key and metadata, possibly from the
  // thread of any training call, under the shard's lock: it must not call into the table.
  using Predicate = std::function<bool(int64_t key, const RowMeta& meta)>;
  static constexpr size_t kMaxStepTimes = 1024;
  // Sampled eviction: live rows ranked per row evicted, and at least this many per pass.
  static constexpr int64_t kSamplesPerEviction = 8;
  static constexpr int64_t kMinEvictionSample = 64;

  explicit Expiry(ExpiryConfig config);

  const ExpiryConfig& config() const { return config_; }
  // The row bound in force: the config's capacity, or the share set_shard_capacities gave
  // (a parameter-server shard holds its part of the table). 0: unbounded.
  int64_t capacity() const { return capacity_; }
  // The bound of hash shard `shard` of `shards`: the config's capacity split evenly (see the
  // header comment), or what set_shard_capacities said.
  int64_t shard_capacity(int shard, int shards) const;
  // Bounds of each hash shard instead of the even split, for a table that only holds the keys
  // of some buckets (a parameter-server shard: its keys fall in the hash shards its bucket
  // range overlaps). Before concurrent use.
  void set_shard_capacities(std::vector<int64_t> per_shard);

  void set_clock(Clock clock);
  void set_predicate(Predicate predicate);
  // Forgets the step times (a table about to take another table's, Expiry::merge_state).
  void clear_step_times();
  // Takes the predicate and clock of `from` (a table that replaces another on restore),
  // keeping this one's step times.
  void copy_callables(const Expiry& from);
  const Predicate& predicate() const { return predicate_; }

  // Records the wall time of `step` the first time the table sees it (ttl_seconds only).
  void note_step(int64_t step);
  // The cut-offs of the rules at this moment, for a pass over rows: a row is expired when
  // rule.expired(meta) or its norm or the predicate says so (EmbeddingTable::expired).
  struct Cutoffs {
    int64_t below_step = INT64_MIN;    // last_step < this: expired (step TTL)
    int64_t at_most_step = INT64_MIN;  // last_step <= this: expired (wall-clock TTL)
    double min_norm_sq = 0.0;
  };
  Cutoffs cutoffs(int64_t step) const;
  // The rule itself, for every row store: whether the row of `key` with metadata `meta` and
  // fp32 weights (dim; read only when a min_l2_norm applies, else may be null) is expired
  // under `cut`: a TTL, the norm (summed in double, element order) or the predicate.
  bool expired(int64_t key, const RowMeta& meta, const float* weights, int dim, const Cutoffs& cut) const;
  // Eviction score of a row: lower leaves first.
  uint64_t score(uint32_t update_count, uint32_t last_step) const {
    return config_.policy == EvictionPolicy::kLru ? (uint64_t{last_step} << 32) | update_count
                                                  : (uint64_t{update_count} << 32) | last_step;
  }

  void count_expired(int64_t n) { expired_.fetch_add(n, std::memory_order_relaxed); }
  void count_evicted(int64_t n) { evicted_.fetch_add(n, std::memory_order_relaxed); }
  void count_refused(int64_t n) { refused_.fetch_add(n, std::memory_order_relaxed); }
  void count_dropped(int64_t n) { dropped_.fetch_add(n, std::memory_order_relaxed); }
  ExpiryStats stats() const;

  // The incremental cursor of EmbeddingTable::expire_some (under its lock): the hash shard
  // and slot where the next window starts, and the shard's slot count when its round began.
  int cursor_shard = 0;
  uint64_t cursor_slot = 0;
  uint64_t cursor_slots = 0;

  // Statistics and the step clock, as checkpoints keep them; load_state refuses
  // (InvalidArgument) what state_json would not write. merge_state adds another part's
  // statistics (with_stats) and its step times.
  Json state_json() const;
  void load_state(const Json& j);
  void merge_state(const Expiry& other, bool with_stats);

 private:
  ExpiryConfig config_;
  int64_t capacity_;
  std::vector<int64_t> shard_capacities_;  // empty: the even split
  Clock clock_;
  Predicate predicate_;
  mutable std::mutex clock_mutex_;
  std::map<int64_t, double> step_times_;  // step -> wall time it was first seen
  std::atomic<int64_t> expired_{0}, evicted_{0}, refused_{0}, dropped_{0};
};

}  // namespace sparsecore
