// The host front of cuda::DeviceEmbeddingCollection: validation (everything is checked on
// the host before any device work, so a bad batch changes nothing) and backend selection.
#include "sparsecore/cuda/device_embedding_collection.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>

#include "device_collection_impl.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/ops/pooling_kernels.h"

namespace sparsecore::cuda {

std::string device_unavailable_reason() {
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  return device::unavailable_reason();
#else
  return "no CUDA device (sparsecore was built without CUDA kernels)";
#endif
}

bool device_available() { return device_unavailable_reason().empty(); }

MemoryCacheStats memory_cache_stats(Backend backend, int device) {
  if (backend == Backend::kEmulated) return emulated::memory_cache_stats(device);
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  return device::memory_cache_stats(device);
#else
  throw CudaError(device_unavailable_reason());
#endif
}

void set_memory_cache_limit(Backend backend, int device, int64_t bytes) {
  if (backend == Backend::kEmulated) return emulated::set_memory_cache_limit(device, bytes);
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  device::set_memory_cache_limit(device, bytes);
#else
  throw CudaError(device_unavailable_reason());
#endif
}

void empty_memory_cache(Backend backend, int device) {
  if (backend == Backend::kEmulated) return emulated::empty_memory_cache(device);
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  device::empty_memory_cache(device);
#else
  throw CudaError(device_unavailable_reason());
#endif
}

void set_device_allocator(Backend backend, int device, const DeviceAllocator& allocator) {
  if (backend == Backend::kEmulated) return emulated::set_device_allocator(device, allocator);
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
  device::set_device_allocator(device, allocator);
#else
  throw CudaError(device_unavailable_reason());
#endif
}

namespace {

// `to` takes the removals of `from` (its floor and each key's stamp), except keys `to_table`
// holds a row of (removed, then inserted again: they travel as rows).
void copy_deleted_keys(const DeletedKeysLog& from, DeletedKeysLog& to, const EmbeddingTable* to_table) {
  to.reset(from.floor());
  to.set_capacity(from.capacity());
  for (const auto& [key, stamp] : from.entries()) {
    std::byte* row = nullptr;
    if (to_table) to_table->find_rows(&key, 1, &row);
    if (!row) to.record(key, stamp);
  }
}
void copy_deleted_keys(const DeletedKeysLog& from, EmbeddingTable& to) {
  copy_deleted_keys(from, to.deleted_keys(), &to);
}

}  // namespace

DeviceEmbeddingCollection::DeviceEmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed, RowStorage storage,
                                                     Backend backend, LaunchLimits limits, int device)
    : backend_(backend), storage_(storage), limits_(limits), seed_(seed), configs_(std::move(tables)) {
  SC_CHECK_ARG(!configs_.empty(), "a DeviceEmbeddingCollection needs at least one table");
  limits.validate();
  std::set<std::string> names;
  for (const auto& c : configs_) {
    c.validate();
    SC_CHECK_ARG(names.insert(c.name).second, "duplicate table name '", c.name, "'");
    SC_CHECK_ARG(!c.dense(), "table '", c.name,
                 "': the device backend keeps hash tables only; num_embeddings is supported on the CPU");
    SC_CHECK_ARG(c.expiry.capacity == 0 || c.expiry.eviction == EvictionMode::kExact, "table '", c.name,
                 "': eviction 'sampled' ranks a sample of the CPU store's hash index; the device backend ranks every "
                 "row of a shard (eviction 'exact')");
  }
  for (const auto& c : configs_) {
    admissions_.push_back(c.admission.enabled() ? std::make_unique<Admission>(c.admission, table_seed(seed, c.name))
                                                : nullptr);
    expiries_.push_back(c.expiry.enabled() ? std::make_unique<Expiry>(c.expiry) : nullptr);
    if (expiries_.back()) expiries_.back()->note_step(0);  // rows created now (wall-clock TTL)
    deleted_.push_back(std::make_unique<DeletedKeysLog>());
  }
  cursor_key_.assign(configs_.size(), 0);
  cursor_set_.assign(configs_.size(), 0);
  if (backend == Backend::kEmulated) {
    impl_ = emulated::make_collection(configs_, seed, storage, limits, device);
  } else {
#if defined(SPARSECORE_HAS_CUDA_KERNELS)
    impl_ = device::make_collection(configs_, seed, storage, limits, device);
#else
    throw CudaError(device_unavailable_reason());
#endif
  }
  device_ = impl_->device();
}

