// The emulator's runtime: the thread team, barriers, warp exchange and launches.
#include "cuda_emulation.h"

#include <algorithm>
#include <barrier>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/core/hash.h"

namespace sparsecore::cuda_emulation {
namespace {

struct WarpState {
  explicit WarpState(int lanes) : lanes(lanes), barrier(lanes) {}
  int lanes;
  std::barrier<> barrier;
  uint64_t slots[kWarpSize] = {};
  unsigned char predicates[kWarpSize] = {};
};

struct LaunchState;

// Runs when the last thread of the block arrives at a barrier: every thread must have come
// from the same kind of barrier (all at a __syncthreads, or all at the end of the block);
// otherwise a __syncthreads inside divergent code would silently pair with another one.
struct BarrierCheck {
  LaunchState* launch;
  void operator()() noexcept;
};

// Everything one launch shares between the threads of its team.
struct LaunchState {
  LaunchState(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body)
      : grid(grid),
        block(block),
        threads(static_cast<int>(block.x * block.y * block.z)),
        block_barrier(threads, BarrierCheck{this}),
        shared(shared_bytes + 16),
        body(body),
        arrived_from(threads, 0) {
    for (int first = 0; first < threads; first += kWarpSize)
      warps.push_back(std::make_unique<WarpState>(std::min(kWarpSize, threads - first)));
  }
  dim3 grid, block;
  int threads;
  std::barrier<BarrierCheck> block_barrier;
  std::vector<std::unique_ptr<WarpState>> warps;
  std::vector<unsigned char> shared;
  const std::function<void()>& body;
  std::vector<unsigned char> arrived_from;  // per thread: 1 = __syncthreads, 0 = end of block
  std::vector<uint64_t> order;              // linear block indices in run order (empty: grid order)
  uint3 current_block{};
  std::atomic<bool> failed{false};
  std::atomic<bool> diverged{false};
  std::mutex error_mutex;
  std::exception_ptr error;

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = e;
    failed.store(true);
  }
};

void BarrierCheck::operator()() noexcept {
  const auto& from = launch->arrived_from;
  for (int t = 1; t < launch->threads; ++t) {
    if (from[t] != from[0]) {
      const uint3 b = launch->current_block;
      launch->fail(std::make_exception_ptr(
          EmulationError("__syncthreads() was reached by only some threads of block (" + std::to_string(b.x) + ", " +
                         std::to_string(b.y) + ", " + std::to_string(b.z) + ")")));
      launch->diverged.store(true);
      return;
    }
  }
}

// Unwinds a thread out of a kernel whose block diverged at a barrier.
struct Diverged {};

thread_local ThreadState tls_thread;
thread_local LaunchState* tls_launch = nullptr;

unsigned full_mask(const WarpState& w) { return w.lanes == kWarpSize ? 0xffffffffu : (1u << w.lanes) - 1u; }

WarpState& this_warp(const char* what, unsigned mask) {
  LaunchState* launch = tls_launch;
  if (!launch) throw EmulationError(std::string(what) + " called outside a kernel");
  WarpState& w = *launch->warps[tls_thread.linear_tid / kWarpSize];
  if (mask != 0xffffffffu && mask != full_mask(w))
    throw EmulationError(std::string(what) + ": mask " + std::to_string(mask) +
                         " names part of a warp; the emulator implements full-warp masks only");
  return w;
}

void run_thread(LaunchState& launch, int tid) {
  ThreadState& ts = tls_thread;
  tls_launch = &launch;
  ts.block_dim = launch.block;
  ts.grid_dim = launch.grid;
  ts.linear_tid = tid;
  ts.thread_idx = {static_cast<unsigned>(tid) % launch.block.x,
                   (static_cast<unsigned>(tid) / launch.block.x) % launch.block.y,
                   static_cast<unsigned>(tid) / (launch.block.x * launch.block.y)};
  ts.shared_memory = launch.shared.data();
  WarpState& warp = *launch.warps[tid / kWarpSize];
  const uint64_t gx = launch.grid.x, gy = launch.grid.y;
  const uint64_t blocks = gx * gy * launch.grid.z;
  for (uint64_t k = 0; k < blocks; ++k) {
    const uint64_t b = launch.order.empty() ? k : launch.order[k];
    ts.block_idx = {static_cast<unsigned>(b % gx), static_cast<unsigned>(b / gx % gy),
                    static_cast<unsigned>(b / (gx * gy))};
    if (tid == 0) launch.current_block = ts.block_idx;
    try {
      launch.body();
    } catch (const Diverged&) {
      tls_launch = nullptr;  // every thread left the same barrier phase: none waits on us
      return;
    } catch (...) {
      launch.fail(std::current_exception());
      warp.barrier.arrive_and_drop();
      launch.block_barrier.arrive_and_drop();
      tls_launch = nullptr;
      return;
    }
    launch.arrived_from[tid] = 0;
    launch.block_barrier.arrive_and_wait();
    if (launch.failed.load()) {
      tls_launch = nullptr;
      return;
    }
  }
  tls_launch = nullptr;
}

// A team of worker threads reused by every launch: creating threads per block (or per
// launch) would dominate the run time of small kernels.
class Team {
 public:
  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    start_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(int n, const std::function<void(int)>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(threads_.size()) < n) {
      int tid = static_cast<int>(threads_.size());
      threads_.emplace_back([this, tid] { worker(tid); });
    }
    job_ = &job;
    job_threads_ = n;
    remaining_ = n;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void worker(int tid) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        start_.wait(lock, [&] { return stopping_ || (generation_ != seen && tid < job_threads_); });
        if (stopping_) return;
        seen = generation_;
        job = job_;
      }
      (*job)(tid);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--remaining_ == 0) done_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int job_threads_ = 0;
  int remaining_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

