// PsServer: the parameter server's methods (ps_protocol.h) over an RpcServer with one reactor
// per shard; reactor i owns shard i, so requests for a shard are served on its thread without
// locks. Constructed but not started, it is the embedded server: PsClient drives its shards
// with plain calls and no socket.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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
  // Runs `work` on the snapshot thread and sends what it put in a reply (or the error it
  // threw) as the deferred reply of `request`, from the request's reactor; `then` runs on
  // that reactor first when `work` succeeded. Saves and restores go through here, so that
  // file I/O never stalls a reactor (reactor 0 also accepts every connection).
  void off_reactor(const rpc::Request& request, rpc::Reply& reply, std::function<void(rpc::Reply&)> work,
                   std::function<void()> then = nullptr);
  void snapshot_loop();
  struct ReactorState {  // owned by one reactor thread
    std::vector<rpc::DeferredReply> waiting_push;
    std::map<std::string, std::vector<rpc::DeferredReply>> barriers;
  };

  PsServerOptions options_;
  std::vector<std::unique_ptr<PsShard>> shards_;
  std::vector<ReactorState> reactor_state_;
  std::unique_ptr<rpc::RpcServer> rpc_;
  // The snapshot thread (started with the server) and its queue.
  std::thread snapshot_thread_;
  std::mutex snapshot_mutex_;
  std::condition_variable snapshot_cv_;
  std::deque<std::function<void()>> snapshot_jobs_;
  bool snapshot_stop_ = false;
};

}  // namespace sparsecore::ps