DeviceEmbeddingCollection::~DeviceEmbeddingCollection() = default;

int DeviceEmbeddingCollection::table_index(const std::string& name) const {
  std::string known;
  for (size_t i = 0; i < configs_.size(); ++i) {
    if (configs_[i].name == name) return static_cast<int>(i);
    known += (i ? ", " : "") + configs_[i].name;
  }
  throw NotFound("unknown table '" + name + "' (tables: " + known + ")");
}

void DeviceEmbeddingCollection::check_table(int table) const {
  SC_CHECK_ARG(table >= 0 && table < num_tables(), "table index ", table, " out of range [0, ", num_tables(), ")");
}

int64_t DeviceEmbeddingCollection::step() const { return impl_->step(); }

void DeviceEmbeddingCollection::set_step(int64_t step) {
  SC_CHECK_ARG(step >= 0, "set_step: the step must be >= 0, got ", step);
  DeviceCall call(*impl_, {});
  impl_->set_step(step);
}

const Admission* DeviceEmbeddingCollection::admission(int table) const {
  check_table(table);
  return admissions_[table].get();
}

Expiry* DeviceEmbeddingCollection::expiry(int table) const {
  check_table(table);
  return expiries_[table].get();
}

DeletedKeysLog& DeviceEmbeddingCollection::deleted_keys(int table) const {
  check_table(table);
  return *deleted_[table];
}

int64_t DeviceEmbeddingCollection::expire(int table) {
  check_table(table);
  Expiry* e = expiries_[table].get();
  if (!e || !configs_[table].expiry.has_rules()) return 0;
  // The rows come over to the host and the CPU engine's rule names the expired ones; every
  // row is examined before any goes, so a predicate that throws removes nothing.
  const Export rows = export_rows(table);
  const Expiry::Cutoffs cut = e->cutoffs(step());
  const int dim = configs_[table].dim;
  std::vector<int64_t> gone;
  for (size_t i = 0; i < rows.keys.size(); ++i) {
    const RowMeta m =
        PackedRowMeta::pack(RowMeta{static_cast<uint32_t>(rows.update_count[i]), 0, rows.last_step[i]}).unpack();
    if (e->expired(rows.keys[i], m, rows.weights.data() + i * dim, dim, cut)) gone.push_back(rows.keys[i]);
  }
  const int64_t removed = remove(table, gone.data(), static_cast<int64_t>(gone.size()), MemorySpace::kHost, {});
  e->count_expired(removed);
  return removed;
}

int64_t DeviceEmbeddingCollection::table_size(int table) const {
  check_table(table);
  DeviceCall call(*impl_, {});
  return impl_->table_size(table);
}

int64_t DeviceEmbeddingCollection::table_capacity(int table) const {
  check_table(table);
  return impl_->table_capacity(table);
}

int64_t DeviceEmbeddingCollection::row_bytes(int table) const {
  check_table(table);
  const TableConfig& c = configs_[table];
  const int64_t weight_bytes = storage_ == RowStorage::kFloat16 ? 2 : 4;
  // weights, state, update count (uint32), last step (int64), key (int64)
  return c.dim * weight_bytes + int64_t{c.optimizer.state_dim(c.dim)} * 4 + 4 + 8 + 8;
}

int64_t DeviceEmbeddingCollection::memory_bytes() const {
  int64_t total = 0;
  for (int t = 0; t < num_tables(); ++t) total += (table_capacity(t) + 2) * row_bytes(t);
  return total;
}

void DeviceEmbeddingCollection::set_max_load_factor(double f) {
  SC_CHECK_ARG(f > 0.0 && f <= 0.95, "max_load_factor must be in (0, 0.95], got ", f);
  impl_->set_max_load_factor(f);
}

