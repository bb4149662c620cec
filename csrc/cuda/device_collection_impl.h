// The backend side of cuda::DeviceEmbeddingCollection (host-only declarations). The kernel
// sources implement it twice from one text: sparsecore::cuda::device (nvcc) and
// sparsecore::cuda::emulated (g++ through the emulation layer). Inputs arrive validated.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda {

class DeviceCollectionImpl {
 public:
  virtual ~DeviceCollectionImpl() = default;
  // Every call runs between these (DeviceCall): the collection's device made current, the
  // call's stream made current and ordered after the collection's previous call and the
  // given producer streams; end_call records where the call ended. One call at a time.
  virtual void begin_call(const StreamArgs& streams) = 0;
  virtual void end_call() noexcept = 0;
  virtual int64_t step() const = 0;
  virtual int64_t table_size(int table) const = 0;
  virtual int64_t table_capacity(int table) const = 0;
  virtual void set_max_load_factor(double f) = 0;
  // The front's feature admission (table/admission.h) and row capacity (table/expiry.h) for
  // the unique ids of group `group` (of table `table`) that have no row at a training
  // prepare: admit[i] = 1 when keys[i] may become a row now. Called on the host, groups in
  // order, only for tables whose config has admission or a capacity.
  using AdmitHook = std::function<void(int group, int table, const int64_t* keys, int64_t n, unsigned char* admit)>;
  // inputs validated; host_offsets[g]: a host copy of group g's offsets.
  virtual std::shared_ptr<DevicePreparedBatch> prepare(const std::vector<GroupInput>& inputs,
                                                       const std::vector<std::vector<int64_t>>& host_offsets,
                                                       bool train, MemorySpace space, const AdmitHook& admit) = 0;
  virtual void forward(const DevicePreparedBatch& batch, const std::vector<float*>& outputs, MemorySpace space) = 0;
  // dropped (per group): for groups of tables with admission, their unique ids without a
  // row, whose gradients were not applied; 0 for the others.
  virtual int64_t backward(const DevicePreparedBatch& batch, const std::vector<const float*>& grads, MemorySpace space,
                           std::vector<int64_t>& dropped) = 0;
  virtual void lookup(int table, const int64_t* keys, int64_t n, float* out, bool insert, MemorySpace space) = 0;
  // removed (n, host): 1 where the key was present and is now gone (a key given twice is
  // marked once).
  virtual int64_t erase(int table, const int64_t* keys, int64_t n, MemorySpace space,
                        std::vector<unsigned char>& removed) = 0;
  // What the host checks of device inputs, read back with one wait: copies (host dst <-
  // device src) and, per array of `finite`, its elements that are NaN or Inf (returned).
  struct HostCopy {
    void* dst;
    const void* src;
    size_t bytes;
  };
  struct Floats {
    const float* values;
    int64_t n;
  };
  virtual std::vector<int64_t> read_back(const std::vector<HostCopy>& copies, const std::vector<Floats>& finite) = 0;
  // InvalidArgument naming `what` unless p is device memory this backend can read (the
  // emulator's device memory is host memory: every pointer passes).
  virtual void check_device_pointer(const void* p, const std::string& what) const = 0;
  // The rows of `table` whose last_step > since (since < 0: every row), sorted by key.
  virtual DeviceEmbeddingCollection::Export export_rows(int table, int64_t since) const = 0;
  // DeviceEmbeddingCollection::save_rows / restore_rows (keys host, distinct) and the rows
  // of keys (host) whose weights or state are not finite.
  virtual std::unique_ptr<DeviceSavedRows> save_rows(int table, const int64_t* keys, int64_t n) = 0;
  virtual void restore_rows(const DeviceSavedRows& saved) = 0;
  virtual int64_t count_non_finite_rows(int table, const int64_t* keys, int64_t n) = 0;
  // 1 per key (host) that table t holds, 0 per absent one: one probe per key on the device and
  // n bytes read back, whatever the table's size.
  virtual std::vector<unsigned char> contains(int table, const int64_t* keys, int64_t n) = 0;
  // export_rows without weights and state: keys, update counts and last steps, by key.
  virtual DeviceEmbeddingCollection::Export export_meta(int table) const = 0;
  // Inserts or overwrites rows (keys unique): weights, state and metadata as given.
  virtual void import_rows(int table, const DeviceEmbeddingCollection::Export& rows) = 0;
  virtual void set_step(int64_t step) = 0;
  // The device the collection's rows live on (every call runs there).
  virtual int device() const = 0;
};

// The scope of one call of the front (begin_call / end_call).
class DeviceCall {
 public:
  DeviceCall(DeviceCollectionImpl& impl, const StreamArgs& streams) : impl_(impl) { impl_.begin_call(streams); }
  ~DeviceCall() { impl_.end_call(); }
  DeviceCall(const DeviceCall&) = delete;
  DeviceCall& operator=(const DeviceCall&) = delete;

 private:
  DeviceCollectionImpl& impl_;
};

// Per backend: the collection on `device` (-1: the current device; InvalidArgument naming
// the device count when out of range), and the memory cache of a device.
namespace emulated {
std::unique_ptr<DeviceCollectionImpl> make_collection(const std::vector<TableConfig>& tables, uint64_t seed,
                                                      RowStorage storage, LaunchLimits limits, int device);
MemoryCacheStats memory_cache_stats(int device);
void set_memory_cache_limit(int device, int64_t bytes);
void empty_memory_cache(int device);
void set_device_allocator(int device, const DeviceAllocator& allocator);
}  // namespace emulated

namespace device {
std::unique_ptr<DeviceCollectionImpl> make_collection(const std::vector<TableConfig>& tables, uint64_t seed,
                                                      RowStorage storage, LaunchLimits limits, int device);
MemoryCacheStats memory_cache_stats(int device);
void set_memory_cache_limit(int device, int64_t bytes);
void empty_memory_cache(int device);
void set_device_allocator(int device, const DeviceAllocator& allocator);
// "" when a device is usable, otherwise why not.
std::string unavailable_reason();
}  // namespace device

}  // namespace sparsecore::cuda
