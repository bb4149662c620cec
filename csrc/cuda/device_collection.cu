// Host orchestration of the device collection: table storage and growth, the prepare /
// forward / backward pipelines as sequences of kernel launches. Compiled by nvcc (namespace
// device) and by g++ through the emulation layer (namespace emulated).
#include <algorithm>
#include <mutex>
#include <numeric>
#include <optional>

#include "dedup_kernels.cuh"
#include "device_collection_impl.h"
#include "embedding_kernels.cuh"
#include "hash_table_kernels.cuh"
#include "radix_sort_kernels.cuh"
#include "scan_kernels.cuh"

namespace sparsecore::cuda::SC_BACKEND_NS {
namespace {

static_assert(kMaxDedupIds == DeviceEmbeddingCollection::kMaxGroupIds, "the front refuses what dedup cannot index");

template <typename T>
struct DeviceTable {
  TableConfig config;
  uint64_t seed = 0;
  int dim = 0;
  int state_dim = 0;
  int64_t capacity = 0;  // probed slots (a power of two); rows have capacity + 2 slots
  int64_t size = 0;
  int64_t tombstones = 0;
  uint64_t generation = 1;  // changes whenever slots move or rows are released
  DeviceBuffer<int64_t> keys;
  DeviceBuffer<int> reserved;
  DeviceBuffer<T> weights;
  DeviceBuffer<float> state;
  DeviceBuffer<uint32_t> update_count;
  DeviceBuffer<int64_t> last_step;

  TableView view() { return {keys.data(), reserved.data(), capacity}; }
  RowsView<T> rows() { return {weights.data(), state.data(), update_count.data(), last_step.data(), dim, state_dim}; }
};

// Device buffers of one prepared group.
struct GroupBuffers {
  DeviceGroupInfo info;
  int table = -1;
  uint64_t generation = 0;
  DeviceBuffer<int64_t> offsets;  // (B + 1)
  DeviceBuffer<float> weights;    // (n) or empty
  bool has_weights = false;
  DeviceBuffer<int64_t> unique_keys;   // (U)
  DeviceBuffer<int64_t> unique_slots;  // (U)
  DeviceBuffer<int> inverse;           // (n)
  // training only
  DeviceBuffer<int> occ_offsets;    // (U + 1)
  DeviceBuffer<int> occ_positions;  // (n)
  DeviceBuffer<int> bag_of;         // (n)
  DeviceBuffer<float> bag_scale;    // (B)

  BagsView view(const int64_t* slots) const {
    BagsView v;
    v.offsets = offsets.data();
    v.weights = has_weights ? weights.data() : nullptr;
    v.inverse = inverse.data();
    v.unique_slots = slots;
    v.batch_size = info.batch_size;
    v.max_len = info.max_len;
    v.dim = info.dim;
    v.pooling = info.pooling;
    return v;
  }
};

class PreparedBatchImpl final : public DevicePreparedBatch {
 public:
  bool train() const override { return train_; }
  const std::vector<DeviceGroupInfo>& groups() const override { return infos_; }
  std::vector<int64_t> unique_ids(int g) const override {
    const GroupBuffers& b = *buffers_.at(g);
    std::vector<int64_t> out(b.info.num_unique);
    b.unique_keys.download(out.data(), out.size());
    return out;
  }

