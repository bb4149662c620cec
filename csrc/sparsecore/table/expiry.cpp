#include "sparsecore/table/expiry.h"

#include <chrono>
#include <cmath>

#include "sparsecore/core/error.h"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore {
namespace {

// Wall time, so step times saved in a checkpoint still mean something in the process that loads it.
double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Past kMaxStepTimes entries every other one goes (the oldest and newest stay).
void thin(std::map<int64_t, double>& times) {
  while (times.size() > Expiry::kMaxStepTimes) {
    bool drop = false;
    for (auto it = std::next(times.begin()); it != std::prev(times.end());) {
      it = drop ? times.erase(it) : std::next(it);
      drop = !drop;
    }
  }
}

}  // namespace

const char* eviction_policy_name(EvictionPolicy p) { return p == EvictionPolicy::kLfu ? "lfu" : "lru"; }

EvictionPolicy eviction_policy_from_name(const std::string& name) {
  if (name == "lru") return EvictionPolicy::kLru;
  if (name == "lfu") return EvictionPolicy::kLfu;
  throw InvalidArgument("unknown expiry policy '" + name + "' (known: lru, lfu)");
}

const char* on_full_name(OnFull o) { return o == OnFull::kRefuse ? "refuse" : "evict"; }

OnFull on_full_from_name(const std::string& name) {
  if (name == "evict") return OnFull::kEvict;
  if (name == "refuse") return OnFull::kRefuse;
  throw InvalidArgument("unknown expiry on_full '" + name + "' (known: evict, refuse)");
}

const char* eviction_mode_name(EvictionMode m) { return m == EvictionMode::kSampled ? "sampled" : "exact"; }

EvictionMode eviction_mode_from_name(const std::string& name) {
  if (name == "exact") return EvictionMode::kExact;
  if (name == "sampled") return EvictionMode::kSampled;
  throw InvalidArgument("unknown expiry eviction '" + name + "' (known: exact, sampled)");
}

bool ExpiryConfig::enabled() const { return has_rules() || capacity > 0 || scan_per_step > 0; }

void ExpiryConfig::validate(const std::string& table, int shards, bool dense) const {
  const std::string t = "table '" + table + "': expiry ";
  SC_CHECK_ARG(ttl_steps >= 0, t, "ttl_steps must be >= 0 (0: off), got ", ttl_steps);
  SC_CHECK_ARG(std::isfinite(ttl_seconds) && ttl_seconds >= 0, t, "ttl_seconds must be finite and >= 0 (0: off), got ",
               ttl_seconds);
  SC_CHECK_ARG(std::isfinite(min_l2_norm) && min_l2_norm >= 0, t, "min_l2_norm must be finite and >= 0 (0: off), got ",
               min_l2_norm);
  SC_CHECK_ARG(capacity >= 0, t, "capacity must be >= 0 (0: unbounded), got ", capacity);
  SC_CHECK_ARG(capacity == 0 || capacity >= shards, t, "capacity ", capacity, " is below the table's ", shards,
               " hash shards (each shard holds its share; lower shard_bits or raise capacity)");
  SC_CHECK_ARG(policy == EvictionPolicy::kLru || policy == EvictionPolicy::kLfu, t, "policy must be 'lru' or 'lfu'");
  SC_CHECK_ARG(on_full == OnFull::kEvict || on_full == OnFull::kRefuse, t, "on_full must be 'evict' or 'refuse'");
  SC_CHECK_ARG(eviction == EvictionMode::kExact || eviction == EvictionMode::kSampled, t,
               "eviction must be 'exact' or 'sampled'");
  SC_CHECK_ARG(std::isfinite(eviction_headroom) && eviction_headroom >= 0 && eviction_headroom <= 0.5, t,
               "eviction_headroom must lie in [0, 0.5], got ", eviction_headroom);
  SC_CHECK_ARG(scan_per_step >= 0, t, "scan_per_step must be >= 0 (0: on demand only), got ", scan_per_step);
  SC_CHECK_ARG(!dense || !enabled(), t,
               "applies to hash tables: a table with num_embeddings = N keeps one row per id in [0, N) with its "
               "memory reserved up front, so removing rows would reset trained ids and free nothing (fixed-size tables "
               "never evict, as in TorchRec and HugeCTR); erase rows to reset them, or leave out num_embeddings for a "
               "hash table with expiry");
}

