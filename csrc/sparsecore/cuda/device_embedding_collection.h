// cuda::DeviceEmbeddingCollection: the CUDA twin of EmbeddingCollection (same tables, same
// initial values, same update rules, same results up to float rounding), with its rows in
// device memory. Declarations only; the kernels live in csrc/cuda.
//
// Two backends run the same kernel sources:
//   Backend::kDevice    a CUDA GPU (needs a CUDA build and a driver; throws
//                       CudaError("no CUDA device ...") otherwise);
//   Backend::kEmulated  the CPU emulation of those kernels (always available; slow, for
//                       tests and for machines without a GPU).
//
// Data path per batch, as the CPU collection: prepare (validate on the host, copy ids over,
// dedup on the device, lookup-or-insert / find), forward (gather + pool per bag), backward
// (per-unique gradient rows, fused update once per unique row). Every step of it is one
// kernel launch for all groups of the batch (table-batched), and counts that depend on the
// data (unique ids, created rows) stay on the device: buffers and grids are sized by the
// input, so a training step with host arrays reads from the device once (forward's outputs). The arrays of a call are
// host memory (copied over and back) or device memory (used in place, zero-copy: CuPy or
// torch CUDA arrays); each call says which with a MemorySpace. Under the emulated backend
// device memory is host memory, so there MemorySpace::kDevice takes host pointers and
// skips the copies.
//
// Rows are stored per table as structure-of-arrays on the device: weights (fp32 or fp16),
// optimizer state (fp32), update count and last step. With fp16 storage the update reads
// the row into fp32, applies the rule and rounds back once.
//
// Streams: every call runs on a stream (StreamArgs: the caller's, or the collection's own)
// and orders itself after the collection's previous call and after the producer streams it
// is given, through events; the host waits only where it reads results.
//
// Thread-safety: one call at a time (calls take an internal mutex).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "sparsecore/cuda/cuda_error.h"
#include "sparsecore/cuda/launch_limits.h"
#include "sparsecore/cuda/memory_cache_stats.h"
#include "sparsecore/ops/embedding_collection.h"

namespace sparsecore::cuda {

enum class Backend : uint8_t { kDevice = 0, kEmulated = 1 };
// Row storage types and their names are the table layer's (sparsecore/table/embedding_table.h).
using sparsecore::RowStorage;
// Where the arrays passed to a call live.
enum class MemorySpace : uint8_t { kHost = 0, kDevice = 1 };

// The stream a call's device work goes to, and the streams whose queued work it follows.
// Nothing synchronises the device: a call waits for the streams it follows through events,
// and successive calls of one collection follow each other the same way, whatever streams
// they run on. A call reads results back to the host (host outputs, counts) by waiting for
// its own stream only.
struct StreamArgs {
  // A cudaStream_t as an integer: 0 (the default stream), 1 (cudaStreamLegacy), 2
  // (cudaStreamPerThread) or a stream handle, e.g. torch.cuda.current_stream().cuda_stream;
  // none: the collection's own stream.
  std::optional<uintptr_t> stream;
  // Producer streams the call must come after, e.g. the `stream` entry of a
  // __cuda_array_interface__ v3 array (its data is ready in that stream's order).
  std::vector<uintptr_t> wait_for;
};

using sparsecore::row_storage_from_name;  // "fp32" | "fp16"
using sparsecore::row_storage_name;

// True when this build has CUDA kernels and a CUDA device with a working driver is present.
bool device_available();
// Why the device backend is unavailable ("" when it is available).
std::string device_unavailable_reason();

// The memory cache of one device of a backend (devices 0..7 under the emulator): its
// statistics, its limit in bytes (default 1 GiB; cached blocks past a lower limit are freed
// at once), and emptying it. InvalidArgument for a device out of range.
MemoryCacheStats memory_cache_stats(Backend backend, int device = 0);
void set_memory_cache_limit(Backend backend, int device, int64_t bytes);
void empty_memory_cache(Backend backend, int device = 0);
// Device buffers of `device` from `allocator` from now on (e.g. PyTorch's caching allocator),
// instead of the bounded cache above; an allocator without functions goes back to the cache.
// Blocks allocated before keep going back where they came from.
void set_device_allocator(Backend backend, int device, const DeviceAllocator& allocator);

// Shapes of one prepared group (what forward returns and backward expects).
struct DeviceGroupInfo {
  int table = -1;
  int dim = 0;
  Pooling pooling = Pooling::kSum;
  int64_t batch_size = 0;
  int64_t max_len = 0;
  int64_t num_ids = 0;
  int64_t output_size() const { return (pooling == Pooling::kNone ? batch_size * max_len : batch_size) * dim; }
};

// A batch after prepare(): device buffers of its dedup and rows. Opaque outside csrc/cuda.
class DevicePreparedBatch {
 public:
  virtual ~DevicePreparedBatch() = default;
  virtual bool train() const = 0;
  virtual const std::vector<DeviceGroupInfo>& groups() const = 0;
  // The unique ids of a batch stay on the device (counted there, never read back to size
  // anything); these read them back, the first call with one host sync. Unique ids of group
  // g, in order of first occurrence, and their count. std::out_of_range for a bad g.
  virtual int64_t num_unique(int g) const = 0;
  virtual std::vector<int64_t> unique_ids(int g) const = 0;
};

// Rows saved by DeviceEmbeddingCollection::save_rows (a device copy). Opaque outside csrc/cuda.
class DeviceSavedRows {
 public:
  virtual ~DeviceSavedRows() = default;
};

// The kernels' side of the collection; one implementation per backend.
class DeviceCollectionImpl;

class DeviceEmbeddingCollection {
 public:
  // device: the ordinal the rows live on (-1: the current device when constructed). The
  // collection remembers it: every call runs there, and device arrays of another device are
  // refused with InvalidArgument naming both.
  DeviceEmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed, RowStorage storage = RowStorage::kFloat32,
                            Backend backend = Backend::kDevice, LaunchLimits limits = {}, int device = -1);
  ~DeviceEmbeddingCollection();
  DeviceEmbeddingCollection(const DeviceEmbeddingCollection&) = delete;
  DeviceEmbeddingCollection& operator=(const DeviceEmbeddingCollection&) = delete;

