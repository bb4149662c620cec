#include "sparsecore/table/row_epochs.h"

#include <algorithm>

namespace sparsecore {

std::atomic<uint64_t>& RowEpochs::clock() {
  static std::atomic<uint64_t> c{1};
  return c;
}

uint64_t RowEpochs::enter() {
  std::lock_guard<std::mutex> lock(mutex_);
  // Under the registry's lock, so oldest() never misses a holder that has its epoch already.
  const uint64_t epoch = clock().fetch_add(1, std::memory_order_seq_cst) + 1;
  live_.push_back(epoch);
  return epoch;
}

void RowEpochs::leave(uint64_t epoch) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find(live_.begin(), live_.end(), epoch);
  if (it != live_.end()) {
    *it = live_.back();
    live_.pop_back();
  }
}

uint64_t RowEpochs::oldest() const {
  std::lock_guard<std::mutex> lock(mutex_);
  // With no holder, every stamp read so far is below the next epoch.
  if (live_.empty()) return now() + 1;
  return *std::min_element(live_.begin(), live_.end());
}

size_t RowEpochs::holders() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_.size();
}

}  // namespace sparsecore