Json ExpiryConfig::to_json() const {
  Json j = Json::object();
  j["ttl_steps"] = ttl_steps;
  j["ttl_seconds"] = ttl_seconds;
  j["min_l2_norm"] = min_l2_norm;
  j["predicate"] = predicate;
  j["capacity"] = capacity;
  j["policy"] = eviction_policy_name(policy);
  j["on_full"] = on_full_name(on_full);
  j["eviction_headroom"] = eviction_headroom;
  j["eviction"] = eviction_mode_name(eviction);
  j["scan_per_step"] = scan_per_step;
  return j;
}

ExpiryConfig ExpiryConfig::from_json(const Json& j) {
  ExpiryConfig c;
  for (const auto& [key, value] : j.as_object("table 'expiry'")) {
    if (key == "ttl_steps")
      c.ttl_steps = value.as_int("expiry 'ttl_steps'");
    else if (key == "ttl_seconds")
      c.ttl_seconds = value.as_double("expiry 'ttl_seconds'");
    else if (key == "min_l2_norm")
      c.min_l2_norm = value.as_double("expiry 'min_l2_norm'");
    else if (key == "predicate")
      c.predicate = value.as_bool("expiry 'predicate'");
    else if (key == "capacity")
      c.capacity = value.as_int("expiry 'capacity'");
    else if (key == "policy")
      c.policy = eviction_policy_from_name(value.as_string("expiry 'policy'"));
    else if (key == "on_full")
      c.on_full = on_full_from_name(value.as_string("expiry 'on_full'"));
    else if (key == "eviction_headroom")
      c.eviction_headroom = value.as_double("expiry 'eviction_headroom'");
    else if (key == "eviction")
      c.eviction = eviction_mode_from_name(value.as_string("expiry 'eviction'"));
    else if (key == "scan_per_step")
      c.scan_per_step = value.as_int("expiry 'scan_per_step'");
    else
      throw InvalidArgument("unknown expiry config field '" + key + "'");
  }
  return c;
}

Expiry::Expiry(ExpiryConfig config) : config_(std::move(config)), capacity_(config_.capacity), clock_(wall_seconds) {}

int64_t Expiry::shard_capacity(int shard, int shards) const {
  const int64_t c = capacity();
  if (c <= 0) return INT64_MAX;
  if (!shard_capacities_.empty()) return shard_capacities_[static_cast<size_t>(shard)];
  return c / shards + (shard < c % shards ? 1 : 0);
}

void Expiry::set_shard_capacities(std::vector<int64_t> per_shard) {
  int64_t total = 0;
  for (int64_t c : per_shard) total += c;
  shard_capacities_ = std::move(per_shard);
  capacity_ = total;
}

void Expiry::set_clock(Clock clock) {
  std::lock_guard<std::mutex> lock(clock_mutex_);
  clock_ = clock ? std::move(clock) : Clock(wall_seconds);
  // Times of two clocks do not compare: the map starts again from the newest step.
  const int64_t newest = step_times_.empty() ? 0 : step_times_.rbegin()->first;
  step_times_.clear();
  step_times_[newest] = clock_();
}

void Expiry::set_predicate(Predicate predicate) { predicate_ = std::move(predicate); }

void Expiry::clear_step_times() {
  std::lock_guard<std::mutex> lock(clock_mutex_);
  step_times_.clear();
}

void Expiry::copy_callables(const Expiry& from) {
  predicate_ = from.predicate_;
  std::lock_guard<std::mutex> lock(clock_mutex_);
  clock_ = from.clock_;
}

void Expiry::note_step(int64_t step) {
  if (config_.ttl_seconds <= 0) return;
  std::lock_guard<std::mutex> lock(clock_mutex_);
  if (!step_times_.empty() && step <= step_times_.rbegin()->first) return;
  const double now = clock_();
  // Monotone in both: a clock that stepped back keeps the previous time.
  const double t = step_times_.empty() ? now : std::max(now, step_times_.rbegin()->second);
  step_times_.emplace_hint(step_times_.end(), step, t);
  thin(step_times_);
}

