// PsClient: a worker's view of the parameter servers. Ids are deduplicated before they leave
// the worker and split by owning shard (ps_protocol.h); the requests to all shards go out
// together and the replies are read straight into per-shard buffers. The same client drives
// an embedded PsServer's shards with plain calls (no socket), so training code does not
// change between the two.
//
// Thread-safety: calls may come from several threads; embedded calls are serialised.
//
// Synchronous mode (num_workers > 0): push() returns once every worker pushed that step of
// the table. When a worker leaves or rejoins meanwhile the step is abandoned and push (or
// barrier) throws RpcStepAborted on every worker: roll back to the last snapshot together.
//
// Cost: a pull is one pass of dedup + routing over an open-addressing index kept between
// calls, one writev per shard and one read into the rows; with one shard and no duplicate
// ids the ids go out of, and the rows come straight into, the caller's arrays.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/rpc_client.h"

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
};

// Ids of one call deduplicated (first-seen order) and grouped by owning shard (stable).
struct ShardedIds {
  PodVector<int64_t> unique;    // (num_unique)
  PodVector<int32_t> inverse;   // (n) index into unique
  PodVector<int64_t> grouped;   // (num_unique) unique ids ordered by shard; empty with one shard
  PodVector<int32_t> position;  // (num_unique) index of unique[u] in grouped
  std::vector<int64_t> starts;  // (total_shards + 1) shard g owns grouped[starts[g], starts[g+1])

  void build(const int64_t* ids, int64_t n, int total_shards);
  int64_t num_unique() const { return static_cast<int64_t>(unique.size()); }
  const int64_t* shard_ids(int g) const { return (grouped.empty() ? unique.data() : grouped.data()) + starts[g]; }
  int64_t shard_size(int g) const { return starts[g + 1] - starts[g]; }
  // Index of unique id u among the grouped rows.
  int32_t row_of(int32_t u) const { return grouped.empty() ? u : position[u]; }

 private:
  PodVector<int32_t> slots_;      // index into unique, -1 empty (power-of-two size >= 2n)
  PodVector<uint16_t> shard_of_;  // (num_unique)
};

class PsClient {
 public:
  struct CallScratch;
  // A pull in flight (pull_async): wait() fills `out` or throws. Destroying it waits too.
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
    std::vector<rpc::RpcFuture> futures_;
    float* out_ = nullptr;
    int64_t n_ = 0;
    size_t dim_ = 0;
    bool direct_ = false;  // rows arrive in `out` itself
  };

  // Remote: "host:port" of every server, in server-index order.
  PsClient(const std::vector<std::string>& addresses, PsClientOptions options);
  // Embedded: the shards of a PsServer that is not listening.
  PsClient(PsServer& embedded, PsClientOptions options);
  ~PsClient();

  int total_shards() const { return total_shards_; }
  void create_table(const TableConfig& config, uint64_t seed);
  int dim(const std::string& table) const;
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
  void kv_put(const std::string& key, const Json& value);
  Json kv_get(const std::string& key);
  // Returns once `count` callers entered barrier `name` (a synchronous worker's rank goes
  // with it: the barrier is aborted with RpcStepAborted when a worker leaves or re-enters).
  void barrier(const std::string& name, int count);
  std::vector<float> dense_pull(const std::string& name, int64_t size, float init);
  void dense_push(const std::string& name, const float* grads, int64_t size, float lr);
  Json stats();

 private:
  // Sends `method` with a JSON payload to every shard (or shard `only`) and returns replies.
  std::vector<Json> call_json(uint16_t method, const Json& body, int only = -1);
  std::unique_ptr<CallScratch> take_scratch();
  void give_back(std::unique_ptr<CallScratch> scratch);

  PsClientOptions options_;
  std::mutex scratch_mutex_;
  std::vector<std::unique_ptr<CallScratch>> free_scratch_;  // reused between calls
  int total_shards_ = 0;
  std::vector<std::unique_ptr<rpc::RpcClient>> conns_;  // by global shard (remote)
  PsServer* embedded_ = nullptr;
  std::mutex embedded_mutex_;
  std::map<std::string, int> dims_;
  std::mutex dims_mutex_;
};

}  // namespace sparsecore::ps
