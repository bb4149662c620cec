// PsServer: the parameter server's methods (ps_protocol.h) over an RpcServer with one reactor
// per shard; reactor i owns shard i, so requests for a shard are served on its thread without
// locks. Constructed but not started, it is the embedded server: PsClient drives its shards
// with plain calls and no socket.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sparsecore/ps/ps_shard.h"
#include "sparsecore/rpc/rpc_server.h"

namespace sparsecore::ps {

struct PsServerOptions {
  rpc::ServerOptions rpc;  // rpc.num_reactors = shards of this server
  int server_index = 0;
  int num_servers = 1;
  int64_t max_ids_per_request = 1 << 24;
  // Where snapshots live (ps_snapshot.h). Clients name snapshots, never paths; empty: save
  // and restore are refused.
  std::string snapshot_dir;
};

class PsServer {
 public:
  explicit PsServer(PsServerOptions options);
  ~PsServer();

  void start();  // listen (rpc.address:rpc.port)
  void stop();
  int port() const { return rpc_ ? rpc_->port() : 0; }
  int num_shards() const { return static_cast<int>(shards_.size()); }
  PsShard& shard(int i) { return *shards_.at(i); }
  const PsServerOptions& options() const { return options_; }
  // Restores every shard of this server from snapshot `name` under options().snapshot_dir
  // (before start()): every shard is read and checked before any is replaced.
  int64_t restore(const std::string& name);

 private:
  void register_methods();
  struct ReactorState {  // owned by one reactor thread
    std::vector<rpc::DeferredReply> waiting_push;
    std::map<std::string, std::vector<rpc::DeferredReply>> barriers;
  };

  PsServerOptions options_;
  std::vector<std::unique_ptr<PsShard>> shards_;
  std::vector<ReactorState> reactor_state_;
  std::unique_ptr<rpc::RpcServer> rpc_;
};

}  // namespace sparsecore::ps
