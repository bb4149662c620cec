#include "sparsecore/table/deleted_keys_log.h"

#include <algorithm>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"

namespace sparsecore {

DeletedKeysLog::DeletedKeysLog(size_t capacity)
    : stripes_(std::make_unique<Stripe[]>(kStripes)), capacity_(std::max<size_t>(capacity, 1)) {}

DeletedKeysLog::Stripe& DeletedKeysLog::stripe_of(int64_t key) const {
  // The top bits: each stripe's KeyMap places keys by the low bits of the same hash.
  static_assert(kStripes == 16, "four top bits pick the stripe");
  return stripes_[static_cast<size_t>(fmix64(static_cast<uint64_t>(key)) >> 60)];
}

void DeletedKeysLog::record(int64_t key, int64_t stamp) {
  Stripe& s = stripe_of(key);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto [have, added] = s.stamps.try_emplace(key, stamp);
  if (!added) {
    *have = std::max(*have, stamp);
    return;
  }
  entries_.fetch_add(1, std::memory_order_relaxed);
  const size_t per_stripe = std::max<size_t>(1, capacity() / kStripes);
  if (s.stamps.size() > per_stripe) compact(s);
}

std::vector<std::pair<int64_t, int64_t>> DeletedKeysLog::entries() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int i = 0; i < kStripes; ++i) {
    std::lock_guard<std::mutex> lock(stripes_[i].mutex);
    stripes_[i].stamps.for_each([&](int64_t key, int64_t stamp) { out.emplace_back(key, stamp); });
  }
  std::sort(out.begin(), out.end());
  return out;
}

void DeletedKeysLog::forget_slow(int64_t key) {
  Stripe& s = stripe_of(key);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.stamps.erase(key)) entries_.fetch_sub(1, std::memory_order_relaxed);
}

void DeletedKeysLog::compact(Stripe& s) {
  std::vector<int64_t> stamps;
  stamps.reserve(s.stamps.size());
  s.stamps.for_each([&](int64_t, int64_t stamp) { stamps.push_back(stamp); });
  // Everything stamped <= cutoff goes: at least half of the stripe (ties included).
  auto mid = stamps.begin() + static_cast<std::ptrdiff_t>((stamps.size() - 1) / 2);
  std::nth_element(stamps.begin(), mid, stamps.end());
  const int64_t cutoff = *mid;
  const size_t dropped = s.stamps.erase_if([&](int64_t, int64_t stamp) { return stamp <= cutoff; });
  entries_.fetch_sub(dropped, std::memory_order_relaxed);
  int64_t f = floor_.load(std::memory_order_relaxed);
  while (f < cutoff && !floor_.compare_exchange_weak(f, cutoff, std::memory_order_acq_rel)) {
  }
}

std::vector<int64_t> DeletedKeysLog::deleted_since(int64_t since, const std::string& table) const {
  const int64_t f = floor();
  SC_CHECK_ARG(since >= f, "table '", table, "': a delta since version ", since,
               " needs the keys deleted after it, but only deletions after version ", f,
               " are retained (the deleted-keys log holds at most ", capacity(),
               " keys, and a restore or clear starts it afresh); take a full export instead");
  std::vector<int64_t> keys;
  for (int i = 0; i < kStripes; ++i) {
    Stripe& s = stripes_[static_cast<size_t>(i)];
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stamps.for_each([&](int64_t key, int64_t stamp) {
      if (stamp > since) keys.push_back(key);
    });
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

void DeletedKeysLog::reset(int64_t floor) {
  for (int i = 0; i < kStripes; ++i) {
    Stripe& s = stripes_[static_cast<size_t>(i)];
    std::lock_guard<std::mutex> lock(s.mutex);
    entries_.fetch_sub(s.stamps.size(), std::memory_order_relaxed);
    s.stamps.clear();
  }
  floor_.store(floor, std::memory_order_release);
}

void DeletedKeysLog::set_capacity(size_t capacity) { capacity_.store(std::max<size_t>(capacity, 1)); }

}  // namespace sparsecore
