// EmbeddingCollection: the tables of one model (its feature groups), driven one call per
// batch, in the manner of FBGEMM's table-batched embedding but over growable hash tables.
// Its rows live in a RowStore (row_store.h): its own tables (the default, "embedded") or
// parameter servers (ps/remote_row_store.h, "distributed"). Planning, pooling and the
// gradient sums are this class's, the same compiled code for both, so the two give the same
// results bit for bit.
//
// The data path of one training step (docs/architecture.md):
//   prepare(inputs, train=true)  validate every group, plan it (batch_planner.h: dedup ids
//                                by shard, unique + inverse); local rows are resolved here
//                                (lookup-or-insert; find-only when train=false)
//   forward(prepared, outputs)   pool rows per bag: sum, mean, or none (padded sequences);
//                                remote rows are pulled by the first forward of the batch
//   backward(prepared, grads)    pooled grads -> one gradient row per unique id (segment sum
//                                in a fixed order) -> the fused update applied once per row
//                                (local), or the sums pushed to the servers (remote)
// `prepare` returns everything backward needs; backward never relies on "the last forward",
// so pipelines may prepare batch k+1 while batch k is in its dense step.
//
// Every input is validated before anything changes: a bad offset array inserts no rows; a
// NaN gradient updates no row. Results are identical for any thread count.
//
// Thread-safety: prepare/forward/backward may run concurrently from several threads
// (updates of one row from two concurrent backward calls race, Hogwild-style); restore()
// and erase() wait for running calls and hold them off while they release rows, so no call
// ever writes a row that was freed (and maybe reused by another key). Rows that eviction or
// incremental expiry (table/expiry.h) remove during batch calls are retired instead: a call
// that took their pointers may still use them, and they are reused only once no batch alive
// and no running call can hold them (release_retired_rows, table/row_epochs.h). With a remote store,
// concurrent forwards of one batch pull its rows once (PreparedBatch::rows_mutex).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ops/row_store.h"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore {

// One feature group of a batch (CSR bags). All pointers are host memory owned by the caller
// and only read during prepare().
struct GroupInput {
  int table = -1;                // index of the table in the collection
  const int64_t* ids = nullptr;  // (num_ids)
  int64_t num_ids = 0;
  const int64_t* offsets = nullptr;  // (batch_size + 1): offsets[0] = 0, non-decreasing, offsets[B] = num_ids
  int64_t batch_size = 0;
  const float* weights = nullptr;  // (num_ids) per-id weights, or nullptr
};

// The summation order of a unique id's gradient, shared by every backend so that their
// results are bit-identical: its occurrence list (ascending positions) is cut into chunks of
// kGradientChunk occurrences, each chunk is summed from zero in list order, and the chunk
// sums are added in chunk order (the first chunk's sum is the start). A list of at most one
// chunk is the plain ordered sum; a long list (a Zipf head id seen thousands of times in a
// batch) is summed chunk by chunk in parallel on a device.
inline constexpr int kGradientChunk = 128;

// A group after prepare(): its bags, its unique ids and their rows. Owned data only (the
// caller's input arrays may be freed after prepare returns).
struct PreparedGroup {
  int table = -1;
  int dim = 0;
  Pooling pooling = Pooling::kSum;
  int64_t num_ids = 0;
  int64_t batch_size = 0;
  int64_t max_len = 0;                // longest bag (the padded length of pooling "none")
  PodVector<int64_t> offsets;         // (batch_size + 1)
  PodVector<float> weights;           // (num_ids) or empty
  PodVector<int64_t> unique_keys;     // (num_unique), grouped by the store's shards
  std::vector<int64_t> shard_starts;  // (shards + 1) shard s's distinct ids: unique_keys[starts[s], starts[s + 1])
  // (num_unique); nullptr: absent (evaluation only). Resolved by prepare (local store) or
  // by the first forward, pointing into PreparedBatch::fetched_rows (remote store).
  mutable PodVector<std::byte*> unique_rows;
  PodVector<int32_t> inverse;  // (num_ids) index into unique_keys
  // Built by the first backward of the batch (a forward never needs them): occurrences of
  // each unique id in ascending position order (CSR), and the bag of each position.
  mutable PodVector<int32_t> occurrence_offsets;    // (num_unique + 1)
  mutable PodVector<int32_t> occurrence_positions;  // (num_ids)
  mutable PodVector<int32_t> bag_of_position;       // (num_ids)
  uint64_t table_generation = 0;                    // rows are re-resolved if the table changed since

