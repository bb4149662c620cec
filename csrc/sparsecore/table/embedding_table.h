// EmbeddingTable: a growable table of embedding rows keyed by int64 ids.
//
// One row is one record (docs/architecture.md): the weights, then the optimizer state, then
// the metadata, so a fused update touches one place:
//
//   weights[dim] | float state[optimizer.state_dim(dim)] | PackedRowMeta (8 bytes)
//
// The weights are float32, or IEEE half floats with storage "fp16": the state and metadata stay
// fp32 (as the CUDA backend keeps them), pooling accumulates in fp32, and the fused update runs
// in fp32 on a widened copy whose result is rounded once (to nearest even) back to fp16, as
// are initial values. Padding keeps the state 4-byte and the metadata 8-byte aligned.
//
// Rows are created on demand with initial values that depend only on (table seed, key).
// The optimizer is fixed at creation. The table is a HashTable underneath; see there for
// concurrency. A table with a known number of ids (TableConfig::num_embeddings = N > 0)
// keeps its rows in a DenseRows instead (row i at a fixed address, no probe) and guards them
// with the locks of the same hash-table shards, so both kinds plan, lock, checkpoint and
// shard alike; only where a row lives differs. Ids outside [0, N) are refused or hashed into
// the range (out_of_range) by dense_id() before they reach the rows.
// `generation()` changes whenever rows may have been released (erase, clear, restore, the
// release of retired rows), which tells holders of row pointers to look rows up again.
// Rows leave a table by erase or by its expiry and capacity (TableConfig::expiry,
// table/expiry.h), all through remove_rows_locked.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/optim/optimizer_config.h"
#include "sparsecore/table/admission.h"
#include "sparsecore/table/deleted_keys_log.h"
#include "sparsecore/table/dense_rows.h"
#include "sparsecore/table/expiry.h"
#include "sparsecore/table/hash_table.h"
#include "sparsecore/table/initializer.h"
#include "sparsecore/table/row_epochs.h"

namespace sparsecore {

struct ChangedRows;  // table/export_table.h

enum class Pooling : uint8_t { kSum = 0, kMean = 1, kNone = 2 };

const char* pooling_name(Pooling p);
Pooling pooling_from_name(const std::string& name);  // "sum" | "mean" | "none"

// How a row's weights are stored (the optimizer state is always fp32).
enum class RowStorage : uint8_t { kFloat32 = 0, kFloat16 = 1 };

const char* row_storage_name(RowStorage s);
RowStorage row_storage_from_name(const std::string& name);  // "fp32" | "fp16"

// Per-row metadata as exported and as checkpoint files store it (the format is fixed).
struct RowMeta {
  uint32_t update_count;  // fused updates applied to this row (saturates at 2^32 - 1)
  uint32_t flags;         // reserved, zero
  int64_t last_step;      // collection step of the last change: an update, or the insert (below)
};
static_assert(sizeof(RowMeta) == 16);

// The same metadata as rows hold it, after their floats: 8 bytes instead of 16 (at dim 16
// with Adagrad a row is 128 bytes of floats, so this is 6% of the table). The step is kept
// saturating at 2^32 - 1, the update count exactly as RowMeta has it.
struct PackedRowMeta {
  uint32_t update_count;
  uint32_t last_step;

  static constexpr uint32_t kMax = 0xffffffffu;
  void count_update() {
    if (update_count != kMax) ++update_count;
  }
  void set_last_step(int64_t step) {
    last_step = step <= 0 ? 0u : (step >= int64_t{kMax} ? kMax : static_cast<uint32_t>(step));
  }
  RowMeta unpack() const { return RowMeta{update_count, 0, static_cast<int64_t>(last_step)}; }
  static PackedRowMeta pack(const RowMeta& m) {
    PackedRowMeta p{m.update_count, 0};
    p.set_last_step(m.last_step);
    return p;
  }
};
static_assert(sizeof(PackedRowMeta) == 8);

// What a table with num_embeddings = N does with an id outside [0, N).
enum class OutOfRange : uint8_t { kError = 0, kHash = 1 };

const char* out_of_range_name(OutOfRange o);
OutOfRange out_of_range_from_name(const std::string& name);  // "error" | "hash"

// The largest num_embeddings: 2^40 ids (the rows are reserved as address space, 2^40 rows of
// even 64 bytes already pass what x86-64 user space can map, and the reservation itself is
// checked when the table is made).
inline constexpr int64_t kMaxNumEmbeddings = int64_t{1} << 40;

struct TableConfig {
  std::string name;
  int dim = 0;
  OptimizerConfig optimizer;
  InitializerConfig init;
  Pooling pooling = Pooling::kSum;
  int shard_bits = 6;  // 64 shards: parallelism and lock granularity, not visible in results
  RowStorage storage = RowStorage::kFloat32;
  // 0: a hash table (any int64 id). N > 0: ids are dense in [0, N), rows found by index.
  int64_t num_embeddings = 0;
  OutOfRange out_of_range = OutOfRange::kError;
  // Which ids a training lookup may turn into rows (table/admission.h); the default admits all.
  AdmissionConfig admission;
  // Every weight of the default row: what an id without a row reads (training lookups of
  // ids not yet admitted, evaluation lookups of unknown ids), in pooling and lookups alike.
  float default_value = 0.0f;
  // Group Lasso tables: remove the rows whose weights are all exactly zero every prune_every
  // steps of the collection (EmbeddingCollection::prune); 0: only on demand.
  int64_t prune_every = 0;
  // Which rows leave the table, and its row capacity (table/expiry.h); the default keeps all.
  ExpiryConfig expiry;