  bool train_ = false;
  const void* owner_ = nullptr;
  std::vector<DeviceGroupInfo> infos_;
  std::vector<std::unique_ptr<GroupBuffers>> buffers_;
};

// dst (n) <- src (n) in `space` (host: an upload; device: a copy on the device).
template <typename T>
void copy_in(DeviceBuffer<T>& dst, const T* src, size_t n, MemorySpace space) {
  dst.resize(n);
  copy_bytes(dst.data(), src, n * sizeof(T), space == MemorySpace::kHost ? Copy::kHostToDevice : Copy::kDeviceToDevice);
}

int64_t next_pow2(int64_t x) {
  int64_t p = 16;
  while (p < x) p *= 2;
  return p;
}

template <typename T>
class Collection final : public DeviceCollectionImpl {
 public:
  Collection(const std::vector<TableConfig>& tables, uint64_t seed, LaunchLimits limits, int device)
      : limits_(limits), device_(device) {
    DeviceGuard on(device_);
    for (const TableConfig& c : tables) {
      auto t = std::make_unique<DeviceTable<T>>();
      t->config = c;
      t->seed = table_seed(seed, c.name);
      t->dim = c.dim;
      t->state_dim = c.optimizer.state_dim(c.dim);
      allocate(*t, 0);
      tables_.push_back(std::move(t));
    }
  }

  int64_t step() const override { return step_; }
  int device() const override { return device_; }
  int64_t table_size(int t) const override { return tables_.at(t)->size; }
  int64_t table_capacity(int t) const override { return tables_.at(t)->capacity; }
  void set_max_load_factor(double f) override { max_load_ = f; }

  std::shared_ptr<DevicePreparedBatch> prepare(const std::vector<GroupInput>& inputs,
                                               const std::vector<std::vector<int64_t>>& host_offsets, bool train,
                                               MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    auto batch = std::make_shared<PreparedBatchImpl>();
    batch->train_ = train;
    batch->owner_ = this;
    for (size_t gi = 0; gi < inputs.size(); ++gi) {
      const GroupInput& in = inputs[gi];
      const int64_t* offsets = host_offsets[gi].data();
      DeviceTable<T>& table = *tables_[in.table];
      auto g = std::make_unique<GroupBuffers>();
      DeviceGroupInfo& info = g->info;
      info.table = in.table;
      info.dim = table.dim;
      info.pooling = table.config.pooling;
      info.batch_size = in.batch_size;
      info.num_ids = in.num_ids;
      for (int64_t b = 0; b < in.batch_size; ++b) info.max_len = std::max(info.max_len, offsets[b + 1] - offsets[b]);
      g->table = in.table;
      g->offsets.upload(offsets, in.batch_size + 1);
      g->has_weights = in.weights != nullptr;
      if (in.weights) copy_in(g->weights, in.weights, in.num_ids, space);

      // Device ids are read in place (dedup keeps what later steps need).
      DeviceBuffer<int64_t> ids;
      const int64_t* device_ids = in.ids;
      if (space == MemorySpace::kHost) {
        ids.upload(in.ids, in.num_ids);
        device_ids = ids.data();
      }
      info.num_unique = dedup(device_ids, in.num_ids, g->unique_keys, g->inverse);
      resolve(table, g->unique_keys.data(), info.num_unique, g->unique_slots, train);
      g->generation = table.generation;
      if (train) build_occurrences(*g);
      batch->infos_.push_back(info);
      batch->buffers_.push_back(std::move(g));
    }
    return batch;
  }

  void forward(const DevicePreparedBatch& b, const std::vector<float*>& outputs, MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    const PreparedBatchImpl& batch = own(b);
    DeviceBuffer<float> out;
    for (size_t gi = 0; gi < batch.buffers_.size(); ++gi) {
      const GroupBuffers& g = *batch.buffers_[gi];
      DeviceTable<T>& table = *tables_[g.table];
      const int64_t size = g.info.output_size();
      if (size == 0) continue;
      DeviceBuffer<int64_t> refreshed;
      const int64_t* slots = g.unique_slots.data();
      if (table.generation != g.generation) {  // rows moved or were erased since prepare
        resolve(table, g.unique_keys.data(), g.info.num_unique, refreshed, false);
        slots = refreshed.data();
      }
      float* dst = outputs[gi];
      if (space == MemorySpace::kHost) {
        out.resize(size);
        dst = out.data();
      }
      launch_pool(g.view(slots), table.rows(), dst);
      if (space == MemorySpace::kHost) out.download(outputs[gi], size);
    }
    synchronize();
  }