std::vector<std::vector<int64_t>> DeviceEmbeddingCollection::validate_inputs(const std::vector<GroupInput>& inputs,
                                                                             MemorySpace space) const {
  auto table_name = [this](int t) -> const std::string& { return configs_[t].name; };
  int64_t total = 0;
  for (size_t g = 0; g < inputs.size(); ++g) {
    SC_CHECK_ARG(inputs[g].num_ids <= kMaxGroupIds, "group ", g, " has ", inputs[g].num_ids,
                 " ids; the device backend takes at most ", kMaxGroupIds, " per group and batch");
    total += std::max<int64_t>(inputs[g].num_ids, 0);
    SC_CHECK_ARG(total <= kMaxBatchIds, "the batch has more than ", kMaxBatchIds,
                 " ids (all groups together); the device backend takes at most ", kMaxBatchIds, " per batch: split it");
  }
  std::vector<std::vector<int64_t>> host_offsets(inputs.size());
  if (space == MemorySpace::kHost) {
    validate_group_inputs(inputs, num_tables(), table_name);
    for (size_t g = 0; g < inputs.size(); ++g)
      host_offsets[g].assign(inputs[g].offsets, inputs[g].offsets + inputs[g].batch_size + 1);
    return host_offsets;
  }
  // Device inputs: the same checks on host copies of the offsets (the bag layout is small),
  // the weights' finiteness counted on the device; both read back with one wait.
  std::vector<GroupInput> on_host = inputs;
  std::vector<DeviceCollectionImpl::HostCopy> copies;
  std::vector<DeviceCollectionImpl::Floats> weights;
  for (size_t g = 0; g < inputs.size(); ++g) {
    const GroupInput& in = inputs[g];
    on_host[g].weights = nullptr;
    if (in.batch_size < 0 || in.offsets == nullptr || in.table < 0 || in.table >= num_tables()) continue;
    impl_->check_device_pointer(in.offsets, "group '" + configs_[in.table].name + "' offsets");
    if (in.num_ids > 0) impl_->check_device_pointer(in.ids, "group '" + configs_[in.table].name + "' ids");
    host_offsets[g].resize(static_cast<size_t>(in.batch_size) + 1);
    copies.push_back({host_offsets[g].data(), in.offsets, host_offsets[g].size() * sizeof(int64_t)});
    on_host[g].offsets = host_offsets[g].data();
    if (!in.weights) continue;
    impl_->check_device_pointer(in.weights, "group '" + configs_[in.table].name + "' weights");
    weights.push_back({in.weights, std::max<int64_t>(in.num_ids, 0)});
  }
  const std::vector<int64_t> bad = impl_->read_back(copies, weights);
  validate_group_inputs(on_host, num_tables(), table_name);
  for (size_t g = 0, w = 0; g < inputs.size(); ++g) {
    const GroupInput& in = inputs[g];
    if (in.batch_size < 0 || in.offsets == nullptr || in.table < 0 || in.table >= num_tables() || !in.weights) continue;
    SC_CHECK_ARG(bad[w++] == 0, "group '", configs_[in.table].name, "': weights contain NaN or Inf");
  }
  return host_offsets;
}

std::shared_ptr<DevicePreparedBatch> DeviceEmbeddingCollection::prepare(const std::vector<GroupInput>& inputs,
                                                                        bool train, MemorySpace space,
                                                                        const StreamArgs& streams) {
  DeviceCall call(*impl_, streams);  // validation reads device inputs in the call's stream order
  std::vector<std::vector<int64_t>> host_offsets = validate_inputs(inputs, space);
  DeviceCollectionImpl::AdmitHook admit;
  if (train) {
    // One tick of each admission clock per training prepare that sights ids of its table,
    // before the sightings (the CPU collection's order).
    std::vector<char> ticked(admissions_.size(), 0);
    bool refusing = false;
    for (const GroupInput& in : inputs) {
      Admission* a = admissions_[in.table].get();
      refusing = refusing || a || configs_[in.table].expiry.capacity > 0;
      if (!a || in.num_ids <= 0 || ticked[in.table]) continue;
      ticked[in.table] = 1;
      a->tick();
    }
    // Room in the tables with a capacity, made before the device inserts (device_capacity.cpp).
    auto verdicts = std::make_shared<std::vector<std::unordered_map<int64_t, unsigned char>>>(configs_.size());
    auto decided = std::make_shared<std::vector<char>>(configs_.size(), 0);
    for (const GroupInput& in : inputs) {
      if (configs_[in.table].expiry.capacity <= 0 || in.num_ids <= 0) continue;
      std::vector<int64_t> copy;
      const int64_t* ids = host_keys(in.ids, in.num_ids, space, copy);
      (*decided)[in.table] = make_room(in.table, ids, in.num_ids, (*verdicts)[in.table]) ? 1 : 0;
    }
    if (refusing)
      admit = [this, verdicts, decided](int, int table, const int64_t* keys, int64_t n, unsigned char* verdict) {
        if ((*decided)[table]) {
          const auto& made = (*verdicts)[table];
          for (int64_t i = 0; i < n; ++i) {
            auto it = made.find(keys[i]);
            verdict[i] = it != made.end() ? it->second : 0;
          }
          return;
        }
        Admission* filter = admissions_[table].get();
        for (int64_t i = 0; i < n; ++i) verdict[i] = !filter || filter->sight(keys[i]) ? 1 : 0;
      };
  }
  return impl_->prepare(inputs, host_offsets, train, space, admit);
}

