// PsClient: a worker's view of the parameter servers. A step's rows of several tables travel
// in one request per server shard (pull_tables, push_tables): ids are split by owning shard
// (ps_protocol.h), the requests to all shards go out together and the replies are read into
// one buffer per call. The client reaches the shards through a ShardTransport
// (shard_transport.h): remote servers over RPC, or the shards of an embedded PsServer in
// this process with the same requests and the same handlers, so training code and results do
// not change between the two.
//
// Thread-safety: calls may come from several threads; embedded calls are serialised.
//
// Bounded staleness (num_workers > 0, staleness >= 0): pushes apply at once; a pull or push
// of a worker too far ahead waits on the server, up to the call's deadline.
//
// Synchronous mode (num_workers > 0, no staleness): push() returns once every worker pushed that step of
// the table. When a worker leaves or rejoins meanwhile the step is abandoned and push (or
// barrier) throws RpcStepAborted on every worker: roll back to the last snapshot together.
//
// Cost: a pull is one pass of dedup + routing per table over an open-addressing index kept
// between calls, one writev per shard and one read of the rows. A table whose ids are distinct
// and already grouped by shard (always so with one shard and distinct ids) has its ids sent
// from, and its rows read straight into, the caller's arrays; the others' rows are read into
// one buffer and copied out.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/ps/shard_transport.h"
#include "sparsecore/ps/sharded_ids.h"

namespace sparsecore::ps {

struct PsClientOptions {
  std::string token;
  // Deadline of every call (ms), the blocking ones included: a pull, a synchronous push that
  // waits for the other workers, a barrier. Past it the call raises RpcTimeout. 0: none.
  int timeout_ms = 300000;
  int connect_timeout_ms = 5000;
  uint32_t worker = 0;
  uint32_t num_workers = 0;  // > 0: synchronous training with this many workers
  int heartbeat_ms = 0;      // see rpc::ClientOptions::heartbeat_ms (0: off)
  int poll_us = 0;           // see rpc::ClientOptions::poll_us (0: sleep at once)
  // >= 0 with num_workers > 0: bounded staleness instead of synchronous steps. Pushes apply
  // at once, and a server holds this worker's pulls and pushes while it is more than
  // `staleness` steps ahead of the slowest worker (ps_server.h). < 0: off.
  int64_t staleness = -1;
};

// One table's part of pull_tables / push_tables. Host memory, the caller's.
struct TableSlice {
  std::string table;
  const int64_t* ids = nullptr;  // (n) distinct (the caller dedups)
  int64_t n = 0;
  float* rows = nullptr;         // pull: (n, dim) filled in id order
  const float* grads = nullptr;  // push: (n, dim) each id's summed gradient
  // Optional (total_shards() + 1): the ids are already grouped by owning shard (a batch plan
  // with the client's shard count), shard g's at [shard_starts[g], shard_starts[g + 1]); the
  // client then neither hashes nor copies them.
  const int64_t* shard_starts = nullptr;
};

class PsClient {
 public:
  struct CallScratch;
  // A pull in flight (pull_async, pull_tables): wait() fills the rows or throws. Destroying
  // it waits too.
  class PendingPull {
   public:
    PendingPull() = default;
    PendingPull(PendingPull&&) noexcept;
    PendingPull& operator=(PendingPull&&) noexcept;
    ~PendingPull();
    void wait();
    bool valid() const { return client_ != nullptr; }

   private:
    friend class PsClient;
    PsClient* client_ = nullptr;
    std::unique_ptr<CallScratch> scratch_;
    std::vector<ShardCall> calls_;  // by global shard
  };

  // Remote: "host:port" of every server, in server-index order.
  PsClient(const std::vector<std::string>& addresses, PsClientOptions options);
  // Embedded: the shards of a PsServer that is not listening (one asynchronous worker).
  PsClient(PsServer& embedded, PsClientOptions options);
  ~PsClient();

