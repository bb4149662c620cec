#include "sparsecore/table/admission.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"

namespace sparsecore {
namespace {

constexpr uint64_t kProbabilitySalt = 0x61646d6974700000ULL;  // decorrelates from row init
constexpr uint64_t kBloomSalt = 0x626c6f6f6d000000ULL;
constexpr uint64_t kFrequencySalt = 0x6672657175000000ULL;
constexpr uint32_t kMagic = 0x44414353;  // "SCAD"
constexpr uint32_t kVersion = 1;
// Bloom filters up to 2^34 counters (8 GiB at 4 bits): more is a configuration error.
constexpr int64_t kMaxCounters = int64_t{1} << 34;

struct Header {
  uint32_t magic, version, mode;
  uint32_t clock;  // the frequency filter's clock (saturating; 0 in files of tables without it)
  int64_t admitted, bloom_pending, rejected, dropped;
  uint64_t n;  // exact: entries; Bloom: counter bytes
};
static_assert(sizeof(Header) == Admission::kHeaderBytes);

struct Entry {
  int64_t key;
  uint32_t count;
  uint32_t first;  // tick of the first sighting
};
static_assert(sizeof(Entry) == Admission::kEntryBytes);

double counters_for(int64_t capacity, double fp_rate) {
  const double ln2 = std::log(2.0);
  return std::ceil(-static_cast<double>(capacity) * std::log(fp_rate) / (ln2 * ln2));
}

uint32_t saturate32(int64_t v) {
  return v <= 0 ? 0u : (v >= int64_t{0xffffffff} ? 0xffffffffu : static_cast<uint32_t>(v));
}

// A uniform double in [0, 1) from (seed, salt, key, count): the same bits in every process.
double seeded_uniform(uint64_t seed, uint64_t salt, int64_t key, int64_t count) {
  const uint64_t h = hash_combine(hash_combine(seed ^ salt, key_hash(key)), fmix64(static_cast<uint64_t>(count)));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

Json list_to_json(const IdList& list) {
  Json::Array a;
  a.reserve(list->size());
  for (int64_t id : *list) a.emplace_back(id);
  return Json(std::move(a));
}

IdList list_from_json(const Json& value, const char* what) {
  const Json::Array& a = value.as_array(what);
  std::vector<int64_t> ids;
  ids.reserve(a.size());
  for (const Json& v : a) ids.push_back(v.as_int(what));
  return make_id_list(std::move(ids));
}

}  // namespace

IdList make_id_list(std::vector<int64_t> ids) {
  if (ids.empty()) return nullptr;
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return std::make_shared<const std::vector<int64_t>>(std::move(ids));
}

void AdmissionConfig::validate(const std::string& table) const {
  const std::string t = "table '" + table + "': admission ";
  SC_CHECK_ARG(count_threshold >= 1, t, "count_threshold must be >= 1, got ", count_threshold);
  SC_CHECK_ARG(std::isfinite(probability) && probability > 0.0 && probability <= 1.0, t,
               "probability must lie in (0, 1], got ", probability);
  SC_CHECK_ARG(bloom_capacity >= 0, t, "bloom_capacity must be >= 0 (0: exact counts), got ", bloom_capacity);
  SC_CHECK_ARG(std::isfinite(bloom_fp_rate) && bloom_fp_rate > 0.0 && bloom_fp_rate < 1.0, t,
               "bloom_fp_rate must lie in (0, 1), got ", bloom_fp_rate);
  SC_CHECK_ARG(bloom_counter_bits == 4 || bloom_counter_bits == 8, t, "bloom_counter_bits must be 4 or 8, got ",
               bloom_counter_bits);
  if (bloom_capacity > 0) {
    const int64_t max_count = (int64_t{1} << bloom_counter_bits) - 1;
    SC_CHECK_ARG(count_threshold <= max_count, t, "count_threshold ", count_threshold, " exceeds what a ",
                 bloom_counter_bits, "-bit Bloom counter holds (", max_count, ")");
    SC_CHECK_ARG(counters_for(bloom_capacity, bloom_fp_rate) <= static_cast<double>(kMaxCounters), t,
                 "a Bloom filter for capacity ", bloom_capacity, " at fp rate ", bloom_fp_rate,
                 " needs more than 2^34 counters");
  }
  SC_CHECK_ARG(std::isfinite(frequency_horizon) && frequency_horizon >= 0.0, t,
               "frequency_horizon must be finite and >= 0 (0: no frequency filter), got ", frequency_horizon);
  SC_CHECK_ARG(std::isfinite(frequency_threshold) && frequency_threshold > 0.0 && frequency_threshold <= 1.0, t,
               "frequency_threshold must lie in (0, 1], got ", frequency_threshold);
  SC_CHECK_ARG(frequency_horizon == 0.0 || bloom_capacity == 0, t,
               "the frequency filter needs exact counts (a Bloom filter keeps no first sighting per id)");
  if (allow && deny) {
    // Both sorted: one merge finds a shared id.
    auto a = allow->begin(), d = deny->begin();
    while (a != allow->end() && d != deny->end()) {
      SC_CHECK_ARG(*a != *d, t, "id ", *a, " is on both the allow and the deny list");
      if (*a < *d)
        ++a;
      else
        ++d;
    }
  }
}

Json AdmissionConfig::to_json() const {
  Json j = Json::object();
  j["count_threshold"] = count_threshold;
  j["probability"] = probability;
  if (bloom_capacity > 0) {
    j["bloom_capacity"] = bloom_capacity;
    j["bloom_fp_rate"] = bloom_fp_rate;
    j["bloom_counter_bits"] = bloom_counter_bits;
  }
  if (frequency_horizon > 0.0) {
    j["frequency_horizon"] = frequency_horizon;
    j["frequency_threshold"] = frequency_threshold;
    j["frequency_sample"] = frequency_sample;
  }
  if (allow) j["allow"] = list_to_json(allow);
  if (deny) j["deny"] = list_to_json(deny);
  return j;
}

AdmissionConfig AdmissionConfig::from_json(const Json& j) {
  AdmissionConfig c;
  for (const auto& [key, value] : j.as_object("table 'admission'")) {
    if (key == "count_threshold")
      c.count_threshold = value.as_int("admission 'count_threshold'");
    else if (key == "probability")
      c.probability = value.as_double("admission 'probability'");
    else if (key == "bloom_capacity")
      c.bloom_capacity = value.as_int("admission 'bloom_capacity'");
    else if (key == "bloom_fp_rate")
      c.bloom_fp_rate = value.as_double("admission 'bloom_fp_rate'");
    else if (key == "bloom_counter_bits") {
      const int64_t b = value.as_int("admission 'bloom_counter_bits'");
      c.bloom_counter_bits = b == 4 || b == 8 ? static_cast<int>(b) : 0;
      SC_CHECK_ARG(b == 4 || b == 8, "admission bloom_counter_bits must be 4 or 8, got ", b);
    } else if (key == "frequency_horizon")
      c.frequency_horizon = value.as_double("admission 'frequency_horizon'");
    else if (key == "frequency_threshold")
      c.frequency_threshold = value.as_double("admission 'frequency_threshold'");
    else if (key == "frequency_sample")
      c.frequency_sample = value.as_bool("admission 'frequency_sample'");
    else if (key == "allow")
      c.allow = list_from_json(value, "admission 'allow'");
    else if (key == "deny")
      c.deny = list_from_json(value, "admission 'deny'");
    else
      throw InvalidArgument("unknown admission config field '" + key + "'");
  }
  return c;
}

CountingBloom::CountingBloom(int64_t capacity, double fp_rate, int counter_bits, uint64_t seed)
    : m_(std::max<int64_t>(1, static_cast<int64_t>(counters_for(capacity, fp_rate)))),
      k_(std::clamp(
          static_cast<int>(std::lround(static_cast<double>(m_) / static_cast<double>(capacity) * std::log(2.0))), 1,
          16)),
      bits_(counter_bits),
      max_((1u << counter_bits) - 1),
      seed_(hash_combine(seed, kBloomSalt)),
      cells_(static_cast<size_t>(counter_bits == 8 ? m_ : (m_ + 1) / 2), 0) {}

uint64_t CountingBloom::index(uint64_t h1, uint64_t h2, int i) const {
  return (h1 + static_cast<uint64_t>(i) * h2) % static_cast<uint64_t>(m_);
}

uint32_t CountingBloom::get(uint64_t i) const {
  if (bits_ == 8) return cells_[i];
  const uint8_t c = cells_[i / 2];
  return (i & 1) ? (c >> 4) : (c & 0xf);
}

void CountingBloom::set(uint64_t i, uint32_t v) {
  if (bits_ == 8) {
    cells_[i] = static_cast<uint8_t>(v);
    return;
  }
  uint8_t& c = cells_[i / 2];
  c = (i & 1) ? static_cast<uint8_t>((c & 0x0f) | (v << 4)) : static_cast<uint8_t>((c & 0xf0) | v);
}

uint32_t CountingBloom::add(int64_t key) {
  const uint64_t h1 = hash_combine(seed_, key_hash(key));
  const uint64_t h2 = fmix64(h1 ^ kBloomSalt) | 1;
  uint32_t least = max_;
  for (int i = 0; i < k_; ++i) {
    const uint64_t at = index(h1, h2, i);
    const uint32_t v = std::min(get(at) + 1, max_);  // saturating
    set(at, v);
    least = std::min(least, v);
  }
  return least;
}

uint32_t CountingBloom::estimate(int64_t key) const {
  const uint64_t h1 = hash_combine(seed_, key_hash(key));
  const uint64_t h2 = fmix64(h1 ^ kBloomSalt) | 1;
  uint32_t least = max_;
  for (int i = 0; i < k_; ++i) least = std::min(least, get(index(h1, h2, i)));
  return least;
}

Admission::Admission(AdmissionConfig config, uint64_t table_seed) : config_(config), seed_(table_seed) {
  if (config_.bloom_capacity > 0)
    bloom_ = std::make_unique<CountingBloom>(config_.bloom_capacity, config_.bloom_fp_rate, config_.bloom_counter_bits,
                                             table_seed);
}

bool Admission::probability_admits(double p, uint64_t table_seed, int64_t key, int64_t count) {
  if (p >= 1.0) return true;
  return seeded_uniform(table_seed, kProbabilitySalt, key, count) < p;
}

double Admission::reappearance_probability(int64_t count, int64_t elapsed, double horizon) {
  const double rate = static_cast<double>(count - 1) / static_cast<double>(std::max<int64_t>(elapsed, 1));
  return -std::expm1(-rate * horizon);
}

bool Admission::frequency_admits(int64_t key, int64_t count, int64_t elapsed) const {
  if (config_.frequency_horizon <= 0.0) return true;
  const double p = reappearance_probability(count, elapsed, config_.frequency_horizon);
  if (config_.frequency_sample) return seeded_uniform(seed_, kFrequencySalt, key, count) < p;
  return p >= config_.frequency_threshold;
}

int64_t Admission::tick() { return clock_.fetch_add(1, std::memory_order_relaxed) + 1; }

bool Admission::sight(int64_t key) {
  std::lock_guard<std::mutex> lock(mutex_);
  return sight_locked(key);
}

void Admission::sight_all(const int64_t* keys, int64_t n, unsigned char* admit) {
  // The pending counts are far larger than the caches: each key's entry is prefetched a few
  // keys ahead of its sighting.
  constexpr int64_t kAhead = 8;
  std::lock_guard<std::mutex> lock(mutex_);
  for (int64_t i = 0; i < std::min(n, kAhead); ++i) counts_.prefetch(keys[i]);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) counts_.prefetch(keys[i + kAhead]);
    admit[i] = sight_locked(keys[i]) ? 1 : 0;
  }
}