void DeviceEmbeddingCollection::forward(const DevicePreparedBatch& batch, const std::vector<float*>& outputs,
                                        MemorySpace space, const StreamArgs& streams) {
  DeviceCall call(*impl_, streams);
  const auto& groups = batch.groups();
  SC_CHECK_ARG(outputs.size() == groups.size(), "forward: ", outputs.size(), " output buffers for ", groups.size(),
               " groups");
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].output_size() == 0) continue;
    SC_CHECK_ARG(outputs[g] != nullptr, "forward: output ", g, " is null");
    if (space == MemorySpace::kDevice) impl_->check_device_pointer(outputs[g], "forward output " + std::to_string(g));
  }
  impl_->forward(batch, outputs, space);
}

int64_t DeviceEmbeddingCollection::backward(const DevicePreparedBatch& batch, const std::vector<const float*>& grads,
                                            MemorySpace space, const StreamArgs& streams) {
  DeviceCall call(*impl_, streams);
  SC_CHECK_ARG(batch.train(), "backward needs a batch prepared with train=true (this one was prepared for evaluation)");
  const auto& groups = batch.groups();
  SC_CHECK_ARG(grads.size() == groups.size(), "backward: ", grads.size(), " gradients for ", groups.size(), " groups");
  std::vector<DeviceCollectionImpl::Floats> device_grads;
  std::vector<size_t> device_group;
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t size = groups[g].output_size();
    if (size == 0) continue;
    const std::string what = "gradient of group '" + configs_[groups[g].table].name + "'";
    SC_CHECK_ARG(grads[g] != nullptr, "backward: ", what, " is null");
    if (space == MemorySpace::kDevice) {
      impl_->check_device_pointer(grads[g], what);
      device_grads.push_back({grads[g], size});
      device_group.push_back(g);
    } else {
      SC_CHECK_ARG(kernels::all_finite(grads[g], size), what, " contains NaN or Inf; no row was updated");
    }
  }
  const std::vector<int64_t> bad = impl_->read_back({}, device_grads);
  for (size_t i = 0; i < bad.size(); ++i)
    SC_CHECK_ARG(bad[i] == 0, "gradient of group '", configs_[groups[device_group[i]].table].name,
                 "' contains NaN or Inf; no row was updated");
  std::vector<int64_t> dropped;
  const int64_t step = impl_->backward(batch, grads, space, dropped);
  // Counted by admission when the table has it, else by its expiry (a capacity refused them).
  for (size_t g = 0; g < dropped.size(); ++g) {
    if (!dropped[g]) continue;
    if (Admission* a = admissions_[groups[g].table].get())
      a->count_dropped(dropped[g]);
    else if (Expiry* x = expiries_[groups[g].table].get())
      x->count_dropped(dropped[g]);
  }
  after_step(step);
  return step;
}

void DeviceEmbeddingCollection::after_step(int64_t step) {
  for (auto& e : expiries_)
    if (e) e->note_step(step);
  for (int t = 0; t < num_tables(); ++t) expire_some(t);
}

void DeviceEmbeddingCollection::lookup(int table, const int64_t* keys, int64_t n, float* out, bool insert,
                                       MemorySpace space, const StreamArgs& streams) {
  DeviceCall call(*impl_, streams);
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || (keys && out)), "lookup: null keys or output for ", n, " keys");
  if (space == MemorySpace::kDevice && n > 0) {
    impl_->check_device_pointer(keys, "lookup keys");
    impl_->check_device_pointer(out, "lookup output");
  }
  if (insert && configs_[table].expiry.capacity > 0 && n > 0) {
    // A table with a capacity never passes it: room is made (or the insert refused and
    // counted) by the rules of a training prepare, the admitted keys are inserted, and every
    // key is then read; a refused key reads the default row, as on the CPU store.
    std::vector<int64_t> copy;
    const int64_t* ids = host_keys(keys, n, space, copy);
    std::unordered_map<int64_t, unsigned char> verdicts;
    if (make_room(table, ids, n, verdicts, /*admission=*/false)) {
      std::vector<int64_t> admitted;
      for (const auto& [key, verdict] : verdicts)
        if (verdict) admitted.push_back(key);
      std::sort(admitted.begin(), admitted.end());  // a deterministic insertion order
      if (!admitted.empty()) {
        std::vector<float> scratch(admitted.size() * static_cast<size_t>(configs_[table].dim));
        impl_->lookup(table, admitted.data(), static_cast<int64_t>(admitted.size()), scratch.data(), true,
                      MemorySpace::kHost);
      }
      impl_->lookup(table, keys, n, out, false, space);
      return;
    }
  }
  impl_->lookup(table, keys, n, out, insert, space);
}