  Backend backend() const { return backend_; }
  RowStorage storage() const { return storage_; }
  uint64_t seed() const { return seed_; }
  int device() const { return device_; }
  int num_tables() const { return static_cast<int>(configs_.size()); }
  const TableConfig& config(int table) const { return configs_.at(table); }
  int table_index(const std::string& name) const;  // NotFound naming the known tables
  int64_t step() const;
  // Sets the step (the count of backward calls that the next one continues, and the stamp of
  // later inserts and removals, step + 1), as EmbeddingCollection::set_step.
  void set_step(int64_t step);

  // Rows held by table t, and its slot capacity (grows when the load factor would pass
  // max_load_factor, default 0.75).
  int64_t table_size(int table) const;
  int64_t table_capacity(int table) const;
  // Ids per group, and per batch (all groups together: positions are int32 on the device).
  static constexpr int64_t kMaxGroupIds = int64_t{INT32_MAX} - 1;
  static constexpr int64_t kMaxBatchIds = kMaxGroupIds;
  void set_max_load_factor(double f);  // in (0, 0.95]
  // Device bytes of one row of table t (weights in the row storage, optimizer state, update
  // count, last step, key slot), and of all tables (their slot arrays at full capacity).
  int64_t row_bytes(int table) const;
  int64_t memory_bytes() const;
  // Table t's feature admission (TableConfig::admission, table/admission.h), or nullptr when
  // it admits every id. The device store takes the CPU engine's decisions: one clock tick
  // per training prepare that sights ids of the table, then a sighting per distinct id the
  // table has no row for; ids not admitted read the default row and their gradients are
  // dropped and counted. Its state travels with to_host / from_host and checkpoints.
  const Admission* admission(int table) const;
  // Table t's expiry (TableConfig::expiry, table/expiry.h), or nullptr. The device store
  // applies its rules (step and wall-clock TTL, min L2 norm, predicate) through the CPU
  // engine's rule and logs the removals as erase does: on demand (expire), and with
  // scan_per_step > 0 after each backward over the next scan_per_step rows in ascending key
  // order (the CPU store walks index slots instead: a full round removes the same rows).
  // A row capacity holds as on the CPU: before a training prepare inserts, each hash shard
  // (shard_bits, the CPU split) over its bound evicts its lowest-scored rows not in the
  // batch (LRU: last step, then update count; LFU: the reverse; ties by key; the scores are
  // the device's per-slot metadata) or, with on_full "refuse" or no room left, the ids get
  // no row (counted; they read the default row and their gradients are dropped and counted).
  // Eviction "sampled" ranks a sample of the CPU's index slots and is refused here.
  // lookup(insert=true) bypasses admission but not the capacity: it makes room as a training
  // prepare does, and an id refused room reads the default row, as on the CPU store.
  Expiry* expiry(int table) const;
  // Removes now the rows of table t that its expiry rules name; returns how many.
  int64_t expire(int table);
  // Keys removed from table t (erase, expire) with the stamp step() + 1 of each removal, for
  // incremental exports of the CPU twin (to_host carries it).
  DeletedKeysLog& deleted_keys(int table) const;