bool Admission::sight_locked(int64_t key) {
  // Listed ids are never counted (an entry restored from a state saved before the id was
  // listed is dropped).
  if (list_contains(config_.deny, key)) {
    ++rejected_;
    if (!bloom_) counts_.erase(key);
    return false;
  }
  if (list_contains(config_.allow, key)) {
    ++admitted_;
    if (!bloom_) counts_.erase(key);
    return true;
  }
  int64_t count;
  int64_t elapsed = 0;
  if (bloom_) {
    const bool first = bloom_->estimate(key) == 0;
    count = bloom_->add(key);
    bloom_pending_ += first;
  } else {
    const uint32_t now = saturate32(clock());
    Pending* p = counts_.try_emplace(key, Pending{0, now}).first;
    count = ++p->count;
    elapsed = static_cast<int64_t>(now) - static_cast<int64_t>(p->first);
  }
  const bool admit = count >= config_.count_threshold && probability_admits(config_.probability, seed_, key, count) &&
                     frequency_admits(key, count, elapsed);
  if (!admit) {
    ++rejected_;
    return false;
  }
  ++admitted_;
  if (bloom_)
    bloom_pending_ = std::max<int64_t>(0, bloom_pending_ - 1);
  else
    counts_.erase(key);
  return true;
}

AdmissionStats Admission::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return AdmissionStats{admitted_, bloom_ ? bloom_pending_ : static_cast<int64_t>(counts_.size()), rejected_,
                        dropped_.load(std::memory_order_relaxed)};
}