  bool dense() const { return num_embeddings > 0; }
  void validate() const;  // throws InvalidArgument naming the field
  Json to_json() const;
  static TableConfig from_json(const Json& j);
};

// The row index of `key` in a table with num_embeddings = n > 0: the key itself in [0, n);
// outside it, InvalidArgument naming the table and the id (kError), or a seeded hash of the
// key into [0, n) (kHash; the same for every process given the table seed).
int64_t dense_id(const TableConfig& config, uint64_t table_seed, int64_t key);
// The seeded hash of kHash alone.
int64_t hash_into_range(int64_t key, int64_t n, uint64_t table_seed);

class EmbeddingTable {
 public:
  EmbeddingTable(TableConfig config, uint64_t table_seed);

  const TableConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }
  int dim() const { return config_.dim; }
  int state_dim() const { return state_dim_; }
  // floats per row (weights + state)
  int row_floats() const { return config_.dim + state_dim_; }
  size_t row_bytes() const { return row_bytes_; }
  RowStorage storage() const { return config_.storage; }
  uint64_t seed() const { return seed_; }
  size_t size() const { return dense_ ? dense_->size() : table_.size(); }
  size_t memory_bytes() const { return dense_ ? dense_->memory_bytes() : table_.memory_bytes(); }
  // The rows of a table with num_embeddings (nullptr for a hash table).
  DenseRows* dense() const { return dense_.get(); }
  // dense_id() for this table (InvalidArgument on a hashed table).
  int64_t dense_id(int64_t key) const { return sparsecore::dense_id(config_, seed_, key); }
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  HashTable& hash_table() { return table_; }
  const HashTable& hash_table() const { return table_; }

  // The weights of a row of an fp32 table (fp16 tables: weights_fp16).
  static float* weights(std::byte* row) { return reinterpret_cast<float*>(row); }
  static uint16_t* weights_fp16(std::byte* row) { return reinterpret_cast<uint16_t*>(row); }
  float* state(std::byte* row) const { return reinterpret_cast<float*>(row + state_offset_); }
  const float* state(const std::byte* row) const { return reinterpret_cast<const float*>(row + state_offset_); }
  PackedRowMeta* meta(std::byte* row) const { return reinterpret_cast<PackedRowMeta*>(row + meta_offset_); }

  // Fills a new row: initial weights, initial optimizer state, update count 0 and last_step
  // step() + 1 (the first step the row can be part of), so that an incremental export since
  // any version taken before the insert carries the row even when no update follows; and the
  // key leaves the deleted-keys log. Called by every insert, under the key's shard lock.
  void init_row(int64_t key, std::byte* row) const;

  // Keys removed (erase, expiry, eviction, pruning) with the stamp step() + 1 of each removal
  // (table/deleted_keys_log.h).
  DeletedKeysLog& deleted_keys() const { return deleted_; }

  // A row's weights and state as fp32, whatever the storage (fp16 widens exactly):
  // read_row fills floats (row_floats()); write_row stores weights (dim) rounded to the
  // storage type and state (state_dim), and zeroes the padding. Host memory.
  void read_row(const std::byte* row, float* floats) const;
  void write_row(const float* weights, const float* state, std::byte* row) const;
  // The weights alone, widened to fp32: out (dim).
  void read_weights(const std::byte* row, float* out) const;
  const HashTable::RowInit& row_init() const { return row_init_; }
  // A row record whose weights are all default_value, stored as the table's rows are (fp16
  // tables read it rounded to half precision); nullptr when default_value is 0, so readers
  // keep their zero fill. Pooling reads it in place of an absent row.
  const std::byte* default_row() const { return default_row_.empty() ? nullptr : default_row_.data(); }
  // Fills out (n, dim) with the default row's weights as fp32.
  void fill_default(float* out, int64_t n) const;
  // The table's admission filter, or nullptr when every id is admitted at once.
  Admission* admission() const { return admission_.get(); }
  // Training lookups that found no row for keys[i] (rows[i] null, n keys distinct): each is
  // one sighting; rows of the ids admitted now are created and filled in, the others stay
  // null. Without admission every missing row is created. For dense tables keys are row ids.
  void admit_missing(const int64_t* keys, int64_t n, std::byte** rows);

