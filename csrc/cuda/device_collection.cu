// Host orchestration of the device collection: table storage and growth, the prepare /
// forward / backward pipelines as sequences of kernel launches, each launch covering every
// group of a batch. Compiled by nvcc (namespace
// device) and by g++ through the emulation layer (namespace emulated).
#include <algorithm>
#include <mutex>
#include <numeric>
#include <optional>

#include "backward_kernels.cuh"
#include "batch_row_kernels.cuh"
#include "device_admission.h"
#include "device_batch.cuh"
#include "device_collection_impl.h"
#include "device_table.cuh"
#include "device_table_rows.cuh"
#include "sparsecore/core/half.h"

namespace sparsecore::cuda::SC_BACKEND_NS {
namespace {

static_assert(kMaxDedupIds == DeviceEmbeddingCollection::kMaxBatchIds, "the front refuses what dedup cannot index");

template <typename T>
class Collection final : public DeviceCollectionImpl {
 public:
  Collection(const std::vector<TableConfig>& tables, uint64_t seed, LaunchLimits limits, int device)
      : limits_(limits), device_(device), stats_host_(2 * tables.size()) {
    DeviceGuard on(device_);
    own_stream_ = std::make_unique<OwnedStream>();
    last_event_ = std::make_unique<DeviceEvent>();
    snapshot_event_ = std::make_unique<DeviceEvent>();
    StreamScope stream(own_stream_->get());
    stats_.resize(2 * tables.size());
    stats_.fill_zero();
    for (const TableConfig& c : tables) {
      auto t = std::make_unique<DeviceTable<T>>();
      t->config = c;
      t->seed = table_seed(seed, c.name);
      t->dim = c.dim;
      t->state_dim = c.optimizer.state_dim(c.dim);
      t->absent = std::is_same_v<T, float> ? c.default_value
                                           : ::sparsecore::half_to_float(::sparsecore::float_to_half(c.default_value));
      allocate(*t, 0);
      refusing_.push_back(c.admission.enabled() || c.expiry.capacity > 0 ? 1 : 0);
      tables_.push_back(std::move(t));
    }
    snapshot_pending_.assign(tables_.size(), 0);
    last_stream_ = own_stream_->get();
    last_event_->record();
  }

  // The work of every call is done before the streams and buffers go (never on the data path).
  ~Collection() override {
    try {
      DeviceGuard on(device_);
      StreamScope stream(last_stream_);
      synchronize();
    } catch (...) {
    }
  }

  void begin_call(const StreamArgs& streams) override {
    call_mutex_.lock();
    saved_device_ = current_device();
    try {
      if (saved_device_ != device_) set_current_device(device_);
      const cudaStream_t stream = streams.stream ? stream_from_handle(*streams.stream) : own_stream_->get();
      saved_stream_ = std::exchange(current_stream_slot(), stream);
      if (last_stream_ != stream) last_event_->wait();  // after the previous call, wherever it ran
      for (uintptr_t producer : streams.wait_for) wait_for_stream(stream_from_handle(producer));
    } catch (...) {
      current_stream_slot() = saved_stream_;
      if (saved_device_ != device_) set_current_device(saved_device_);
      call_mutex_.unlock();
      throw;
    }
  }

  void end_call() noexcept override {
    try {
      last_event_->record();
      last_stream_ = current_stream();
    } catch (...) {
    }
    current_stream_slot() = saved_stream_;
    if (saved_device_ != device_) {
      try {
        set_current_device(saved_device_);
      } catch (...) {
      }
    }
    call_mutex_.unlock();
  }

  int64_t step() const override { return step_; }
  int device() const override { return device_; }
  int64_t table_size(int t) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    const_cast<Collection*>(this)->read_stats();
    return tables_.at(t)->size;
  }
  int64_t table_capacity(int t) const override { return tables_.at(t)->capacity; }
  void set_max_load_factor(double f) override { max_load_ = f; }