Expiry::Cutoffs Expiry::cutoffs(int64_t step) const {
  Cutoffs c;
  if (config_.ttl_steps > 0) c.below_step = step - config_.ttl_steps;
  if (config_.ttl_seconds > 0) {
    std::lock_guard<std::mutex> lock(clock_mutex_);
    const double limit = clock_() - config_.ttl_seconds;
    for (auto it = step_times_.rbegin(); it != step_times_.rend(); ++it)
      if (it->second <= limit) {
        c.at_most_step = it->first;
        break;
      }
  }
  c.min_norm_sq = config_.min_l2_norm * config_.min_l2_norm;
  return c;
}

bool Expiry::expired(int64_t key, const RowMeta& meta, const float* weights, int dim, const Cutoffs& cut) const {
  if (meta.last_step < cut.below_step || meta.last_step <= cut.at_most_step) return true;
  if (cut.min_norm_sq > 0) {
    double sq = 0;
    for (int d = 0; d < dim; ++d) sq += static_cast<double>(weights[d]) * weights[d];
    if (sq < cut.min_norm_sq) return true;
  }
  return predicate_ && predicate_(key, meta);
}

ExpiryStats Expiry::stats() const {
  return ExpiryStats{expired_.load(std::memory_order_relaxed), evicted_.load(std::memory_order_relaxed),
                     refused_.load(std::memory_order_relaxed), dropped_.load(std::memory_order_relaxed)};
}

Json Expiry::state_json() const {
  const ExpiryStats s = stats();
  Json j = Json::object();
  j["expired"] = s.expired;
  j["evicted"] = s.evicted;
  j["refused"] = s.refused;
  j["dropped_gradients"] = s.dropped_gradients;
  Json times = Json::array();
  {
    std::lock_guard<std::mutex> lock(clock_mutex_);
    for (const auto& [step, t] : step_times_) {
      Json pair = Json::array();
      pair.push_back(Json(step));
      pair.push_back(Json(t));
      times.push_back(std::move(pair));
    }
  }
  j["step_times"] = std::move(times);
  return j;
}

void Expiry::load_state(const Json& j) {
  int64_t counts[4];
  const char* names[4] = {"expired", "evicted", "refused", "dropped_gradients"};
  for (int i = 0; i < 4; ++i) {
    counts[i] = j.at(names[i]).as_int(names[i]);
    SC_CHECK_ARG(counts[i] >= 0, "expiry state '", names[i], "' must be >= 0, got ", counts[i]);
  }
  std::map<int64_t, double> times;
  const Json::Array& pairs = j.at("step_times").as_array("expiry step_times");
  SC_CHECK_ARG(pairs.size() <= kMaxStepTimes + 1, "expiry state holds ", pairs.size(), " step times, at most ",
               kMaxStepTimes + 1);
  for (const Json& p : pairs) {
    const Json::Array& a = p.as_array("expiry step time");
    SC_CHECK_ARG(a.size() == 2, "an expiry step time is a [step, seconds] pair");
    const int64_t step = a[0].as_int("expiry step");
    const double t = a[1].as_double("expiry time");
    SC_CHECK_ARG(step >= 0 && std::isfinite(t), "expiry step time [", step, ", ", t, "] is invalid");
    SC_CHECK_ARG(times.empty() || (step > times.rbegin()->first && t >= times.rbegin()->second),
                 "expiry step times must grow in step and time");
    times.emplace(step, t);
  }
  expired_ = counts[0];
  evicted_ = counts[1];
  refused_ = counts[2];
  dropped_ = counts[3];
  std::lock_guard<std::mutex> lock(clock_mutex_);
  step_times_ = std::move(times);
}

void Expiry::merge_state(const Expiry& other, bool with_stats) {
  if (with_stats) {
    const ExpiryStats s = other.stats();
    count_expired(s.expired);
    count_evicted(s.evicted);
    count_refused(s.refused);
    count_dropped(s.dropped_gradients);
  }
  std::map<int64_t, double> theirs;
  {
    std::lock_guard<std::mutex> lock(other.clock_mutex_);
    theirs = other.step_times_;
  }
  std::lock_guard<std::mutex> lock(clock_mutex_);
  // The later time of a step wins and the map stays monotone by raising times, never
  // lowering them: a later time only keeps rows longer.
  for (const auto& [step, t] : theirs) {
    auto [it, inserted] = step_times_.emplace(step, t);
    if (!inserted) it->second = std::max(it->second, t);
  }
  double earlier = -INFINITY;
  for (auto& [step, t] : step_times_) {
    t = std::max(t, earlier);
    earlier = t;
  }
  thin(step_times_);
}

}  // namespace sparsecore