  // The table's expiry and capacity, or nullptr when it has none.
  Expiry* expiry() const { return expiry_.get(); }
  // Whether a training lookup may leave an id without a row (admission, or a capacity).
  bool may_refuse_rows() const { return admission_ || (expiry_ && expiry_->capacity() > 0); }
  // Gradients of ids without a row, dropped: counted by admission when the table has it,
  // else by expiry.
  void count_dropped(int64_t n);
  // The newest step the table has seen (rows stamp last_step with the steps of their
  // updates): set_step keeps the largest step it is given. The local row store sets it at
  // each update, so a parameter-server shard's table follows its push steps; exports set it
  // too. With ttl_seconds it also records the step's wall time.
  void set_step(int64_t step);
  int64_t step() const { return step_.load(std::memory_order_acquire); }

  // Creates rows in hash shard `shard` (the caller holds its write lock) for the keys whose
  // rows[i] is null: keys (count) distinct, all of that shard; rows (count) host. sight:
  // each is a sighting for feature admission, and only admitted ids get rows. With a
  // capacity the shard's bound holds: rows are evicted (never those of `keys`) or refused,
  // refused entries stay null (counted). Hash tables only.
  void insert_missing_locked(int shard, const int64_t* keys, int64_t count, std::byte** rows, bool sight);

  // Why rows leave the table (which statistic counts them).
  enum class Removal : uint8_t { kErased = 0, kExpired = 1, kEvicted = 2 };
  // Removes keys (n) host; returns how many were present. Every removal of rows (erase,
  // expiry, eviction) goes through remove_rows_locked, under the shard's write lock. Rows of a
  // hash table are retired, not reused, until release_retired(): a training call that took
  // their pointers before may still read or write them.
  int64_t remove_rows(const int64_t* keys, int64_t n, Removal why);
  // Returns retired rows to their shards for reuse and, when there were any, bumps
  // generation(). Only when no caller holds row pointers (EmbeddingCollection runs it under
  // its exclusive lock). Returns how many rows were released.
  size_t release_retired();
  // Returns the rows retired with a stamp < before (table/row_epochs.h: rows no holder of
  // row pointers can hold), shard by shard under each shard's lock, while training goes on;
  // the generation stays. Returns how many rows were released.
  size_t release_retired_before(uint64_t before);
  size_t retired_rows() const { return retired_.load(std::memory_order_relaxed); }
  // Whether a row is expired by the rules (Expiry::cutoffs taken at the start of a pass).
  bool expired(int64_t key, const std::byte* row, const Expiry::Cutoffs& cut) const;
  // Removes every row the rules name now (one pass over the table, then the removals; the
  // caller holds off writers for an exact result); returns how many.
  int64_t expire();
  // The incremental pass: examines about `slots` index slots from the table's cursor (each
  // window extended to the end of its probe run, so every row present at the start of a
  // round is examined once per round) and removes the expired rows; returns how many. A call
  // made while another one runs returns 0 at once.
  int64_t expire_some(int64_t slots);
  // Evicts rows from every shard over its bound (a table restored with another share).
  int64_t enforce_capacity();

  // Row pointers for keys (n) host, either kind of table: rows (n) receives each row
  // (find_rows: nullptr when absent; find_or_insert_rows: absent keys are initialised
  // first). Ids of a dense table go through dense_id() first, every one checked before any
  // row is created.
  void find_rows(const int64_t* keys, int64_t n, std::byte** rows) const;
  void find_or_insert_rows(const int64_t* keys, int64_t n, std::byte** rows);
  // Inserts or overwrites `key` with a copy of `row` (row_bytes; checkpoint restore), under
  // the key's shard lock. A dense table's key must lie in [0, num_embeddings).
  void upsert_copy(int64_t key, const std::byte* row);
  // Visits the rows of hash shards [shard_lo, shard_hi) under their read locks:
  // fn(int64_t key, std::byte* row). A dense table visits its present rows whose key hashes
  // into those shards, in ascending id order.
  template <typename Fn>
  void for_each_in_shards(int shard_lo, int shard_hi, Fn&& fn) const {
    if (!dense_) {
      for (int s = shard_lo; s < shard_hi; ++s) {
        const auto& sh = table_.shard(s);
        auto lock = sh.read_lock();
        sh.for_each(fn);
      }
      return;
    }
    HashTable::SharedLockAll lock(table_);
    dense_->for_each([&](int64_t id, std::byte* row) {
      const int s = table_.shard_of_hash(key_hash(id));
      if (s >= shard_lo && s < shard_hi) fn(id, row);
    });
  }

