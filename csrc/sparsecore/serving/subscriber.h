// Subscriber: the serving side of incremental export. It follows a stream directory
// (export_format.h), applies the newest complete full export and then the deltas that
// continue it, in version order, to tables held in memory, and answers lookups by id.
//
// Which export comes next (poll): from version c, the complete delta(since, v) with
// since <= c < v and the largest v; when none continues the chain, the newest complete full
// export with a version > c (the first poll takes the newest full export). A delta at the
// subscriber's own version is never applied again.
//
// Atomicity: an export is read and checked whole (every part, every checksum) before any
// table changes; then it is applied under an exclusive lock (a full export replaces the
// tables, a delta removes its deleted keys and upserts its rows), so a lookup sees the state
// before the export or after it, never a mix. An export that fails its checks changes nothing.
//
// Thread-safety: lookup, version, tables, dim, size and rows may run on any number of threads
// at once, also while poll applies an export. poll and apply are serialised by an internal
// mutex; start/stop run a background thread that polls every `interval`. Errors of the
// background thread are kept (last_error) and it keeps polling.
//
// Memory: each table's rows stay in the dtype of the export that brought them (fp32, fp16,
// int8, int4; row_codec.h) and are decoded as they are read; a delta in another dtype than its
// table's turns the table to fp32 first (values unchanged). A table is an open-addressing
// index (table/hash_table.h) over row chunks; lookups probe a block of ids with their slots
// prefetched ahead, then read the rows, prefetched ahead in turn. Ids of a table with
// num_embeddings are mapped as the training table maps them (dense_id); an id outside the
// range reads the default row.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/serving/export_format.h"
#include "sparsecore/serving/predictor.h"
#include "sparsecore/serving/row_codec.h"
#include "sparsecore/table/hash_table.h"

namespace sparsecore::serving {

// A Subscriber is the RowSource of a served model (predictor.h): read() answers every table of
// a request under one shared lock, so a prediction sees one version.
class Subscriber : public RowSource {
 public:
  // Nothing is read until the first poll. The directory need not exist yet.
  explicit Subscriber(std::string stream_dir);
  ~Subscriber() override;  // stops the background thread
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  const std::string& stream_dir() const { return stream_dir_; }

  // Applies every export that is ready, in order; returns how many were applied (0: up to
  // date). A damaged export throws (CorruptData, NotFound, IoError) and leaves the state as it
  // was after the last export applied.
  int poll();
  // Applies the complete export at `export_dir` whatever the current version (a full export
  // replaces everything, a delta is applied over the current state); the version becomes
  // the export's. Returns that version.
  int64_t apply(const std::string& export_dir);

  // Polls every `interval` on a background thread until stop() (or destruction).
  void start(std::chrono::milliseconds interval);
  void stop();
  bool running() const;
  // The message of the last failed background poll, "" after a successful one.
  std::string last_error() const;

  // The version of the state held: the last export applied, -1 before any.
  int64_t version() const;
  // Names of the tables held, sorted.
  std::vector<std::string> tables() const;
  // NotFound naming the table when unknown.
  int dim(const std::string& table) const override;
  // RowSource: each read as lookup(), all under one lock.
  void read(const RowRead* reads, size_t count) const override;
  // RowSource: the rows pooled where they are stored, all under one lock; a batch of many
  // ids is split by bags over the compute pool. InvalidArgument when a read's dim is not its
  // table's (a full export changed it).
  void read_pooled(const PooledRead* reads, size_t count, RowScratch& scratch) const override;
  int64_t size(const std::string& table) const;
  // ids (n) host; out (n, dim(table)) host float32: each id's weights; an unknown id reads the
  // table's default row (TableConfig::default_value, zeros unless configured).
  void lookup(const std::string& table, const int64_t* ids, int64_t n, float* out) const;
  // Every row of a table, ascending by key: keys (rows), weights (rows, dim).
  void rows(const std::string& table, std::vector<int64_t>& keys, std::vector<float>& weights) const;

 private:
  struct Table {
    Table(TableConfig c, uint64_t s, ExportDtype dtype);
    TableConfig config;
    uint64_t seed = 0;
    RowCodec codec;
    // One shard: the subscriber's state lock orders writers against readers, the shard's own
    // lock is taken as its contract asks (uncontended).
    std::unique_ptr<HashTable> index;
    const HashTable::Shard& shard() const { return index->shard(0); }
    HashTable::Shard& shard() { return index->shard(0); }
  };
  using Tables = std::map<std::string, Table, std::less<>>;
  struct Loaded {
    ExportName name;
    std::vector<ExportPart> parts;  // rows kept as stored (ExportPart::coded)
  };
  struct Staged;
  static Loaded load(const std::string& export_dir);
  // Everything of an export that needs no lock: checks, new and converted tables, the rows
  // encoded for their tables. Runs under poll_mutex_ (the state cannot change meanwhile).
  Staged stage(Loaded& loaded) const;
  // The exclusive lock held: applies a staged export (nothing in it can fail but memory).
  void commit(Staged& staged);
  void apply_export(Loaded& loaded);
  const Table& table(const std::string& name) const;  // shared lock held
  static void lookup_locked(const Table& t, const int64_t* ids, int64_t n, float* out);
  // ids (n) -> rows (n) of table t (null: absent), keys (n) scratch for a dense table's ids.
  static void find_rows(const Table& t, const int64_t* ids, int64_t n, std::byte** rows, int64_t* keys);
  void follow(std::chrono::milliseconds interval);

  std::string stream_dir_;
  std::mutex poll_mutex_;
  mutable std::shared_mutex state_mutex_;
  Tables tables_;
  int64_t version_ = -1;

  mutable std::mutex follow_mutex_;
  std::condition_variable follow_cv_;
  bool stop_ = false;
  std::thread follower_;
  std::string last_error_;
};

}  // namespace sparsecore::serving
