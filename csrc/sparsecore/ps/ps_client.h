// PsClient: a worker's view of the parameter servers. Ids are deduplicated before they leave
// the worker and split by owning shard (ps_protocol.h); the requests to all shards go out
// together and the replies are read straight into per-shard buffers. The same client drives
// an embedded PsServer's shards with plain calls (no socket), so training code does not
// change between the two.
//
// Thread-safety: calls may come from several threads; embedded calls are serialised.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/rpc_client.h"

namespace sparsecore::ps {

struct PsClientOptions {
  std::string token;
  int timeout_ms = 0;      // per call (0: none)
  int connect_timeout_ms = 5000;
  uint32_t worker = 0;
  uint32_t num_workers = 0;  // > 0: synchronous training with this many workers
};

class PsClient {
 public:
  // Remote: "host:port" of every server, in server-index order.
  PsClient(const std::vector<std::string>& addresses, PsClientOptions options);
  // Embedded: the shards of a PsServer that is not listening.
  PsClient(PsServer& embedded, PsClientOptions options);

  int total_shards() const { return total_shards_; }
  void create_table(const TableConfig& config, uint64_t seed);
  int dim(const std::string& table) const;
  // ids (n) any values, duplicates allowed; out (n, dim).
  void pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out);
  // ids (n) with grads (n, dim); duplicate ids have their gradients summed in position order.
  void push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step);
  // Writes <root>/step-<step> on every shard; returns that directory.
  std::string save(const std::string& root, int64_t step, bool overwrite);
  int64_t restore(const std::string& snapshot_dir);
  void kv_put(const std::string& key, const Json& value);
  Json kv_get(const std::string& key);
  void barrier(const std::string& name, int count);
  std::vector<float> dense_pull(const std::string& name, int64_t size, float init);
  void dense_push(const std::string& name, const float* grads, int64_t size, float lr);
  Json stats();

 private:
  // Sends `method` with a JSON payload to every shard (or shard `only`) and returns replies.
  std::vector<Json> call_json(uint16_t method, const Json& body, int only = -1);
  PsClientOptions options_;
  int total_shards_ = 0;
  std::vector<std::unique_ptr<rpc::RpcClient>> conns_;  // by global shard (remote)
  PsServer* embedded_ = nullptr;
  std::mutex embedded_mutex_;
  std::map<std::string, int> dims_;
  std::mutex dims_mutex_;
};

}  // namespace sparsecore::ps