  // Batch lookups. keys (n) host; out (n, dim) host float32.
  // find_weights: unknown keys read the default row (default_row()) and are not inserted.
  void find_weights(const int64_t* keys, int64_t n, float* out) const;
  // lookup_or_insert_weights: unknown keys are inserted first.
  void lookup_or_insert_weights(const int64_t* keys, int64_t n, float* out);
  // pull_weights: find_weights (insert false) or lookup_or_insert_weights (insert true) on
  // the calling thread alone (HashTable::lookup_batch), each row prefetched as soon as its
  // slot is read. For a parameter-server shard answering its own requests.
  void pull_weights(const int64_t* keys, int64_t n, bool insert, float* out);
  // Removes keys and releases their rows at once (the caller holds off every training call,
  // or is the only thread using the table). Returns how many keys were present. Like every
  // removal (expiry, eviction, pruning) it ends in remove_rows_locked, which records each
  // removed key in deleted_keys() under its shard lock.
  int64_t erase(const int64_t* keys, int64_t n);
  // Removes every row; deltas since a version before now are refused (the removals are not
  // logged one by one): deleted_keys() restarts with floor step() + 1.
  void clear();

  // The rows whose last_step > since (since < 0: every row), as an incremental export reads
  // them: into `out` (table/export_table.h), one segment per collection unit holding its rows'
  // keys and weights widened to fp32. A unit is a hash shard (read once under its read lock;
  // units in parallel) or, for a dense table, the whole table. Only units [begin, end) (end
  // < 0: all) are collected, so that an exporter can write the rows of earlier units while
  // it collects the next. A call of every unit sizes out.segments to collect_units(); a call
  // of a subrange requires it sized so already (InvalidArgument otherwise), because calls of
  // disjoint subranges may run at once on one `out` and must not reallocate it under each
  // other; units outside [begin, end) keep what they held. Run it while no update runs
  // (rows would be caught mid-update).
  void collect_changed(int64_t since, ChangedRows& out, int begin = 0, int end = -1) const;
  int collect_units() const { return dense_ ? 1 : table_.num_shards(); }

  // Copies every row out, shard by shard: keys (size()), rows (size(), row_floats()) as fp32
  // (read_row), meta (size()). Sizes must come from a size() taken while no writer runs.
  int64_t export_rows(int64_t* keys, float* rows, RowMeta* meta, int64_t capacity) const;

  // Marks row pointers taken before now as stale (see generation()). Generations come from
  // one process-wide counter, so no two tables ever share one.
  void bump_generation() { generation_.store(next_generation(), std::memory_order_release); }
  static uint64_t next_generation();

 private:
  void zero_padding(std::byte* row) const;
  // The one place rows leave the table: keys (count) of hash shard `shard`, whose write lock
  // the caller holds. Returns how many were present.
  int64_t remove_rows_locked(int shard, const int64_t* keys, int64_t count, Removal why);
  // Removes the `count` lowest-scored rows of hash shard `shard` (write lock held) whose keys
  // are not in `keep` (sorted); returns how many.
  int64_t evict_locked(int shard, int64_t count, const std::vector<int64_t>& keep);
  // Keys of the expired rows of hash shard `shard` in slots [begin, end) (the lock held).
  void collect_expired(int shard, uint64_t begin, uint64_t end, bool with_special, const Expiry::Cutoffs& cut,
                       std::vector<int64_t>& out) const;

  TableConfig config_;
  uint64_t seed_;
  int state_dim_;
  size_t state_offset_;
  size_t meta_offset_;
  size_t row_bytes_;
  HashTable table_;  // a dense table keeps it empty and uses its shard locks
  std::unique_ptr<DenseRows> dense_;
  HashTable::RowInit row_init_;
  std::atomic<uint64_t> generation_{next_generation()};
  std::unique_ptr<Admission> admission_;
  std::vector<std::byte> default_row_;
  std::unique_ptr<Expiry> expiry_;
  std::atomic<int64_t> step_{0};
  std::atomic<size_t> retired_{0};
  // Per hash shard: rows retired and not yet released (so a release locks only those shards).
  std::unique_ptr<std::atomic<size_t>[]> shard_retired_;
  std::mutex cursor_mutex_;  // one incremental pass at a time
  mutable DeletedKeysLog deleted_;
};

// Seed of table `name` in a collection seeded with `collection_seed`.
uint64_t table_seed(uint64_t collection_seed, const std::string& name);

}  // namespace sparsecore