  // inputs: ids, offsets and weights of each group in `space`. Validated before anything
  // changes; with device inputs the offsets are copied to the host for that (B + 1 values)
  // and weights are checked for NaN/Inf on the device.
  std::shared_ptr<DevicePreparedBatch> prepare(const std::vector<GroupInput>& inputs, bool train,
                                               MemorySpace space = MemorySpace::kHost, const StreamArgs& streams = {});
  // outputs[g]: float32 in `space`, DeviceGroupInfo::output_size() elements each.
  void forward(const DevicePreparedBatch& batch, const std::vector<float*>& outputs,
               MemorySpace space = MemorySpace::kHost, const StreamArgs& streams = {});
  // grads[g]: float32 in `space`, the output shapes. NaN/Inf anywhere: InvalidArgument,
  // nothing changes.
  int64_t backward(const DevicePreparedBatch& batch, const std::vector<const float*>& grads,
                   MemorySpace space = MemorySpace::kHost, const StreamArgs& streams = {});

  // keys (n) and out (n, dim) float32 in `space`. find-only unless `insert` (unknown: zeros).
  void lookup(int table, const int64_t* keys, int64_t n, float* out, bool insert,
              MemorySpace space = MemorySpace::kHost, const StreamArgs& streams = {});
  int64_t erase(int table, const int64_t* keys, int64_t n, MemorySpace space = MemorySpace::kHost,
                const StreamArgs& streams = {});

  struct Export {
    std::vector<int64_t> keys;          // (n)
    std::vector<float> weights;         // (n, dim), as fp32
    std::vector<float> state;           // (n, state_dim)
    std::vector<int64_t> update_count;  // (n)
    std::vector<int64_t> last_step;     // (n)
  };
  // The rows of table t whose last_step > since (since < 0: every row), sorted by key. The
  // rows are picked on the device: only they come over to the host.
  Export export_rows(int table, int64_t since = -1) const;

  // Undo of a parameter server's push (all or nothing, as a CPU shard's): save_rows inserts
  // the keys of table t that have no row (initial values, as the push would) and keeps a
  // device copy of every one of their rows and of the step; restore_rows puts those rows and
  // the step back (rows inserted by the save stay, as on a CPU shard). keys (n) host,
  // distinct. count_non_finite_rows: how many rows of keys (n, host) hold a NaN or an Inf in
  // their weights or optimizer state (an update overflowed them); absent keys count as finite.
  std::unique_ptr<DeviceSavedRows> save_rows(int table, const int64_t* keys, int64_t n);
  void restore_rows(const DeviceSavedRows& saved);
  int64_t count_non_finite_rows(int table, const int64_t* keys, int64_t n);

  // A parameter-server shard's row store (cuda/device_shard_rows.h, device_shard_policies.cpp)
  // takes a CPU shard's decisions, which are not a training prepare's. keys (n) host.
  // shard_pull: EmbeddingTable::pull_weights with insert on table t with admission or a
  // capacity: one admission tick (n > 0), the rows held read, then a sighting per key
  // without a row (in order, each occurrence), rows for the keys admitted as the CPU's
  // find_or_insert_rows gives them (each hash shard's absent keys in ascending key order,
  // evicting its lowest-scored rows not among them, or refusing); out (n, dim) host.
  // shard_update_rows: the rows a push of distinct keys updates, as the CPU's apply_unique
  // picks them: with admission those held, with a capacity those held or inserted where
  // there is room (evicting as above); 1 per key with a row, the others' gradients counted
  // as dropped. Both read the table's keys and scores back (O(rows)).
  void shard_pull(int table, const int64_t* keys, int64_t n, float* out);
  std::vector<unsigned char> shard_update_rows(int table, const int64_t* keys, int64_t n);
  // One push: keys (n, distinct, each with a row) updated once each by grads (n, dim, host,
  // finite), as backward of single-id bags without a training prepare's admission or
  // capacity. Returns how many rows the update left non-finite; when none, the step's
  // expiry scan runs as after backward (otherwise the caller puts the rows back).
  int64_t update_rows(int table, const int64_t* keys, int64_t n, const float* grads);

