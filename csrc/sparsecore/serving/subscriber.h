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
// Memory: rows live in host memory as fp32 (fp16 and int8 exports are dequantized once, as
// they are applied). Ids of a table with num_embeddings are mapped as the training table
// maps them (dense_id); an id outside the range reads as zeros.
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
#include <unordered_map>
#include <vector>

#include "sparsecore/serving/export_format.h"
#include "sparsecore/serving/predictor.h"

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
  int64_t size(const std::string& table) const;
  // ids (n) host; out (n, dim(table)) host float32: each id's weights; an unknown id reads the
  // table's default row (TableConfig::default_value, zeros unless configured).
  void lookup(const std::string& table, const int64_t* ids, int64_t n, float* out) const;
  // Every row of a table, ascending by key: keys (rows), weights (rows, dim).
  void rows(const std::string& table, std::vector<int64_t>& keys, std::vector<float>& weights) const;

 private:
  struct Table {
    TableConfig config;
    uint64_t seed = 0;
    std::unordered_map<int64_t, size_t> slot;  // key -> row index into weights
    std::vector<float> weights;                // (slots, dim)
    std::vector<size_t> free;                  // slots of removed rows
  };
  using Tables = std::map<std::string, Table, std::less<>>;
  struct Loaded {
    ExportName name;
    std::vector<ExportPart> parts;
  };
  static Loaded load(const std::string& export_dir);
  // The exclusive lock held: applies a loaded export.
  void apply_locked(Loaded& loaded);
  const Table& table(const std::string& name) const;  // shared lock held
  static void lookup_locked(const Table& t, const int64_t* ids, int64_t n, float* out);
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
