// Statistics counters: bumped from any thread, read for a stats() snapshot.
//
// Relaxed order on both sides: each counter read is exact at its instant, but the counters
// of one snapshot are read one after another, not at one instant (a reader may see a request
// counted before its connection). No counter orders other memory.
#pragma once

#include <atomic>
#include <cstdint>

namespace sparsecore {

inline uint64_t stat_value(const std::atomic<uint64_t>& counter) { return counter.load(std::memory_order_relaxed); }

}  // namespace sparsecore