  int64_t num_unique() const { return static_cast<int64_t>(unique_keys.size()); }
  // Elements of the forward output / expected gradient of this group.
  int64_t output_size() const { return (pooling == Pooling::kNone ? batch_size * max_len : batch_size) * dim; }
};

struct PreparedBatch {
  bool train = false;
  std::vector<PreparedGroup> groups;
  // Guards the lazy build of the groups' occurrence lists (two backward calls may share a batch).
  mutable std::mutex occurrences_mutex;
  mutable bool occurrences_built = false;
  // Rows a store fetched for this batch (remote: pulled by its first forward, every group's
  // unique rows as fp32, one after another), guarded by rows_mutex.
  mutable std::mutex rows_mutex;
  mutable bool rows_fetched = false;
  mutable PodVector<float> fetched_rows;
  // The strided gradients of a backward gathered into contiguous rows, kept with the batch so
  // that a recycled batch reuses the buffer (no fresh pages per step); guarded by gather_mutex
  // (a concurrent backward of the same batch gathers into a buffer of its own).
  mutable std::mutex gather_mutex;
  mutable PodVector<float> gathered_grads;
};

// Builds g's occurrence lists and bag_of_position from its inverse and offsets (what a
// backward needs beyond the forward).
void build_occurrences(const PreparedGroup& g);

// The factor of each bag's gradient in the backward: 1 for sum and none pooling; for mean,
// 1 / length (1 / sum of the bag's weights, summed in position order when weighted), and 0
// for an empty bag or a zero weight sum. offsets (batch_size + 1) valid, weights
// (offsets[batch_size]) or nullptr, out (batch_size).
void bag_gradient_scales(Pooling pooling, const int64_t* offsets, int64_t batch_size, const float* weights, float* out);

// Checks the groups of a batch for a collection of `num_tables` tables: table index in
// range and used by one group only, at most 2^31 - 1 ids, offsets (offsets[0] = 0,
// non-decreasing, offsets[B] = num_ids), weights finite. Throws InvalidArgument naming the
// group (by table_name(index)). All pointers are host memory. Every backend's prepare
// calls it before changing anything.
void validate_group_inputs(const std::vector<GroupInput>& inputs, int num_tables,
                           const std::function<const std::string&(int)>& table_name);

// A checkpoint's files encoded in memory (EmbeddingCollection::encode_checkpoint), so that a
// caller can take a consistent copy where the rows are owned and write it elsewhere (a
// parameter server encodes on the shard's thread and writes on another).
struct EncodedCheckpoint {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> files;  // name -> bytes, manifest last
  // Writes and fsyncs every file into the existing empty directory `dir`.
  void write(const std::string& dir) const;
};

class LocalRowStore;