Team& team() {
  static Team t;
  return t;
}

// Block order and counters share one lock: launches are serialised anyway, and copies are
// counted from whichever thread issues them.
struct Witness {
  std::mutex mutex;
  std::optional<uint64_t> seed;
  uint64_t launches_ordered = 0;  // launches shuffled so far: each gets its own permutation
  Counters counters;

  Witness() {
    const char* env = std::getenv("SPARSECORE_EMULATOR_BLOCK_SEED");
    seed = env && *env ? std::strtoull(env, nullptr, 0) : 1;
  }
};

Witness& witness() {
  static Witness* w = new Witness;  // never destroyed: counted from static destructors too
  return *w;
}

// A permutation of [0, blocks) from (seed, launch number): Fisher-Yates over splitmix64.
std::vector<uint64_t> block_order(uint64_t blocks) {
  Witness& w = witness();
  uint64_t state;
  {
    std::lock_guard<std::mutex> lock(w.mutex);
    if (!w.seed || blocks < 2) return {};
    state = hash_combine(*w.seed, w.launches_ordered++);
  }
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  for (uint64_t i = blocks - 1; i > 0; --i) {
    state = splitmix64(state);
    std::swap(order[i], order[state % (i + 1)]);
  }
  return order;
}

}  // namespace

void set_block_order_seed(std::optional<uint64_t> seed) {
  std::lock_guard<std::mutex> lock(witness().mutex);
  witness().seed = seed;
  witness().launches_ordered = 0;
}

std::optional<uint64_t> block_order_seed() {
  std::lock_guard<std::mutex> lock(witness().mutex);
  return witness().seed;
}

Counters counters() {
  std::lock_guard<std::mutex> lock(witness().mutex);
  return witness().counters;
}

void reset_counters() {
  std::lock_guard<std::mutex> lock(witness().mutex);
  witness().counters = Counters{};
}