void Admission::merge_from(const Admission& other, const std::function<bool(int64_t)>& keep, bool with_stats) {
  if (&other == this) return;
  std::scoped_lock lock(mutex_, other.mutex_);
  SC_CHECK_ARG(!bloom_ == !other.bloom_ && (!bloom_ || bloom_->bytes().size() == other.bloom_->bytes().size()),
               "admission state of another configuration cannot be merged");
  if (bloom_) {
    for (int64_t i = 0; i < bloom_->m_; ++i)
      bloom_->set(static_cast<uint64_t>(i), std::min(bloom_->max_, bloom_->get(static_cast<uint64_t>(i)) +
                                                                       other.bloom_->get(static_cast<uint64_t>(i))));
  } else {
    other.counts_.for_each([&](int64_t key, const Pending& p) {
      if (!keep(key)) return;
      auto [have, inserted] = counts_.try_emplace(key, p);
      if (!inserted) *have = Pending{std::max(have->count, p.count), std::min(have->first, p.first)};
    });
  }
  clock_.store(std::max(clock(), other.clock()), std::memory_order_relaxed);
  if (with_stats) {
    admitted_ += other.admitted_;
    bloom_pending_ += other.bloom_pending_;
    rejected_ += other.rejected_;
    dropped_.fetch_add(other.dropped_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
}

std::vector<uint8_t> Admission::serialize() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Header h{kMagic,    kVersion,       bloom_ ? 1u : 0u, saturate32(clock()),
           admitted_, bloom_pending_, rejected_,        dropped_.load(std::memory_order_relaxed),
           0};
  std::vector<uint8_t> out;
  if (bloom_) {
    h.n = bloom_->bytes().size();
    out.resize(sizeof(Header) + h.n);
    std::memcpy(out.data() + sizeof(Header), bloom_->bytes().data(), h.n);
  } else {
    std::vector<Entry> entries;
    entries.reserve(counts_.size());
    counts_.for_each([&](int64_t key, const Pending& p) { entries.push_back({key, p.count, p.first}); });
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.key < b.key; });
    h.n = entries.size();
    out.resize(sizeof(Header) + entries.size() * sizeof(Entry));
    if (!entries.empty()) std::memcpy(out.data() + sizeof(Header), entries.data(), entries.size() * sizeof(Entry));
  }
  std::memcpy(out.data(), &h, sizeof(Header));
  return out;
}