class EmbeddingCollection {
 public:
  // Table names must be unique. seed: the collection seed (table seed = hash(seed, name)).
  // The rows live in the collection's own tables (a local store).
  EmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed);
  // The same tables with their rows in `store` (e.g. ps::RemoteRowStore): the collection
  // holds no rows, so the calls that need local rows (table, erase, memory_bytes,
  // apply_unique, the checkpoint calls) throw InvalidArgument naming the call.
  EmbeddingCollection(std::vector<TableConfig> tables, uint64_t seed, std::unique_ptr<RowStore> store);
  ~EmbeddingCollection();

  int num_tables() const { return static_cast<int>(local_ ? tables_.size() : configs_.size()); }
  // Whether the rows live in this process (the collection's own tables).
  bool has_local_tables() const { return local_ != nullptr; }
  const TableConfig& config(int index) const;
  const std::string& table_name(int index) const { return config(index).name; }
  // The local tables (InvalidArgument when the rows live elsewhere).
  EmbeddingTable& table(int index);
  const EmbeddingTable& table(int index) const;
  // Throws NotFound naming the table and listing the known ones.
  int table_index(const std::string& name) const;
  uint64_t seed() const { return seed_; }
  int64_t step() const { return step_.load(std::memory_order_acquire); }
  // Sets the step (the tables keep the largest step they saw, EmbeddingTable::set_step).
  void set_step(int64_t step);

  // Validates all groups, then dedups and pulls. train=true inserts unknown ids and builds
  // what backward needs; train=false never inserts (unknown ids read the default row). Ids of a
  // table with num_embeddings are checked or mapped into range first (in_range_inputs), so
  // the batch's unique_keys are row indices.
  // sight=false (training only): the lookups are not sightings for feature admission, and a
  // table with admission creates no rows (the backward of a batch whose forward was already
  // prepared: the ids it admitted have rows, the others' gradients are dropped).
  std::shared_ptr<PreparedBatch> prepare(const std::vector<GroupInput>& inputs, bool train, bool sight = true);

  // outputs[g] (host float32): (batch_size, dim), or (batch_size, max_len, dim) zero-padded
  // for pooling "none". Sizes are PreparedGroup::output_size().
  // row_strides (empty, or one per group): bag b of group g is written at outputs[g] + b *
  // row_strides[g] floats; 0 means the group's own width. A stride other than 0 must be >= dim
  // and is refused for pooling "none", so the groups of a batch can be written straight into
  // the column blocks of one (batch_size, sum of dims) matrix, the dense model's input.
  void forward(const PreparedBatch& batch, const std::vector<float*>& outputs,
               const std::vector<int64_t>& row_strides = {}) const;

  // Evaluation forward straight from the ids, the fast path for inference: validates every
  // group, then pools each bag by finding its ids one by one (no dedup, nothing kept for a
  // backward), never inserting (unknown ids read the default row). outputs[g] (host float32) as
  // for forward(), with max_len = max_bag_length(inputs[g]) for pooling "none". Without
  // local rows it is prepare(train=false) and forward.
  void evaluate(const std::vector<GroupInput>& inputs, const std::vector<float*>& outputs) const;
  // Longest bag of a group (0 for an empty batch); offsets must be valid.
  static int64_t max_bag_length(const GroupInput& in);
  // The weights of ids (n, host) of local table `table` into out (n, dim) host float32:
  // unknown ids read the default row, or are inserted first when `insert` (no admission; a
  // table at its capacity evicts or refuses as for training). Registered as a holder of row
  // pointers while it copies (row_epochs.h) and under the shared swap lock, so an erase
  // waits for it and a row evicted meanwhile is not reused before the copy is done.
  void lookup(int table, const int64_t* ids, int64_t n, bool insert, float* out);

  // grads[g] (host float32): same shapes as the outputs. Checks all grads are finite first
  // (InvalidArgument naming the group otherwise, nothing changes), then applies the fused
  // update once per unique row. When an update leaves a row non-finite (a finite but huge
  // gradient overflowed its weights or state), every row of the call is put back as it was
  // and InvalidArgument names the tables. Returns the new step.
  // row_strides: as for forward (the gradient of a column block of one matrix).
  int64_t backward(const PreparedBatch& batch, const std::vector<const float*>& grads,
                   const std::vector<int64_t>& row_strides = {});
  // Builds what backward needs beyond forward (each group's occurrence lists), once per batch;
  // backward does it when no one did. A pipeline calls it ahead, on its own thread, to take
  // that work off the training step. No-op for a batch prepared with train=false.
  void plan_backward(const PreparedBatch& batch) const;
  // The update of rows whose gradients were already summed (a parameter server's push):
  // ids (n) distinct, grads (n, dim) host, row i's summed gradient. Unknown ids are inserted;
  // the table's rule is applied once per row with no further summing. The same checks and
  // all-or-nothing undo as backward (InvalidArgument for a repeated id, a non-finite gradient,
  // or an update that overflowed; nothing changes then). Returns the new step.
  int64_t apply_unique(int table, const int64_t* ids, int64_t n, const float* grads);

  // Checkpoint (docs/architecture.md, "Files and frames"): a directory with one file per non-empty run of
  // table shards (a bucket range) and manifest.json. The files are written to a fresh sibling
  // directory that then replaces `dir` in one atomic step (commit_directory), so a crash at
  // any instant leaves the previous checkpoint loadable. Refuses to replace a finished
  // checkpoint unless `overwrite`, and never replaces a directory holding anything else.
  // One save at a time per `dir`. Do not run backward concurrently with save (rows would be
  // caught mid-update).
  void save(const std::string& dir, bool overwrite = false) const;
  // The files of a checkpoint written straight into the existing empty directory `dir`, with
  // no switch: for containers that switch a directory above it (server snapshots, trainers).
  void write_checkpoint(const std::string& dir) const;
  // The same files in memory (a copy of every row): for writers on another thread.
  EncodedCheckpoint encode_checkpoint() const;
  // Reads and verifies every file before anything is swapped in; throws CorruptData on a
  // truncated, altered or forged file (sizes, dims, counts and names are checked against the
  // manifest and the files before anything is read or allocated; symlinks and non-regular
  // files are refused), NotFound if `dir` holds no finished checkpoint.
  static std::unique_ptr<EmbeddingCollection> load(const std::string& dir);
  // Replaces this collection's tables and step with the checkpoint's (table names and dims
  // must match). On error this collection is unchanged.
  void restore(const std::string& dir);

  // Removes `keys` (n, host) from table `table`; returns how many were present. Waits for
  // running prepare/forward/backward calls; batches prepared before it look their rows up
  // again (an erased id that a later backward trains is re-created from its initial values).
  int64_t erase(int table, const int64_t* keys, int64_t n);

  // Pruning: removes the rows of every Group Lasso table whose weights are all exactly zero
  // (+0 or -0; the group soft-threshold sets a whole row to zero at once), through
  // EmbeddingTable::erase, so they leave checkpoints and exports too. An id pruned reads the
  // default row (TableConfig::default_value: the same output as its zero row when that is 0)
  // and starts afresh from its initial values if training sees it again. Waits for running
  // batch calls, as erase() does. Returns the rows removed per table (0 for other tables).
  // Tables with TableConfig::prune_every = N are also pruned after every backward or
  // apply_unique that brings the step to a multiple of N.
  std::vector<int64_t> prune();
  // Removes the rows of table `table` that its expiry rules name now (table/expiry.h), one
  // pass over the table; returns how many. Waits for running batch calls, as erase does.
  int64_t expire(int table);
  // Returns the rows that eviction and incremental expiry retired to their tables for reuse.
  // wait=false: those that no batch alive and no running call can hold (table/row_epochs.h),
  // shard by shard, without stopping other calls; the others wait for their holders (unless
  // too many wait: then as wait=true). wait=true: every retired row, after the running calls
  // (batches prepared before look their rows up again). prepare and apply_unique call it first.
  void release_retired_rows(bool wait);

  // Sum of table memory (index + rows) in bytes.
  size_t memory_bytes() const;

 private:
  EmbeddingCollection(std::vector<std::unique_ptr<EmbeddingTable>> tables, uint64_t seed, int64_t step);
  void validate_inputs(const std::vector<GroupInput>& inputs) const;
  // The groups of dense tables with every id in [0, num_embeddings): an id outside throws
  // InvalidArgument naming the table and the id (out_of_range "error"), or the group's ids
  // are copied into mapped[g] with those ids hashed into the range ("hash"). Other groups
  // are returned as they are. The result points into `mapped`, which must outlive its use.
  std::vector<GroupInput> in_range_inputs(const std::vector<GroupInput>& inputs,
                                          std::vector<PodVector<int64_t>>& mapped) const;
  // Throws InvalidArgument naming `call` when the rows are not local.
  void require_local(const char* call) const;
  // prepare() without the swap lock (the caller holds it).
  std::shared_ptr<PreparedBatch> plan(const std::vector<GroupInput>& inputs, bool train, bool sight = true) const;
  void pool(const PreparedBatch& batch, const std::vector<float*>& outputs,
            const std::vector<int64_t>& row_strides = {}) const;
  // Each group's row stride (floats) from forward/backward's row_strides; InvalidArgument when
  // one is not allowed (see forward).
  std::vector<int64_t> resolved_strides(const PreparedBatch& batch, const std::vector<int64_t>& row_strides,
                                        const char* call) const;
  // Prunes the tables with prune_every dividing `step` (the caller holds no swap lock).
  void prune_if_due(int64_t step);
  // prune() of one table; the caller holds the swap lock exclusively.
  int64_t prune_table(EmbeddingTable& table);

  // Finished batches come back here so the next prepare reuses their buffers instead of
  // faulting in fresh pages every step.
  struct BatchCache {
    std::mutex mutex;
    std::vector<std::unique_ptr<PreparedBatch>> free;
  };

  uint64_t seed_;
  std::shared_ptr<BatchCache> batch_cache_ = std::make_shared<BatchCache>();
  // Holders of row pointers: prepared batches alive, and the calls that look rows up for
  // their duration (shared with the batches, which may outlive the collection).
  std::shared_ptr<RowEpochs> row_epochs_ = std::make_shared<RowEpochs>();
  std::vector<std::unique_ptr<EmbeddingTable>> tables_;  // local store only
  std::vector<TableConfig> configs_;                     // other stores only
  std::unique_ptr<RowStore> store_;
  LocalRowStore* local_ = nullptr;  // store_, when it is the local one
  std::atomic<int64_t> step_{0};
  mutable std::shared_mutex swap_mutex_;  // shared: batch calls; unique: restore
};

}  // namespace sparsecore