  int64_t backward(const DevicePreparedBatch& b, const std::vector<const float*>& grads, MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    const PreparedBatchImpl& batch = own(b);
    const int64_t step = ++step_;
    DeviceBuffer<float> grad, grad_rows, scratch;
    for (size_t gi = 0; gi < batch.buffers_.size(); ++gi) {
      const GroupBuffers& g = *batch.buffers_[gi];
      DeviceTable<T>& table = *tables_[g.table];
      const int64_t u = g.info.num_unique;
      if (u == 0) continue;
      DeviceBuffer<int64_t> refreshed;
      const int64_t* slots = g.unique_slots.data();
      if (table.generation != g.generation) {  // released rows are re-created, as the CPU engine does
        resolve(table, g.unique_keys.data(), u, refreshed, true);
        slots = refreshed.data();
      }
      const float* grad_in = grads[gi];
      if (space == MemorySpace::kHost) {
        grad.upload(grads[gi], g.info.output_size());
        grad_in = grad.data();
      }
      grad_rows.resize(u * g.info.dim);
      const bool vector = g.info.dim % 4 == 0 && aligned(grad_in, 16);
      auto unique_grad = [&](auto kernel, const char* name, int width) {
        SC_LAUNCH_NAMED(name, grid(u * g.info.dim / width), block(), 0, nullptr, kernel)
        (g.view(slots), g.occ_offsets.data(), g.occ_positions.data(), g.bag_of.data(), g.bag_scale.data(), grad_in, u,
         grad_rows.data());
        SC_CHECK_LAUNCH();
      };
      if (vector)
        unique_grad(SC_NAMED_KERNEL(unique_grad_kernel<4>), 4);
      else
        unique_grad(SC_NAMED_KERNEL(unique_grad_kernel<1>), 1);
      if (!std::is_same_v<T, float>) scratch.resize(u * g.info.dim);
      SC_LAUNCH(grid(u), block(), 0, nullptr, update_rows_kernel<T>)
      (table.rows(), slots, u, grad_rows.data(), table.config.optimizer, step, scratch.data());
      SC_CHECK_LAUNCH();
    }
    synchronize();
    return step;
  }

  void lookup(int t, const int64_t* keys, int64_t n, float* out, bool insert, MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceTable<T>& table = *tables_.at(t);
    if (n == 0) return;
    DeviceBuffer<int64_t> k, slots;
    const int64_t* device_keys = keys;
    if (space == MemorySpace::kHost) {
      k.upload(keys, n);
      device_keys = k.data();
    }
    resolve(table, device_keys, n, slots, insert);
    DeviceBuffer<float> rows;
    float* dst = out;
    if (space == MemorySpace::kHost) {
      rows.resize(n * table.dim);
      dst = rows.data();
    }
    SC_LAUNCH(grid(n * table.dim), block(), 0, nullptr, gather_rows_kernel<T>)(table.rows(), slots.data(), n, dst);
    SC_CHECK_LAUNCH();
    if (space == MemorySpace::kHost) rows.download(out, n * table.dim);
    synchronize();
  }

  int64_t erase(int t, const int64_t* keys, int64_t n, MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceTable<T>& table = *tables_.at(t);
    if (n == 0) return 0;
    DeviceBuffer<int64_t> k;
    const int64_t* device_keys = keys;
    if (space == MemorySpace::kHost) {
      k.upload(keys, n);
      device_keys = k.data();
    }
    DeviceBuffer<unsigned long long> counters(2);
    counters.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, erase_kernel)
    (table.view(), device_keys, n, counters.data(), counters.data() + 1);
    SC_CHECK_LAUNCH();
    unsigned long long c[2];
    counters.download(c, 2);
    table.size -= static_cast<int64_t>(c[0]);
    table.tombstones += static_cast<int64_t>(c[1]);
    if (c[0]) table.generation = next_generation();
    return static_cast<int64_t>(c[0]);
  }