void count_launch(const char* kernel, dim3 grid) {
  std::lock_guard<std::mutex> lock(witness().mutex);
  Counters& c = witness().counters;
  ++c.launches;
  KernelCount& k = c.kernels[kernel];
  ++k.launches;
  k.blocks += uint64_t{grid.x} * grid.y * grid.z;
}

void count_copy(CopyDirection direction, size_t bytes, bool blocking) {
  std::lock_guard<std::mutex> lock(witness().mutex);
  Counters& c = witness().counters;
  switch (direction) {
    case CopyDirection::kHostToDevice:
      ++c.h2d_copies;
      c.h2d_bytes += bytes;
      break;
    case CopyDirection::kDeviceToHost:
      ++c.d2h_copies;
      c.d2h_bytes += bytes;
      if (blocking) ++c.host_syncs;  // the host waits for the device to reach the copy
      break;
    case CopyDirection::kDeviceToDevice:
      ++c.d2d_copies;
      c.d2d_bytes += bytes;
      break;
  }
}

void count_memset(size_t bytes) {
  std::lock_guard<std::mutex> lock(witness().mutex);
  ++witness().counters.memsets;
  witness().counters.memset_bytes += bytes;
}

void count_sync() {
  std::lock_guard<std::mutex> lock(witness().mutex);
  ++witness().counters.host_syncs;
}

namespace {

struct StreamState {
  bool deferred = false;
  std::vector<std::function<void()>> queue;  // deferred: work issued and not yet run
  uint64_t issued = 0, completed = 0;
};

struct Streams {
  std::mutex mutex;
  std::map<uintptr_t, StreamState> by_handle;
  uintptr_t next = 0x5C0000;  // away from the default streams' handles (0, 1, 2)
};

Streams& streams() {
  static Streams* s = new Streams;  // never destroyed: streams may be released at exit
  return *s;
}

// Runs the deferred queue of `stream` up to `position` (outside the lock: work may launch).
void run_until(uintptr_t stream, uint64_t position) {
  for (;;) {
    std::function<void()> work;
    {
      std::lock_guard<std::mutex> lock(streams().mutex);
      auto it = streams().by_handle.find(stream);
      if (it == streams().by_handle.end() || it->second.completed >= position || it->second.queue.empty()) return;
      work = std::move(it->second.queue.front());
      it->second.queue.erase(it->second.queue.begin());
      ++it->second.completed;
    }
    work();
  }
}

}  // namespace

uintptr_t create_stream(bool deferred) {
  std::lock_guard<std::mutex> lock(streams().mutex);
  const uintptr_t handle = streams().next++;
  streams().by_handle[handle].deferred = deferred;
  return handle;
}

void destroy_stream(uintptr_t stream) {
  synchronize_stream(stream);
  std::lock_guard<std::mutex> lock(streams().mutex);
  streams().by_handle.erase(stream);
}

void enqueue(uintptr_t stream, std::function<void()> work) {
  {
    std::lock_guard<std::mutex> lock(streams().mutex);
    auto it = streams().by_handle.find(stream);
    if (it != streams().by_handle.end()) {
      ++it->second.issued;
      if (it->second.deferred) {
        it->second.queue.push_back(std::move(work));
        return;
      }
      ++it->second.completed;
    }
  }
  work();
}

uint64_t record_event(uintptr_t stream) {
  std::lock_guard<std::mutex> lock(streams().mutex);
  auto it = streams().by_handle.find(stream);
  return it == streams().by_handle.end() ? 0 : it->second.issued;
}

void wait_event(uintptr_t stream, uint64_t position) { run_until(stream, position); }

bool event_done(uintptr_t stream, uint64_t position) {
  std::lock_guard<std::mutex> lock(streams().mutex);
  auto it = streams().by_handle.find(stream);
  return it == streams().by_handle.end() || it->second.completed >= position;
}