  // The CPU twin: an EmbeddingCollection holding this collection's rows (weights as fp32),
  // optimizer state, metadata and step; and the reverse, a device collection holding a CPU
  // collection's rows (table seeds must derive from the collection seed, as they do in
  // every collection built from configs).
  std::unique_ptr<EmbeddingCollection> to_host() const;
  static std::unique_ptr<DeviceEmbeddingCollection> from_host(const EmbeddingCollection& host,
                                                              RowStorage storage = RowStorage::kFloat32,
                                                              Backend backend = Backend::kDevice,
                                                              LaunchLimits limits = {}, int device = -1);

  // Checkpoints in the CPU engine's format, through the CPU writer and reader (to_host /
  // from_host around EmbeddingCollection::save / load): a model trained on either engine
  // loads on the other.
  void save(const std::string& dir, bool overwrite = false) const;
  static std::unique_ptr<DeviceEmbeddingCollection> load(const std::string& dir,
                                                         RowStorage storage = RowStorage::kFloat32,
                                                         Backend backend = Backend::kDevice, LaunchLimits limits = {},
                                                         int device = -1);
  // Replaces the tables and step with the checkpoint's (same table names and dims), after
  // every file was read and checked; unchanged on error. Batches prepared before a restore
  // are refused afterwards (prepare them again). Not concurrently with other calls.
  void restore(const std::string& dir);

 private:
  void check_table(int table) const;
  // Removes keys (checked) from table t and logs each key removed; returns how many.
  int64_t remove(int table, const int64_t* keys, int64_t n, MemorySpace space, const StreamArgs& streams);
  // remove() inside a call already begun (DeviceCall).
  int64_t remove_in_call(int table, const int64_t* keys, int64_t n, MemorySpace space);
  // Table t's capacity before a training prepare of ids (n, host) inserts (device_capacity.cpp):
  // evicts rows or refuses ids by the CPU rule, and fills verdicts (1: may become a row) for
  // the batch's absent ids, sighting each once when the table has admission and `admission`
  // (an explicit lookup with insert bypasses admission, as on the CPU store). Returns false,
  // deciding nothing, when no shard can pass its bound (the admission hook decides alone).
  // key_order: each shard's absent ids are given room in ascending key order (the CPU's
  // find_or_insert_rows), not in order of first occurrence (a training prepare).
  bool make_room(int table, const int64_t* ids, int64_t n, std::unordered_map<int64_t, unsigned char>& verdicts,
                 bool admission = true, bool key_order = false);
  // Inside a call: rows for keys (n, host) of table t by its capacity (make_room in key
  // order, no admission); returns the verdicts of the absent keys (1: inserted), or an empty
  // map when every absent key was inserted.
  std::unordered_map<int64_t, unsigned char> insert_rows_in_call(int table, const int64_t* keys, int64_t n);
  // Inside a call: 1 per key (n, host) that table t holds now.
  std::vector<unsigned char> held_in_call(int table, const int64_t* keys, int64_t n) const;
  // After an update reached `step`: every table's clock and its incremental expiry scan.
  void after_step(int64_t step);
  // The incremental expiry of table t after a step (scan_per_step rows); returns the rows removed.
  int64_t expire_some(int table);
  // keys (n) in `space` as host memory: keys themselves when they are host memory, else
  // `copy` filled from the device (one wait in the call's stream order).
  const int64_t* host_keys(const int64_t* keys, int64_t n, MemorySpace space, std::vector<int64_t>& copy) const;
  // Host copies of the offsets of device inputs (host inputs: their own offsets), after
  // validating every group.
  std::vector<std::vector<int64_t>> validate_inputs(const std::vector<GroupInput>& inputs, MemorySpace space) const;

  Backend backend_;
  RowStorage storage_;
  LaunchLimits limits_;
  uint64_t seed_;
  int device_ = 0;
  std::vector<TableConfig> configs_;
  std::vector<std::unique_ptr<Admission>> admissions_;  // per table, nullptr: admits every id
  std::vector<std::unique_ptr<Expiry>> expiries_;       // per table, nullptr: no expiry
  std::vector<std::unique_ptr<DeletedKeysLog>> deleted_;
  std::vector<int64_t> cursor_key_;  // per table: the last key incremental expiry examined
  std::vector<char> cursor_set_;
  std::unique_ptr<DeviceCollectionImpl> impl_;
};

}  // namespace sparsecore::cuda