const int64_t* DeviceEmbeddingCollection::host_keys(const int64_t* keys, int64_t n, MemorySpace space,
                                                    std::vector<int64_t>& copy) const {
  if (space != MemorySpace::kDevice) return keys;
  copy.resize(static_cast<size_t>(n));
  impl_->read_back({{copy.data(), keys, copy.size() * sizeof(int64_t)}}, {});
  return copy.data();
}

int64_t DeviceEmbeddingCollection::erase(int table, const int64_t* keys, int64_t n, MemorySpace space,
                                         const StreamArgs& streams) {
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || keys), "erase: null keys for ", n, " keys");
  return remove(table, keys, n, space, streams);
}

int64_t DeviceEmbeddingCollection::remove(int table, const int64_t* keys, int64_t n, MemorySpace space,
                                          const StreamArgs& streams) {
  DeviceCall call(*impl_, streams);
  return remove_in_call(table, keys, n, space);
}

int64_t DeviceEmbeddingCollection::remove_in_call(int table, const int64_t* keys, int64_t n, MemorySpace space) {
  if (space == MemorySpace::kDevice && n > 0) impl_->check_device_pointer(keys, "erase keys");
  std::vector<unsigned char> removed;
  const int64_t count = impl_->erase(table, keys, n, space, removed);
  std::vector<int64_t> copy;
  if (count) keys = host_keys(keys, n, space, copy);
  // Each removal is logged with the version a delta written later carries (the CPU stamp).
  const int64_t stamp = step() + 1;
  for (int64_t i = 0; i < n && count; ++i)
    if (removed[i]) deleted_[table]->record(keys[i], stamp);
  return count;
}

DeviceEmbeddingCollection::Export DeviceEmbeddingCollection::export_rows(int table, int64_t since) const {
  check_table(table);
  DeviceCall call(*impl_, {});
  return impl_->export_rows(table, since);
}

std::unique_ptr<DeviceSavedRows> DeviceEmbeddingCollection::save_rows(int table, const int64_t* keys, int64_t n) {
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || keys), "save_rows: null keys for ", n, " keys");
  DeviceCall call(*impl_, {});
  return impl_->save_rows(table, keys, n);
}

void DeviceEmbeddingCollection::restore_rows(const DeviceSavedRows& saved) {
  DeviceCall call(*impl_, {});
  impl_->restore_rows(saved);
}

int64_t DeviceEmbeddingCollection::count_non_finite_rows(int table, const int64_t* keys, int64_t n) {
  check_table(table);
  SC_CHECK_ARG(n >= 0 && (n == 0 || keys), "count_non_finite_rows: null keys for ", n, " keys");
  DeviceCall call(*impl_, {});
  return impl_->count_non_finite_rows(table, keys, n);
}

std::unique_ptr<EmbeddingCollection> DeviceEmbeddingCollection::to_host() const {
  auto host = std::make_unique<EmbeddingCollection>(configs_, seed_);
  for (int t = 0; t < num_tables(); ++t) {
    const Export e = export_rows(t);
    EmbeddingTable& table = host->table(t);
    const int dim = table.dim(), sd = table.state_dim();
    std::vector<std::byte> row(table.row_bytes(), std::byte{0});
    for (size_t i = 0; i < e.keys.size(); ++i) {
      table.write_row(e.weights.data() + i * dim, e.state.data() + i * sd, row.data());
      *table.meta(row.data()) =
          PackedRowMeta::pack(RowMeta{static_cast<uint32_t>(e.update_count[i]), 0, e.last_step[i]});
      table.upsert_copy(e.keys[i], row.data());
    }
    if (admissions_[t]) {
      const std::vector<uint8_t> state = admissions_[t]->serialize();
      table.admission()->deserialize(state.data(), state.size());
    }
    if (expiries_[t]) {
      table.expiry()->load_state(expiries_[t]->state_json());
      table.expiry()->copy_callables(*expiries_[t]);
    }
    copy_deleted_keys(*deleted_[t], table);
  }
  host->set_step(step());
  return host;
}