  int total_shards() const { return total_shards_; }
  // Ends the connections to every server now, from any thread: the servers count this worker
  // gone at once (a synchronous step it leaves is abandoned and the other workers' calls
  // waiting on it raise RpcStepAbortedError instead of waiting out their deadline). Calls in
  // flight and later ones raise RpcConnectionError. Nothing to end for an embedded server.
  void close() { transport_->close(); }
  // The dtype of `table`'s values on the wire ("" : every table without its own): "float32"
  // (the default) or "float16" - half the bytes of every pull and push of that table. Rows
  // stay float32 on the servers; what a pull returns is each row rounded to float16 (to
  // nearest even; a value beyond +-65504 reads as +-inf) and what a push applies is each
  // summed gradient rounded so (a push whose gradient would round to +-inf is refused).
  void set_wire_dtype(const std::string& table, const std::string& dtype);
  std::string wire_dtype(const std::string& table) const;
  void create_table(const TableConfig& config, uint64_t seed);
  int dim(const std::string& table) const;
  // Rows of several tables: one request per server shard that owns any id (none when every
  // slice is empty), all in flight at once; returns once the requests are sent (the ids may
  // be reused at once, the rows must stay alive until wait()). wait() fills every slice's
  // rows (n, dim), in the slice's id order. train: unknown ids are inserted; otherwise they
  // read the table's default row. A table may appear in several slices.
  PendingPull pull_tables(const std::vector<TableSlice>& slices, bool train);
  // Summed gradients of several tables' distinct ids: one request per server shard (every
  // shard, so that each table's step advances, and in synchronous mode completes,
  // everywhere), all in flight; returns once applied (synchronous: once every worker's step
  // applied). A table appears in at most one slice; a repeated id is refused
  // (InvalidArgument naming the table). A shard applies its tables all or none.
  void push_tables(const std::vector<TableSlice>& slices, int64_t step);
  // ids (n) any values, duplicates allowed; out (n, dim).
  void pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out);
  // The same, returning once the requests are sent: `ids` may be reused at once, `out` must
  // stay alive until wait(). Many pulls may be in flight on one client.
  PendingPull pull_async(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out);
  // ids (n) with grads (n, dim); duplicate ids have their gradients summed in position order.
  void push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step);
  // Snapshot `name` (a plain name, e.g. "step-7") of every shard, under the servers'
  // snapshot directory: every shard writes its part, then one commit switches the whole in,
  // so a failed or interrupted save leaves the previous snapshot of that name. Refuses to
  // replace one unless `overwrite`. Returns `name`.
  std::string save(const std::string& name, int64_t step, bool overwrite);
  // Every shard takes the rows of snapshot `name` ("": the newest complete step-<k>) that it
  // owns now; all shards are read and checked before any is replaced. Returns its step.
  int64_t restore(const std::string& name);
  // Asks the server of shard 0 (the servers share their snapshot directory) to remove old
  // snapshots of the series `prefix` (ps_snapshot.h prune_snapshots); returns their names.
  std::vector<std::string> prune_snapshots(const std::string& prefix, int64_t keep,
                                           const std::vector<std::string>& protect);
  // An export of every shard at `version` (the workers' step; call it between steps, after
  // a barrier when several workers train): each shard writes its part of
  // <export dir>/<stream>/full-<version> (delta: delta-<since>-<version>) under the servers'
  // export directory (serving/export_format.h), and the parts together are one export.
  // dtype "fp32" | "fp16" | "int8" | "int4". Returns {"rows", "deleted"} summed over the shards.
  Json export_rows(const std::string& stream, bool delta, int64_t since, int64_t version, const std::string& dtype);
  void kv_put(const std::string& key, const Json& value);
  Json kv_get(const std::string& key);
  // Returns once `count` callers entered barrier `name` (a synchronous worker's rank goes
  // with it: the barrier is aborted with RpcStepAborted when a worker leaves or re-enters).
  void barrier(const std::string& name, int count);
  // A dense variable's values from global shard `shard` (created there with `init` when
  // absent and size > 0).
  std::vector<float> dense_pull(const std::string& name, int64_t size, float init, int shard = 0);
  void dense_push(const std::string& name, const float* grads, int64_t size, float lr);
  // A dense variable with a server-side optimizer on global shard `shard`: created from
  // `values` (size) unless it exists alike (optimizer_json: an OptimizerConfig's JSON).
  void dense_create(int shard, const std::string& name, const float* values, int64_t size,
                    const std::string& optimizer_json);
  // Pushes its gradients (size) for `step` and fills `out` (size) with its values after the
  // update (synchronous: after every worker's gradients of the step were summed and applied).
  void dense_step(int shard, const std::string& name, const float* grads, int64_t size, int64_t step, float* out);
  Json stats();
  // Removes ids (n, any values, duplicates allowed) from table `table` on the shards that own
  // them; returns how many were present.
  int64_t erase(const std::string& table, const int64_t* ids, int64_t n);
  // Every shard removes the rows of `table` that its expiry rules name now; returns how many.
  int64_t expire(const std::string& table);

 private:
  // Sends `method` with a JSON payload to every shard (or shard `only`) and returns replies.
  std::vector<Json> call_json(uint16_t method, const Json& body, int only = -1);
  // push_tables; sum_duplicates: a repeated id's gradients are summed (push) instead of refused.
  void push_slices(const std::vector<TableSlice>& slices, int64_t step, bool sum_duplicates);
  std::unique_ptr<CallScratch> take_scratch();
  void give_back(std::unique_ptr<CallScratch> scratch);

  PsClientOptions options_;
  std::unique_ptr<ShardTransport> transport_;
  std::mutex scratch_mutex_;
  std::vector<std::unique_ptr<CallScratch>> free_scratch_;  // reused between calls
  int total_shards_ = 0;
  bool wire_half(const std::string& table) const;
  std::map<std::string, int> dims_;
  std::map<std::string, bool> wire_half_;  // by table; "" for the others
  std::mutex dims_mutex_;
};

}  // namespace sparsecore::ps