  int64_t count_non_finite(const float* values, int64_t n) override {
    if (n == 0) return 0;
    DeviceGuard on(device_);
    DeviceBuffer<unsigned long long> count(1);
    count.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, count_non_finite_kernel)(values, n, count.data());
    SC_CHECK_LAUNCH();
    unsigned long long c = 0;
    count.download(&c, 1);
    return static_cast<int64_t>(c);
  }

  void copy_to_host(void* dst, const void* device_src, size_t bytes) override {
    DeviceGuard on(device_);
    copy_bytes(dst, device_src, bytes, Copy::kDeviceToHost);
  }

  void check_device_pointer(const void* p, const std::string& what) const override {
#if defined(__CUDACC__)
    cudaPointerAttributes attr{};
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
      cudaGetLastError();  // clear the error of an unknown pointer
      attr.type = cudaMemoryTypeUnregistered;
    }
    SC_CHECK_ARG(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, what,
                 " is not CUDA device memory (pass host arrays as NumPy arrays, device arrays as CuPy or torch CUDA)");
    const std::optional<int> on = attr.type == cudaMemoryTypeDevice ? std::optional<int>(attr.device) : std::nullopt;
#else
    // Host memory posing as device memory is accepted; emulated device memory has a device.
    const std::optional<int> on = ::sparsecore::cuda_emulation::device_of(p);
#endif
    SC_CHECK_ARG(!on || *on == device_, what, " is on cuda:", on.value_or(-1),
                 ", but this collection lives on cuda:", device_, " (move the array to cuda:", device_,
                 ", or build the collection with device=", on.value_or(-1), ")");
  }

  DeviceEmbeddingCollection::Export export_rows(int t) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceTable<T>& table = *tables_.at(t);
    DeviceEmbeddingCollection::Export e;
    const int64_t total = table.capacity + kReservedSlots;
    DeviceBuffer<int64_t> slots(total);
    DeviceBuffer<unsigned long long> count(1);
    count.fill_zero();
    SC_LAUNCH(grid(total), block(), 0, nullptr, collect_live_kernel)(table.view(), slots.data(), count.data());
    SC_CHECK_LAUNCH();
    unsigned long long n = 0;
    count.download(&n, 1);
    std::vector<int64_t> host_slots(n);
    slots.download(host_slots.data(), n);
    std::sort(host_slots.begin(), host_slots.end());
    // Rows come back whole (the table's arrays), then are picked out on the host: export is
    // a checkpoint-style operation, not a hot path.
    std::vector<int64_t> keys(table.capacity);
    table.keys.download(keys.data(), table.capacity);
    std::vector<T> w(static_cast<size_t>(total) * table.dim);
    table.weights.download(w.data(), w.size());
    std::vector<float> st(static_cast<size_t>(total) * table.state_dim);
    table.state.download(st.data(), st.size());
    std::vector<uint32_t> cnt(total);
    table.update_count.download(cnt.data(), total);
    std::vector<int64_t> last(total);
    table.last_step.download(last.data(), total);
    std::vector<std::pair<int64_t, int64_t>> order;  // (key, slot)
    for (int64_t s : host_slots)
      order.emplace_back(s < table.capacity ? keys[s] : (s == table.capacity ? kEmptyKey : kErasedKey), s);
    std::sort(order.begin(), order.end());
    for (auto [key, s] : order) {
      e.keys.push_back(key);
      for (int d = 0; d < table.dim; ++d) e.weights.push_back(host_float(w[s * table.dim + d]));
      for (int d = 0; d < table.state_dim; ++d) e.state.push_back(st[s * table.state_dim + d]);
      e.update_count.push_back(cnt[s]);
      e.last_step.push_back(last[s]);
    }
    return e;
  }

  void import_rows(int t, const DeviceEmbeddingCollection::Export& e) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceTable<T>& table = *tables_.at(t);
    const int64_t n = static_cast<int64_t>(e.keys.size());
    if (n == 0) return;
    DeviceBuffer<int64_t> keys, slots, last;
    keys.upload(e.keys.data(), n);
    resolve(table, keys.data(), n, slots, true);
    DeviceBuffer<float> weights, state;
    weights.upload(e.weights.data(), e.weights.size());
    state.upload(e.state.data(), e.state.size());
    std::vector<uint32_t> counts(e.update_count.begin(), e.update_count.end());
    DeviceBuffer<uint32_t> count;
    count.upload(counts.data(), n);
    last.upload(e.last_step.data(), n);
    SC_LAUNCH(grid(n), block(), 0, nullptr, store_rows_kernel<T>)
    (table.rows(), slots.data(), n, weights.data(), state.data(), count.data(), last.data());
    SC_CHECK_LAUNCH();
    synchronize();
  }

  void set_step(int64_t step) override {
    std::lock_guard<std::mutex> lock(mutex_);
    step_ = step;
  }

 private:
  static float host_float(T v) { return to_float(v); }
  static uint64_t next_generation() {
    static std::atomic<uint64_t> counter{2};
    return counter.fetch_add(1);
  }

  static bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

  // Forward of one group into out (device). Sum / mean: vector loads (float4 for fp32 rows,
  // __half2 for fp16) when the dim allows and out is aligned for them, scalar otherwise; a
  // group of lanes per bag sized to the dim.
  void launch_pool(const BagsView& view, RowsView<T> rows, float* out) {
    const int64_t bags = std::max<int64_t>(view.batch_size, 1);
    if (view.pooling == Pooling::kNone) {
      SC_LAUNCH(grid(bags * 32), block(), 0, nullptr, pool_sequence_kernel<T>)(view, rows, out);
      SC_CHECK_LAUNCH();
      return;
    }
    constexpr int kVectorWidth = std::is_same_v<T, float> ? 4 : 2;
    const bool vector = view.dim % kVectorWidth == 0 && aligned(out, sizeof(float) * kVectorWidth);
    const int width = vector ? kVectorWidth : 1;
    const int lanes_wanted = (view.dim / width + kPoolElementsPerLane / width - 1) / (kPoolElementsPerLane / width);
    int lanes = 1;
    while (lanes < lanes_wanted && lanes < 32) lanes *= 2;
    auto launch = [&](auto kernel, const char* name) {
      SC_LAUNCH_NAMED(name, grid(bags * lanes), block(), 0, nullptr, kernel)(view, rows, out, lanes);
      SC_CHECK_LAUNCH();
    };
    if (vector)
      launch(SC_NAMED_KERNEL(pool_kernel<T, kVectorWidth>));
    else
      launch(SC_NAMED_KERNEL(pool_kernel<T, 1>));
  }

  dim3 block() const { return dim3(static_cast<unsigned>(limits_.block_threads)); }
  dim3 grid(int64_t threads) const {
    int64_t blocks = (std::max<int64_t>(threads, 1) + limits_.block_threads - 1) / limits_.block_threads;
    if (limits_.max_blocks > 0) blocks = std::min<int64_t>(blocks, limits_.max_blocks);
    return dim3(static_cast<unsigned>(std::min<int64_t>(blocks, 1 << 30)));
  }

  const PreparedBatchImpl& own(const DevicePreparedBatch& b) const {
    auto* p = dynamic_cast<const PreparedBatchImpl*>(&b);
    SC_CHECK_ARG(p && p->owner_ == this, "the prepared batch does not belong to this collection");
    return *p;
  }

  // Fresh, empty slot arrays of `capacity` probed slots (rows uninitialised).
  void allocate(DeviceTable<T>& t, int64_t capacity) {
    const int64_t slots = capacity + kReservedSlots;
    t.capacity = capacity;
    t.keys.resize(capacity);
    if (capacity) fill_empty(t.keys);
    t.reserved.resize(kReservedSlots);
    t.reserved.fill_zero();
    t.weights.resize(slots * t.dim);
    t.state.resize(slots * t.state_dim);
    t.update_count.resize(slots);
    t.last_step.resize(slots);
  }

  // kEmptyKey is 0x8000...0, not a byte pattern: a kernel writes it (no host staging).
  void fill_empty(DeviceBuffer<int64_t>& keys) {
    const auto n = static_cast<int64_t>(keys.size());
    SC_LAUNCH(grid(n), block(), 0, nullptr, fill_keys_kernel)(keys.data(), n, kEmptyKey);
    SC_CHECK_LAUNCH();
  }

  // True when `extra` more keys fit under the load limit as the table is.
  bool fits(const DeviceTable<T>& t, int64_t extra) const {
    return static_cast<double>(t.size + t.tombstones + extra) <= max_load_ * static_cast<double>(t.capacity);
  }

  // Grows (or cleans tombstones out of) the table so `extra` more keys fit under the load limit.
  void reserve(DeviceTable<T>& t, int64_t extra) {
    if (fits(t, extra)) return;
    int64_t capacity =
        next_pow2(static_cast<int64_t>(static_cast<double>(t.size + extra) / std::min(max_load_, 0.5)) + 1);
    DeviceTable<T> fresh;
    fresh.dim = t.dim;
    fresh.state_dim = t.state_dim;
    allocate(fresh, capacity);
    const int64_t old_slots = t.capacity + kReservedSlots;
    DeviceBuffer<int64_t> new_slot_of(old_slots);
    SC_LAUNCH(grid(old_slots), block(), 0, nullptr, rehash_kernel)(t.view(), fresh.view(), new_slot_of.data());
    SC_CHECK_LAUNCH();
    SC_LAUNCH(grid(old_slots), block(), 0, nullptr, move_rows_kernel<T>)
    (t.rows(), fresh.rows(), new_slot_of.data(), old_slots);
    SC_CHECK_LAUNCH();
    t.capacity = capacity;
    t.tombstones = 0;
    t.keys = std::move(fresh.keys);
    t.reserved = std::move(fresh.reserved);
    t.weights = std::move(fresh.weights);
    t.state = std::move(fresh.state);
    t.update_count = std::move(fresh.update_count);
    t.last_step = std::move(fresh.last_step);
    t.generation = next_generation();
  }

  // slots (n) <- slots of keys (n, device); inserting and initialising unknown keys when `insert`.
  // Growth is sized by the keys that are missing, not by n: when n more keys would not fit,
  // a find pass counts the misses first (and is the whole answer when there are none).
  void resolve(DeviceTable<T>& t, const int64_t* keys, int64_t n, DeviceBuffer<int64_t>& slots, bool insert) {
    slots.resize(n);
    if (n == 0) return;
    DeviceBuffer<unsigned long long> count(1);
    if (insert && !fits(t, n)) {
      count.fill_zero();
      SC_LAUNCH(grid(n), block(), 0, nullptr, lookup_kernel)
      (t.view(), keys, n, slots.data(), nullptr, false, count.data());
      SC_CHECK_LAUNCH();
      unsigned long long missing = 0;
      count.download(&missing, 1);
      if (missing == 0) return;
      reserve(t, static_cast<int64_t>(missing));
    }
    DeviceBuffer<int> inserted(n);
    count.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, lookup_kernel)
    (t.view(), keys, n, slots.data(), inserted.data(), insert, count.data());
    SC_CHECK_LAUNCH();
    if (!insert) return;
    unsigned long long created = 0;
    count.download(&created, 1);
    if (created == 0) return;
    t.size += static_cast<int64_t>(created);
    DeviceBuffer<float> scratch;
    if (!std::is_same_v<T, float>) scratch.resize(n * t.dim);
    SC_LAUNCH(grid(n), block(), 0, nullptr, init_rows_kernel<T>)
    (t.rows(), keys, slots.data(), inserted.data(), n, t.config.init, t.config.optimizer, t.seed, scratch.data());
    SC_CHECK_LAUNCH();
  }

  // Exclusive scan of in (n, device) into out (n, device). Stays on the device (no
  // synchronisation); exclusive_scan_total also reads the total back.
  void exclusive_scan(const int* in, int* out, int64_t n) {
    if (n == 0) return;
    const int threads = limits_.block_threads;
    const int64_t tile = int64_t{threads} * kScanItemsPerThread;
    const int64_t tiles = (n + tile - 1) / tile;
    DeviceBuffer<int> tile_sums(tiles);
    SC_LAUNCH(dim3(static_cast<unsigned>(tiles)), block(), 2 * threads * sizeof(int), nullptr, scan_tiles_kernel)
    (in, out, tile_sums.data(), n);
    SC_CHECK_LAUNCH();
    if (tiles > 1) {
      DeviceBuffer<int> tile_offsets(tiles);
      exclusive_scan(tile_sums.data(), tile_offsets.data(), tiles);
      SC_LAUNCH(grid(n), block(), 0, nullptr, add_tile_offsets_kernel)(out, tile_offsets.data(), n, tile);
      SC_CHECK_LAUNCH();
    }
  }

  int64_t exclusive_scan_total(const int* in, int* out, int64_t n) {
    if (n == 0) return 0;
    exclusive_scan(in, out, n);
    int last_in = 0, last_out = 0;
    copy_bytes(&last_in, in + n - 1, sizeof(int), Copy::kDeviceToHost);
    copy_bytes(&last_out, out + n - 1, sizeof(int), Copy::kDeviceToHost);
    return int64_t{last_in} + last_out;
  }

  // unique_keys (U) and inverse (n) of ids (n, device); returns U.
  int64_t dedup(const int64_t* ids, int64_t n, DeviceBuffer<int64_t>& unique_keys, DeviceBuffer<int>& inverse) {
    inverse.resize(n);
    if (n == 0) {
      unique_keys.resize(0);
      return 0;
    }
    const int64_t set_capacity = dedup_set_capacity(n);
    DeviceBuffer<int> set_pos(set_capacity), is_first(n), unique_index(n);
    DeviceBuffer<int64_t> slot_of(n);
    set_pos.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, dedup_insert_kernel)
    (ids, n, set_pos.data(), static_cast<uint64_t>(set_capacity - 1), slot_of.data());
    SC_CHECK_LAUNCH();
    SC_LAUNCH(grid(n), block(), 0, nullptr, mark_first_kernel)(set_pos.data(), slot_of.data(), n, is_first.data());
    SC_CHECK_LAUNCH();
    const int64_t u = exclusive_scan_total(is_first.data(), unique_index.data(), n);
    unique_keys.resize(u);
    SC_LAUNCH(grid(n), block(), 0, nullptr, dedup_finish_kernel)
    (ids, set_pos.data(), slot_of.data(), unique_index.data(), n, unique_keys.data(), inverse.data());
    SC_CHECK_LAUNCH();
    return u;
  }

  void build_occurrences(GroupBuffers& g) {
    const int64_t n = g.info.num_ids, u = g.info.num_unique, batch = g.info.batch_size;
    g.bag_of.resize(n);
    g.bag_scale.resize(batch);
    if (batch > 0) {
      SC_LAUNCH(grid(batch), block(), 0, nullptr, bag_layout_kernel)
      (g.view(nullptr), g.bag_of.data(), g.bag_scale.data());
      SC_CHECK_LAUNCH();
    }
    g.occ_offsets.resize(u + 1);
    g.occ_positions.resize(n);
    if (u == 0) {
      g.occ_offsets.fill_zero();
      return;
    }
    DeviceBuffer<int> counts(u);
    counts.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, count_occurrences_kernel)(g.inverse.data(), n, counts.data());
    SC_CHECK_LAUNCH();
    exclusive_scan(counts.data(), g.occ_offsets.data(), u);
    const int total = static_cast<int>(n);
    copy_bytes(g.occ_offsets.data() + u, &total, sizeof(int), Copy::kHostToDevice);
    stable_sort_positions(g.inverse.data(), n, u, g.occ_positions.data());
  }

  // positions (n, device) <- 0..n-1 stably sorted by keys (n, device, values in [0, num_keys)).
  void stable_sort_positions(const int* keys, int64_t n, int64_t num_keys, int* positions) {
    int bits = 0;
    while (bits < 31 && (int64_t{1} << bits) < num_keys) ++bits;
    const int passes = std::max(1, (bits + kRadixBits - 1) / kRadixBits);
    const int64_t chunks = (n + kRadixChunk - 1) / kRadixChunk;
    DeviceBuffer<int> hist(kRadixBins * chunks), offsets(kRadixBins * chunks);
    DeviceBuffer<int> keys_a, keys_b, values_a, values_b;
    if (passes > 1) {
      for (DeviceBuffer<int>* b : {&keys_a, &keys_b, &values_a, &values_b}) b->resize(n);
    }
    const int* keys_in = keys;
    const int* values_in = nullptr;
    for (int pass = 0; pass < passes; ++pass) {
      const int shift = pass * kRadixBits;
      const bool last = pass == passes - 1;
      int* keys_out = last ? nullptr : (pass % 2 ? keys_b.data() : keys_a.data());
      int* values_out = last ? positions : (pass % 2 ? values_b.data() : values_a.data());
      SC_LAUNCH(grid(chunks), block(), 0, nullptr, radix_histogram_kernel)(keys_in, n, shift, chunks, hist.data());
      SC_CHECK_LAUNCH();
      exclusive_scan(hist.data(), offsets.data(), kRadixBins * chunks);
      SC_LAUNCH(grid(chunks), block(), 0, nullptr, radix_scatter_kernel)
      (keys_in, values_in, n, shift, chunks, offsets.data(), keys_out, values_out);
      SC_CHECK_LAUNCH();
      keys_in = keys_out;
      values_in = values_out;
    }
  }

  LaunchLimits limits_;
  const int device_;
  double max_load_ = 0.75;
  int64_t step_ = 0;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<DeviceTable<T>>> tables_;
};

}  // namespace