std::unique_ptr<DeviceEmbeddingCollection> DeviceEmbeddingCollection::from_host(const EmbeddingCollection& host,
                                                                                RowStorage storage, Backend backend,
                                                                                LaunchLimits limits,
                                                                                int device_ordinal) {
  std::vector<TableConfig> configs;
  for (int t = 0; t < host.num_tables(); ++t) {
    const EmbeddingTable& table = host.table(t);
    SC_CHECK_ARG(table.seed() == table_seed(host.seed(), table.name()), "table '", table.name(), "' has seed ",
                 table.seed(),
                 ", not the one its collection seed gives; a device collection derives table seeds "
                 "from the collection seed");
    configs.push_back(table.config());
  }
  auto device = std::make_unique<DeviceEmbeddingCollection>(std::move(configs), host.seed(), storage, backend, limits,
                                                            device_ordinal);
  for (int t = 0; t < host.num_tables(); ++t) {
    const EmbeddingTable& table = host.table(t);
    const auto n = static_cast<int64_t>(table.size());
    const int dim = table.dim(), sd = table.state_dim(), floats = table.row_floats();
    Export e;
    e.keys.resize(n);
    std::vector<float> rows(static_cast<size_t>(n) * floats);
    std::vector<RowMeta> meta(n);
    table.export_rows(e.keys.data(), rows.data(), meta.data(), n);
    e.weights.resize(static_cast<size_t>(n) * dim);
    e.state.resize(static_cast<size_t>(n) * sd);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(e.weights.data() + i * dim, rows.data() + i * floats, sizeof(float) * dim);
      std::memcpy(e.state.data() + i * sd, rows.data() + i * floats + dim, sizeof(float) * sd);
      e.update_count.push_back(meta[i].update_count);
      e.last_step.push_back(meta[i].last_step);
    }
    DeviceCall call(*device->impl_, {});
    device->impl_->import_rows(t, e);
    if (const Admission* a = table.admission()) {
      const std::vector<uint8_t> state = a->serialize();
      device->admissions_[t]->deserialize(state.data(), state.size());
    }
    if (const Expiry* x = table.expiry()) {
      device->expiries_[t]->load_state(x->state_json());
      device->expiries_[t]->copy_callables(*x);
    }
    copy_deleted_keys(table.deleted_keys(), *device->deleted_[t], nullptr);
  }
  device->impl_->set_step(host.step());
  return device;
}

void DeviceEmbeddingCollection::save(const std::string& dir, bool overwrite) const { to_host()->save(dir, overwrite); }

std::unique_ptr<DeviceEmbeddingCollection> DeviceEmbeddingCollection::load(const std::string& dir, RowStorage storage,
                                                                           Backend backend, LaunchLimits limits,
                                                                           int device) {
  return from_host(*EmbeddingCollection::load(dir), storage, backend, limits, device);
}

void DeviceEmbeddingCollection::restore(const std::string& dir) {
  std::unique_ptr<DeviceEmbeddingCollection> loaded = load(dir, storage_, backend_, limits_, device_);
  SC_CHECK_ARG(loaded->num_tables() == num_tables(), "checkpoint at '", dir, "' has ", loaded->num_tables(),
               " tables, this collection ", num_tables());
  for (int t = 0; t < num_tables(); ++t) {
    const TableConfig& theirs = loaded->config(t);
    SC_CHECK_ARG(theirs.name == configs_[t].name && theirs.dim == configs_[t].dim, "checkpoint table ", t, " is '",
                 theirs.name, "' (dim ", theirs.dim, "), this collection has '", configs_[t].name, "' (dim ",
                 configs_[t].dim, ")");
  }
  impl_.swap(loaded->impl_);
  configs_.swap(loaded->configs_);
  admissions_.swap(loaded->admissions_);
  // The predicate and clock are set at run time, not saved: the restored tables keep them.
  for (size_t t = 0; t < expiries_.size(); ++t)
    if (loaded->expiries_[t] && expiries_[t]) loaded->expiries_[t]->copy_callables(*expiries_[t]);
  expiries_.swap(loaded->expiries_);
  deleted_.swap(loaded->deleted_);
  seed_ = loaded->seed_;
}

}  // namespace sparsecore::cuda