void Admission::deserialize(const uint8_t* data, size_t size) {
  SC_CHECK_ARG(size >= sizeof(Header), "admission state: ", size, " bytes, less than its header");
  Header h;
  std::memcpy(&h, data, sizeof(Header));
  SC_CHECK_ARG(h.magic == kMagic && h.version == kVersion, "admission state: not an admission file");
  SC_CHECK_ARG(h.mode == (bloom_ ? 1u : 0u), "admission state: saved with ", h.mode ? "a Bloom filter" : "exact counts",
               " but the table is configured with ", bloom_ ? "a Bloom filter" : "exact counts");
  SC_CHECK_ARG(h.admitted >= 0 && h.bloom_pending >= 0 && h.rejected >= 0 && h.dropped >= 0,
               "admission state: negative statistics");
  const size_t body = size - sizeof(Header);
  KeyMap<Pending> counts;
  if (bloom_) {
    SC_CHECK_ARG(h.n == bloom_->bytes().size() && body == h.n, "admission state: ", body,
                 " bytes of Bloom counters, the table's filter has ", bloom_->bytes().size());
    if (bloom_->bits_ == 4 && (bloom_->m_ & 1))
      SC_CHECK_ARG((data[size - 1] >> 4) == 0, "admission state: padding nibble is not zero");
  } else {
    SC_CHECK_ARG(h.n <= body / sizeof(Entry) && body == h.n * sizeof(Entry), "admission state: ", body,
                 " bytes of entries do not match its count ", h.n);
    counts.reserve(h.n);
    int64_t previous = 0;
    for (uint64_t i = 0; i < h.n; ++i) {
      Entry e;
      std::memcpy(&e, data + sizeof(Header) + i * sizeof(Entry), sizeof(Entry));
      SC_CHECK_ARG(i == 0 || e.key > previous, "admission state: ids are not sorted and distinct");
      SC_CHECK_ARG(e.count >= 1 && static_cast<int64_t>(e.count) < config_.count_threshold + (1 << 30),
                   "admission state: bad count ", e.count, " for id ", e.key);
      SC_CHECK_ARG(e.first <= h.clock, "admission state: id ", e.key, " first sighted at tick ", e.first,
                   ", after the clock (", h.clock, ")");
      previous = e.key;
      counts.try_emplace(e.key, Pending{e.count, e.first});
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (bloom_) std::memcpy(bloom_->bytes().data(), data + sizeof(Header), h.n);
  counts_ = std::move(counts);
  admitted_ = h.admitted;
  bloom_pending_ = h.bloom_pending;
  rejected_ = h.rejected;
  dropped_.store(h.dropped, std::memory_order_relaxed);
  clock_.store(h.clock, std::memory_order_relaxed);
}

}  // namespace sparsecore