namespace {

// `device`, or the current device for -1; InvalidArgument naming the device count otherwise.
int checked_device(int device) {
  if (device == -1) return current_device();
  const int count = device_count();
  SC_CHECK_ARG(device >= 0 && device < count, "device ", device, " out of range: ", count,
               " CUDA device(s) (ordinals 0..", count - 1, ")");
  return device;
}

}  // namespace

std::unique_ptr<DeviceCollectionImpl> make_collection(const std::vector<TableConfig>& tables, uint64_t seed,
                                                      RowStorage storage, LaunchLimits limits, int device) {
#if defined(__CUDACC__)
  std::string reason = unavailable_reason();
  if (!reason.empty()) throw CudaError(reason);
#endif
  device = checked_device(device);
  if (storage == RowStorage::kFloat16) return std::make_unique<Collection<__half>>(tables, seed, limits, device);
  return std::make_unique<Collection<float>>(tables, seed, limits, device);
}

MemoryCacheStats memory_cache_stats(int device) {
  return DeviceMemoryCache::for_device(checked_device(device)).stats();
}

void set_memory_cache_limit(int device, int64_t bytes) {
  DeviceMemoryCache::for_device(checked_device(device)).set_limit(bytes);
}

void empty_memory_cache(int device) { DeviceMemoryCache::for_device(checked_device(device)).trim(); }

#if defined(__CUDACC__)
std::string unavailable_reason() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return std::string("no CUDA device (") + cudaGetErrorString(status) + ")";
  }
  if (count == 0) return "no CUDA device";
  return "";
}
#endif

}  // namespace sparsecore::cuda::SC_BACKEND_NS
