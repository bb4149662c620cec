// The process-wide compute pool.
//
// Every CPU op parallelises through `parallel_for`, which splits [0, n) into contiguous
// chunks handed to a fixed set of workers. Callers write each output element from exactly
// one task, so results never depend on the number of threads. The calling thread takes
// part in the work; nested calls from inside a task run inline (no deadlock, no
// oversubscription).
//
// Thread-safety: parallel_for may be called from many threads at once; calls are
// serialised on the pool (one parallel region at a time), each caller running inline
// while another region is in progress would be wasteful, so later callers wait.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sparsecore {

class ThreadPool {
 public:
  // num_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(begin, end) over chunks of [0, n), each at least `grain` long (except the
  // last). Rethrows the first exception a task threw, after all tasks have finished.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // The pool shared by the process. Created on first use with `default_num_threads()`.
  static ThreadPool& global();
  // Replaces the global pool (waits for running work). n <= 0 means hardware concurrency.
  static void set_global_num_threads(int n);

  static int default_num_threads();

 private:
  void worker_loop(int index);
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex region_mutex_;  // one parallel region at a time

  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  int64_t num_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  int active_workers_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::mutex error_mutex_;
};

// While alive, the parallel_for calls of the constructing thread run inline on it. For
// threads that are themselves one-per-core units of work (rpc reactors own their shards):
// handing their small regions to the shared pool would only add wake-ups and contention.
class InlineParallelScope {
 public:
  InlineParallelScope();
  ~InlineParallelScope();
  InlineParallelScope(const InlineParallelScope&) = delete;
  InlineParallelScope& operator=(const InlineParallelScope&) = delete;

 private:
  bool previous_;
};

// Shorthand for ThreadPool::global().parallel_for.
inline void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  ThreadPool::global().parallel_for(n, grain, fn);
}

}  // namespace sparsecore