uint64_t pending_work(uintptr_t stream) {
  std::lock_guard<std::mutex> lock(streams().mutex);
  auto it = streams().by_handle.find(stream);
  return it == streams().by_handle.end() ? 0 : it->second.queue.size();
}

void synchronize_stream(uintptr_t stream) {
  count_sync();
  run_until(stream, UINT64_MAX);
}

}  // namespace sparsecore::cuda_emulation

namespace sparsecore::cuda {

EmulatorCounters emulator_counters() { return cuda_emulation::counters(); }
void reset_emulator_counters() { cuda_emulation::reset_counters(); }
void set_emulator_block_seed(std::optional<uint64_t> seed) { cuda_emulation::set_block_order_seed(seed); }
std::optional<uint64_t> emulator_block_seed() { return cuda_emulation::block_order_seed(); }

uintptr_t emulator_side_stream() { return cuda_emulation::create_stream(true); }
void emulator_enqueue_copy(uintptr_t stream, void* dst, const void* src, size_t bytes) {
  cuda_emulation::enqueue(stream, [dst, src, bytes] { std::memcpy(dst, src, bytes); });
}
uint64_t emulator_pending_work(uintptr_t stream) { return cuda_emulation::pending_work(stream); }
void emulator_release_stream(uintptr_t stream) { cuda_emulation::destroy_stream(stream); }

}  // namespace sparsecore::cuda

namespace sparsecore::cuda_emulation {

ThreadState& this_thread() { return tls_thread; }

void sync_block() {
  LaunchState* launch = tls_launch;
  if (!launch) throw EmulationError("__syncthreads() called outside a kernel");
  launch->arrived_from[tls_thread.linear_tid] = 1;
  launch->block_barrier.arrive_and_wait();
  if (launch->diverged.load()) throw Diverged{};
}

void sync_warp(unsigned mask) { this_warp("__syncwarp", mask).barrier.arrive_and_wait(); }

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* what) {
  WarpState& w = this_warp(what, mask);
  int lane = tls_thread.linear_tid % kWarpSize;
  w.slots[lane] = value;
  w.barrier.arrive_and_wait();
  uint64_t out = src_lane >= 0 && src_lane < w.lanes ? w.slots[src_lane] : value;
  w.barrier.arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return out;
}

unsigned warp_ballot(unsigned mask, bool predicate) {
  WarpState& w = this_warp("__ballot_sync", mask);
  int lane = tls_thread.linear_tid % kWarpSize;
  w.predicates[lane] = predicate;
  w.barrier.arrive_and_wait();
  unsigned bits = 0;
  for (int i = 0; i < w.lanes; ++i) bits |= static_cast<unsigned>(w.predicates[i]) << i;
  w.barrier.arrive_and_wait();
  return bits;
}

void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  if (tls_launch) throw EmulationError("kernel launch from inside a kernel (dynamic parallelism) is not emulated");
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  if (threads == 0 || threads > kMaxBlockThreads)
    throw EmulationError("invalid launch: " + std::to_string(threads) + " threads per block (1..1024)");
  if (blocks == 0) throw EmulationError("invalid launch: empty grid");
  if (grid.x > 0x7fffffffu || grid.y > 65535u || grid.z > 65535u)
    throw EmulationError("invalid launch: grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
                         std::to_string(grid.z) + ") past CUDA's limits (2^31 - 1, 65535, 65535)");
  if (shared_bytes > 227 * 1024)
    throw EmulationError("invalid launch: " + std::to_string(shared_bytes) +
                         " bytes of shared memory (at most 227 KiB)");
  std::lock_guard<std::mutex> lock(launch_mutex());
  LaunchState launch(grid, block, shared_bytes, body);
  launch.order = block_order(blocks);
  std::function<void(int)> job = [&launch](int tid) { run_thread(launch, tid); };
  team().run(static_cast<int>(threads), job);
  if (launch.error) std::rethrow_exception(launch.error);
}

}  // namespace sparsecore::cuda_emulation
