// A bounded single-producer single-consumer ring: the only way reactors hand work to each
// other (one ring per ordered pair of reactors), so the data path takes no locks.
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

namespace sparsecore::rpc {

template <typename T>
class SpscQueue {
 public:
  // capacity is rounded up to a power of two.
  explicit SpscQueue(size_t capacity) {
    size_t c = 2;
    while (c < capacity) c *= 2;
    slots_.resize(c);
    mask_ = c - 1;
  }

  // Producer thread only. False when full (the item is left in `value`).
  bool try_push(T& value) {
    size_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - head_.load(std::memory_order_acquire) > mask_) return false;
    slots_[tail & mask_] = std::move(value);
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }

  // Consumer thread only.
  std::optional<T> try_pop() {
    size_t head = head_.load(std::memory_order_relaxed);
    if (head == tail_.load(std::memory_order_acquire)) return std::nullopt;
    std::optional<T> out(std::move(slots_[head & mask_]));
    slots_[head & mask_] = T();
    head_.store(head + 1, std::memory_order_release);
    return out;
  }

 private:
  std::vector<T> slots_;
  size_t mask_ = 0;
  alignas(64) std::atomic<size_t> head_{0};
  alignas(64) std::atomic<size_t> tail_{0};
};

}  // namespace sparsecore::rpc