  std::shared_ptr<DevicePreparedBatch> prepare(const std::vector<GroupInput>& inputs,
                                               const std::vector<std::vector<int64_t>>& host_offsets, bool train,
                                               MemorySpace space, const AdmitHook& admit) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    auto batch = std::make_shared<PreparedBatchImpl>();
    batch->train_ = train;
    batch->owner_ = this;
    batch->device = device_;
    batch->last_stream = current_stream();
    std::vector<int> dims;
    std::vector<Pooling> pooling;
    for (const GroupInput& in : inputs) {
      dims.push_back(tables_[in.table]->dim);
      pooling.push_back(tables_[in.table]->config.pooling);
    }
    batch->lay_out(inputs, host_offsets, dims, pooling, space);
    if (inputs.empty()) return batch;
    dedup(shape_, *batch);
    batch->absent_rows.assign(inputs.size(), 0);
    if (train && admit && refusing(*batch))
      resolve_admitted(*batch, admit);
    else
      resolve_batch(*batch, batch->slots, train);
    for (const GroupInput& in : inputs) batch->generations.push_back(tables_[in.table]->generation);
    if (train) build_occurrences(shape_, *batch);
    return batch;
  }

  void forward(const DevicePreparedBatch& b, const std::vector<float*>& outputs, MemorySpace space) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    PreparedBatchImpl& batch = own(b);
    batch.last_stream = current_stream();
    if (batch.view.num_bags == 0 || batch.out_total == 0) return;
    DeviceBuffer<int64_t> refreshed;
    const int64_t* slots = current_slots(batch, refreshed, false);
    DeviceBuffer<float> out;
    DeviceBuffer<float*> more;
    GroupPointers<float*> pointers;
    if (space == MemorySpace::kHost) {
      out.resize(batch.out_total);
      pointers.base = out.data();
    } else {
      pointers = group_pointers(outputs, more);
    }
    SC_LAUNCH(grid(batch.view.num_bags * pool_lanes<T>(batch.groups())), block(), 0, nullptr, pool_kernel<T>)
    (descs_.data(), batch.view, slots, pointers, pool_lanes<T>(batch.groups()));
    SC_CHECK_LAUNCH();
    if (space == MemorySpace::kDevice) return;
    // One download of every group's output, split on the host.
    std::vector<float> host(batch.out_total);
    out.download(host.data(), host.size());
    const auto& groups = batch.groups();
    for (size_t g = 0; g < groups.size(); ++g) {
      const int64_t size = groups[g].output_size();
      if (size) std::memcpy(outputs[g], host.data() + batch.out_begin[g], sizeof(float) * size);
    }
  }

  int64_t backward(const DevicePreparedBatch& b, const std::vector<const float*>& grads, MemorySpace space,
                   std::vector<int64_t>& dropped) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    PreparedBatchImpl& batch = own(b);
    batch.last_stream = current_stream();
    const int64_t step = ++step_;
    dropped.assign(batch.groups().size(), 0);
    if (batch.num_ids == 0) return step;
    // Released rows are re-created, as the CPU engine does (but not those of tables with
    // admission: an id gets a row only when admitted).
    DeviceBuffer<int64_t> refreshed;
    const int64_t* slots = current_slots(batch, refreshed, true);
    if (refusing(batch)) {
      dropped = batch.absent_rows;
      if (slots != batch.slots.data()) {  // found again: count what is absent now
        std::vector<int> group_table;
        const AdmissionLayout layout = admission_layout(batch, group_table);
        std::vector<int64_t> host(layout.begin.back());
        copy_bytes(host.data(), slots, host.size() * sizeof(int64_t), Copy::kDeviceToHost);
        dropped = layout.count_absent(host);
      }
    }
    DeviceBuffer<float> grad;
    DeviceBuffer<const float*> more;
    GroupPointers<const float*> pointers;
    if (space == MemorySpace::kHost) {
      // One upload of every group's gradient.
      std::vector<float> host(batch.out_total);
      const auto& groups = batch.groups();
      for (size_t g = 0; g < groups.size(); ++g) {
        const int64_t size = groups[g].output_size();
        if (size) std::memcpy(host.data() + batch.out_begin[g], grads[g], sizeof(float) * size);
      }
      grad.upload(host.data(), host.size());
      pointers.base = grad.data();
    } else {
      pointers = group_pointers(grads, more);
    }
    DeviceBuffer<float> grad_rows(batch.rows_total), chunk_sums(std::max<int64_t>(batch.sums_total, 1)), scratch;
    if (!std::is_same_v<T, float>) scratch.resize(batch.rows_total);
    SC_LAUNCH(grid(batch.num_grad_items), block(), 0, nullptr, unique_grad_kernel)
    (batch.view, batch.occ_offsets.data(), batch.occ_positions.data(), batch.bag_of.data(), batch.bag_scale.data(),
     pointers, batch.num_grad_items, grad_rows.data(), chunk_sums.data());
    SC_CHECK_LAUNCH();
    SC_LAUNCH(grid(batch.num_ids * kUpdateLanes), block(), 0, nullptr, update_rows_kernel<T>)
    (descs_.data(), batch.view, slots, batch.occ_offsets.data(), grad_rows.data(), chunk_sums.data(), step,
     scratch.data());
    SC_CHECK_LAUNCH();
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
    DeviceBuffer<float> rows;
    float* dst = out;
    if (space == MemorySpace::kHost) {
      rows.resize(n * table.dim);
      dst = rows.data();
    }
    if (insert) {
      resolve(t, device_keys, n, slots, true);
      SC_LAUNCH(grid(n * table.dim), block(), 0, nullptr, gather_rows_kernel<T>)
      (table.rows(), slots.data(), n, dst, 0.0f);
    } else {  // probe and copy in one launch
      const int lanes = row_lanes(table.dim);
      SC_LAUNCH(grid(n * lanes), block(), 0, nullptr, find_rows_kernel<T>)
      (table.view(), table.rows(), device_keys, n, dst, lanes, table.absent);
    }
    SC_CHECK_LAUNCH();
    if (space == MemorySpace::kHost) rows.download(out, n * table.dim);
  }

  int64_t erase(int t, const int64_t* keys, int64_t n, MemorySpace space,
                std::vector<unsigned char>& removed) override {
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
    DeviceBuffer<unsigned long long> erased(1);
    erased.fill_zero();
    DeviceBuffer<unsigned char> flags(n);
    SC_LAUNCH(grid(n), block(), 0, nullptr, erase_kernel)
    (table.view(), device_keys, n, erased.data(), stats_.data() + 2 * t, flags.data());
    SC_CHECK_LAUNCH();
    removed.resize(n);
    flags.download(removed.data(), n);
    read_stats();
    const auto c = static_cast<int64_t>(std::count(removed.begin(), removed.end(), 1));
    if (c) table.generation = next_generation();
    return c;
  }

  std::vector<int64_t> read_back(const std::vector<HostCopy>& copies, const std::vector<Floats>& finite) override {
    DeviceGuard on(device_);
    size_t total = finite.size() * sizeof(unsigned long long);
    for (const HostCopy& c : copies) total += c.bytes;
    if (total == 0) return {};
    return read_back_checked(shape_, copies, finite, pinned_staging(total));
  }

  void check_device_pointer(const void* p, const std::string& what) const override {
    check_device_memory(p, device_, what);
  }

  DeviceEmbeddingCollection::Export export_meta(int t) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    return export_table_rows(shape_, *tables_.at(t), -1, /*values=*/false);
  }

  DeviceEmbeddingCollection::Export export_rows(int t, int64_t since) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    return export_table_rows(shape_, *tables_.at(t), since);
  }

  std::unique_ptr<DeviceSavedRows> save_rows(int t, const int64_t* keys, int64_t n) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceTable<T>& table = *tables_.at(t);
    auto saved = std::make_unique<SavedTableRows<T>>(t, n, table.dim, table.state_dim, step_);
    if (n == 0) return saved;
    DeviceBuffer<int64_t> slots;
    saved->keys.upload(keys, n);
    resolve(t, saved->keys.data(), n, slots, true);
    copy_rows(shape_, table.rows(), slots.data(), saved->rows.view(), nullptr, n);
    return saved;
  }

  void restore_rows(const DeviceSavedRows& s) override {
    auto* saved = const_cast<SavedTableRows<T>*>(dynamic_cast<const SavedTableRows<T>*>(&s));
    SC_CHECK_ARG(saved != nullptr, "restore_rows: the saved rows do not come from this collection");
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    DeviceBuffer<int64_t> slots;  // found again: a growth since the save moved the rows
    resolve(saved->table, saved->keys.data(), saved->rows.n, slots, false);
    copy_rows(shape_, saved->rows.view(), nullptr, tables_.at(saved->table)->rows(), slots.data(), saved->rows.n);
    step_ = saved->step;
  }

  int64_t count_non_finite_rows(int t, const int64_t* keys, int64_t n) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    if (n == 0) return 0;
    DeviceBuffer<int64_t> k, slots;
    k.upload(keys, n);
    resolve(t, k.data(), n, slots, false);
    return SC_BACKEND_NS::count_non_finite_rows(shape_, tables_.at(t)->rows(), slots.data(), n);
  }

  std::vector<unsigned char> contains(int t, const int64_t* keys, int64_t n) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    std::vector<unsigned char> held(static_cast<size_t>(n), 0);
    if (n == 0) return held;
    DeviceBuffer<int64_t> k, slots;
    k.upload(keys, n);
    resolve(t, k.data(), n, slots, false);
    std::vector<int64_t> found(static_cast<size_t>(n));
    slots.download(found.data(), n);
    for (int64_t i = 0; i < n; ++i) held[static_cast<size_t>(i)] = found[static_cast<size_t>(i)] >= 0 ? 1 : 0;
    return held;
  }

  void import_rows(int t, const DeviceEmbeddingCollection::Export& e) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceGuard on(device_);
    const int64_t n = static_cast<int64_t>(e.keys.size());
    if (n == 0) return;
    DeviceBuffer<int64_t> keys, slots;
    keys.upload(e.keys.data(), n);
    resolve(t, keys.data(), n, slots, true);
    store_table_rows(shape_, *tables_.at(t), slots.data(), e);
  }

  void set_step(int64_t step) override {
    std::lock_guard<std::mutex> lock(mutex_);
    step_ = step;
  }

 private:
  static uint64_t next_generation() {
    static std::atomic<uint64_t> counter{2};
    return counter.fetch_add(1);
  }

  dim3 block() const { return shape_.block(); }
  dim3 grid(int64_t threads) const { return shape_.grid(threads); }

  PreparedBatchImpl& own(const DevicePreparedBatch& b) const {
    auto* p = dynamic_cast<const PreparedBatchImpl*>(&b);
    SC_CHECK_ARG(p && p->owner_ == this, "the prepared batch does not belong to this collection");
    return const_cast<PreparedBatchImpl&>(*p);
  }

  // Pinned host memory for reads back, kept between calls (allocating and freeing pinned
  // memory is slow and freeing it waits for the device). Valid until the next call to it.
  unsigned char* pinned_staging(size_t bytes) {
    if (!staging_ || staging_->size() < bytes)
      staging_ = std::make_unique<PinnedBuffer<unsigned char>>(std::max<size_t>(bytes, 4096));
    return staging_->data();
  }

  // The slots of the batch's unique ids now: found at prepare, or found again (inserting
  // when `insert`) when a table's rows moved or were released since.
  const int64_t* current_slots(PreparedBatchImpl& batch, DeviceBuffer<int64_t>& refreshed, bool insert) {
    bool stale = false;
    for (size_t g = 0; g < batch.generations.size(); ++g)
      stale = stale || tables_[batch.groups()[g].table]->generation != batch.generations[g];
    refresh_descs();
    if (!stale) return batch.slots.data();
    refreshed.resize(batch.slots.size());
    if (insert && refusing(batch)) {
      // Tables with admission only find their rows again (the CPU engine's rule).
      std::vector<int> group_table;
      const std::vector<unsigned char> admit = admission_layout(batch, group_table).mask([](int64_t) { return false; });
      DeviceBuffer<unsigned char> mask;
      mask.upload(admit.data(), admit.size());
      resolve_batch(batch, refreshed, true, mask.data());
    } else {
      resolve_batch(batch, refreshed, insert);
    }
    return refreshed.data();
  }

  // The batch's groups as admission sees them (valid while `batch` lives).
  AdmissionLayout admission_layout(const PreparedBatchImpl& batch, std::vector<int>& group_table) const {
    group_table.clear();
    for (const DeviceGroupInfo& g : batch.groups()) group_table.push_back(g.table);
    return {refusing_, group_table, batch.unique_begin_on_host()};
  }
  bool refusing(const PreparedBatchImpl& batch) const {
    return std::any_of(batch.groups().begin(), batch.groups().end(), [&](auto& g) { return refusing_[g.table] != 0; });
  }

  // A training prepare with admission: find every unique id, let the front sight the absent
  // ids of tables with admission (one read back), then insert the ids admitted and those of
  // the other tables.
  void resolve_admitted(PreparedBatchImpl& batch, const AdmitHook& hook) {
    resolve_batch(batch, batch.slots, false);
    std::vector<int> group_table;
    const AdmissionLayout layout = admission_layout(batch, group_table);
    const int64_t total = layout.begin.back();
    std::vector<int64_t> keys(total), found(total);
    batch.unique_keys.download(keys.data(), total);
    batch.slots.download(found.data(), total);
    const std::vector<unsigned char> admit = layout.admit(keys, found, hook, batch.absent_rows);
    DeviceBuffer<unsigned char> mask;
    mask.upload(admit.data(), admit.size());
    resolve_batch(batch, batch.slots, true, mask.data());
  }

  // The tables' descriptors on the device, uploaded again after a table changed shape.
  void refresh_descs() {
    if (!descs_dirty_) return;
    std::vector<TableDesc<T>> host(tables_.size());
    for (size_t t = 0; t < tables_.size(); ++t) {
      DeviceTable<T>& table = *tables_[t];
      host[t].view = table.view();
      host[t].rows = table.rows();
      host[t].init = table.config.init;
      host[t].opt = table.config.optimizer;
      host[t].seed = table.seed;
      host[t].stats = stats_.data() + 2 * t;
      host[t].absent = table.absent;
    }
    descs_.upload(host.data(), host.size());
    descs_dirty_ = false;
  }

  // The device's counts of live rows and tombstones: read now (a host sync), or adopted from
  // the copy queued after the last insert once the device has made it (no wait).
  // `extra` (n values, device) is read back in the same wait.
  std::vector<unsigned long long> read_stats(const unsigned long long* extra = nullptr, size_t n = 0) {
    auto* more = reinterpret_cast<unsigned long long*>(pinned_staging(n * sizeof(unsigned long long)));
    copy_to_host_async(more, extra, n * sizeof(unsigned long long));
    copy_to_host_async(stats_host_.data(), stats_.data(), sizeof(unsigned long long) * stats_host_.size());
    synchronize();
    for (size_t t = 0; t < tables_.size(); ++t) {
      tables_[t]->size = static_cast<int64_t>(stats_host_.data()[2 * t]);
      tables_[t]->tombstones = static_cast<int64_t>(stats_host_.data()[2 * t + 1]);
      tables_[t]->pending = 0;
    }
    snapshot_queued_ = false;
    return {more, more + n};
  }
  void queue_stats_snapshot() {
    copy_to_host_async(stats_host_.data(), stats_.data(), sizeof(unsigned long long) * stats_host_.size());
    snapshot_event_->record();
    for (size_t t = 0; t < tables_.size(); ++t) snapshot_pending_[t] = tables_[t]->pending;
    snapshot_queued_ = true;
  }
  void adopt_stats_snapshot() {
    if (!snapshot_queued_ || !snapshot_event_->done()) return;
    for (size_t t = 0; t < tables_.size(); ++t) {
      tables_[t]->size = static_cast<int64_t>(stats_host_.data()[2 * t]);
      tables_[t]->tombstones = static_cast<int64_t>(stats_host_.data()[2 * t + 1]);
      tables_[t]->pending -= snapshot_pending_[t];
    }
    snapshot_queued_ = false;
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
    descs_dirty_ = true;
  }

  // kEmptyKey is 0x8000...0, not a byte pattern: a kernel writes it (no host staging).
  void fill_empty(DeviceBuffer<int64_t>& keys) {
    const auto n = static_cast<int64_t>(keys.size());
    SC_LAUNCH(grid(n), block(), 0, nullptr, fill_keys_kernel)(keys.data(), n, kEmptyKey);
    SC_CHECK_LAUNCH();
  }

  // True when `extra` more keys surely fit under the load limit as the table is.
  bool fits(const DeviceTable<T>& t, int64_t extra) const {
    return static_cast<double>(t.size + t.pending + t.tombstones + extra) <=
           max_load_ * static_cast<double>(t.capacity);
  }

  // Grows (or cleans tombstones out of) table `ti` so `missing` more keys fit under the load
  // limit (sizes exact: read_stats first). The new capacity also leaves room for `headroom`
  // more keys (the batch's id count, at most 4 x the table's rows), so the next batches of
  // this size are inserted without reading counts back.
  void reserve(int ti, int64_t missing, int64_t headroom) {
    DeviceTable<T>& t = *tables_[ti];
    if (fits(t, missing)) return;
    const int64_t rows = t.size + missing;
    const int64_t wanted = rows + std::min(headroom, 4 * rows);
    int64_t capacity = next_pow2(static_cast<int64_t>(static_cast<double>(wanted) / std::min(max_load_, 0.5)) + 1);
    DeviceTable<T> fresh;
    fresh.dim = t.dim;
    fresh.state_dim = t.state_dim;
    allocate(fresh, capacity);
    const int64_t old_slots = t.capacity + kReservedSlots;
    DeviceBuffer<int64_t> new_slot_of(old_slots);
    SC_LAUNCH(grid(old_slots), block(), 0, nullptr, rehash_kernel)(t.view(), fresh.view(), new_slot_of.data());
    SC_CHECK_LAUNCH();
    const int lanes = row_lanes(std::max(t.dim, t.state_dim));
    SC_LAUNCH(grid(old_slots * lanes), block(), 0, nullptr, move_rows_kernel<T>)
    (t.rows(), fresh.rows(), new_slot_of.data(), old_slots, lanes);
    SC_CHECK_LAUNCH();
    t.capacity = capacity;
    t.tombstones = 0;
    fill_bytes(stats_.data() + 2 * ti + 1, 0, sizeof(unsigned long long));
    t.keys = std::move(fresh.keys);
    t.reserved = std::move(fresh.reserved);
    t.weights = std::move(fresh.weights);
    t.state = std::move(fresh.state);
    t.update_count = std::move(fresh.update_count);
    t.last_step = std::move(fresh.last_step);
    t.generation = next_generation();
    descs_dirty_ = true;
  }

  // slots (n) <- slots of keys (n, device) of table ti; inserting and initialising unknown
  // keys when `insert`. Growth is sized by the keys that are missing, not by n: when n more
  // keys might not fit, the counts are read and a find pass counts the misses.
  void resolve(int ti, const int64_t* keys, int64_t n, DeviceBuffer<int64_t>& slots, bool insert) {
    DeviceTable<T>& t = *tables_[ti];
    slots.resize(n);
    if (n == 0) return;
    unsigned long long* created = stats_.data() + 2 * ti;
    if (insert) {
      adopt_stats_snapshot();
      if (!fits(t, n)) {
        // One pass counts the missing keys, read back with the exact counts in one wait.
        DeviceBuffer<unsigned long long> count(1);
        count.fill_zero();
        SC_LAUNCH(grid(n), block(), 0, nullptr, lookup_kernel)
        (t.view(), keys, n, slots.data(), nullptr, false, count.data());
        SC_CHECK_LAUNCH();
        const unsigned long long missing = read_stats(count.data(), 1)[0];
        if (missing == 0) return;
        reserve(ti, static_cast<int64_t>(missing), n);
      }
    }
    DeviceBuffer<int> inserted(insert ? n : 0);
    DeviceBuffer<unsigned long long> misses(insert ? 0 : 1);
    if (!insert) misses.fill_zero();
    SC_LAUNCH(grid(n), block(), 0, nullptr, lookup_kernel)
    (t.view(), keys, n, slots.data(), inserted.data(), insert, insert ? created : misses.data());
    SC_CHECK_LAUNCH();
    if (!insert) return;
    t.pending += n;
    SC_LAUNCH(grid(n * row_lanes(t.dim)), block(), 0, nullptr, init_rows_kernel<T>)
    (t.rows(), keys, slots.data(), inserted.data(), n, t.config.init, t.config.optimizer, t.seed, step_ + 1,
     row_lanes(t.dim));
    SC_CHECK_LAUNCH();
    queue_stats_snapshot();
  }

  // slots (bound N) <- slots of every unique id of the batch, one launch for all groups
  // (inserting and initialising unknown ids when `insert`). Growth as in resolve, for the
  // tables whose groups might not fit.
  // admit (N, device, or nullptr: every id): which unique ids may be inserted.
  void resolve_batch(PreparedBatchImpl& batch, DeviceBuffer<int64_t>& slots, bool insert,
                     const unsigned char* admit = nullptr) {
    const auto& groups = batch.groups();
    refresh_descs();
    if (batch.num_ids == 0) return;
    if (insert) {
      adopt_stats_snapshot();
      auto tight = [&] {
        bool any = false;
        for (const DeviceGroupInfo& g : groups) any = any || !fits(*tables_[g.table], g.num_ids);
        return any;
      };
      if (tight()) {
        // One pass counts each table's missing keys, read back with the exact counts.
        DeviceBuffer<unsigned long long> misses(tables_.size());
        misses.fill_zero();
        SC_LAUNCH(grid(batch.num_ids), block(), 0, nullptr, batch_lookup_kernel<TableDesc<T>>)
        (descs_.data(), batch.view, false, slots.data(), nullptr, misses.data(), nullptr);
        SC_CHECK_LAUNCH();
        const std::vector<unsigned long long> host = read_stats(misses.data(), tables_.size());
        for (const DeviceGroupInfo& g : groups)
          if (host[g.table]) reserve(g.table, static_cast<int64_t>(host[g.table]), g.num_ids);
        refresh_descs();
      }
    }
    DeviceBuffer<int> inserted(insert ? batch.num_ids : 0);
    SC_LAUNCH(grid(batch.num_ids), block(), 0, nullptr, batch_lookup_kernel<TableDesc<T>>)
    (descs_.data(), batch.view, insert, slots.data(), inserted.data(), nullptr, admit);
    SC_CHECK_LAUNCH();
    if (!insert) return;
    for (const DeviceGroupInfo& g : groups) tables_[g.table]->pending += g.num_ids;
    const int lanes = batch_row_lanes(groups);
    SC_LAUNCH(grid(batch.num_ids * lanes), block(), 0, nullptr, batch_init_rows_kernel<T>)
    (descs_.data(), batch.view, slots.data(), inserted.data(), step_ + 1, lanes);
    SC_CHECK_LAUNCH();
    queue_stats_snapshot();
  }

  LaunchLimits limits_;
  LaunchShape shape_{limits_};
  const int device_;
  // Calls: one at a time, each on its stream, ordered after the previous one by last_event_.
  std::mutex call_mutex_;
  std::unique_ptr<OwnedStream> own_stream_;
  std::unique_ptr<DeviceEvent> last_event_;
  cudaStream_t last_stream_ = nullptr;
  cudaStream_t saved_stream_ = nullptr;
  int saved_device_ = 0;
  double max_load_ = 0.75;
  int64_t step_ = 0;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<DeviceTable<T>>> tables_;
  // per table: it has admission or a row capacity (ids get rows only when the front says so)
  std::vector<char> refusing_;
  DeviceBuffer<TableDesc<T>> descs_;
  bool descs_dirty_ = true;
  // Per table (live rows, tombstones), counted by the kernels; the host's copy lands in
  // pinned memory behind the inserts (queue_stats_snapshot) or on demand (read_stats).
  DeviceBuffer<unsigned long long> stats_;
  PinnedBuffer<unsigned long long> stats_host_;
  std::unique_ptr<PinnedBuffer<unsigned char>> staging_;
  std::unique_ptr<DeviceEvent> snapshot_event_;
  bool snapshot_queued_ = false;
  std::vector<int64_t> snapshot_pending_;
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

void set_device_allocator(int device, const DeviceAllocator& allocator) {
  DeviceMemoryCache::for_device(checked_device(device)).set_allocator(allocator);
}

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
