// PsServer: the parameter server's methods (ps_protocol.h) over an RpcServer with one reactor
// per shard; reactor i owns shard i, so requests for a shard are served on its thread without
// locks. Constructed but not started, it is the embedded server: PsClient drives its shards
// with plain calls and no socket.
//
// Synchronous training: a push waits (its reply deferred) until every worker pushed the same
// step of the same table, and is released with that table's step alone. A connection that
// joined (kJoin, sent by a synchronous client to every shard when it connects) or sent a
// synchronous push or a barrier with its rank is a member. The shard's incomplete steps are
// abandoned - nothing of them applied, every waiting caller told with RpcStepAborted
// (Status::kStepAborted) at once instead of waiting for a worker that will not come - when
//  - a member leaves: its last connection to the shard closes (its barriers are aborted too,
//    and later pushes are refused the same way until that rank joins again);
//  - a rank joins again (a restarted worker) or pushes a step that cannot belong to the
//    incomplete one (PsShard::push);
//  - the shard is restored from a snapshot.
// Workers then roll back to the last snapshot together.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
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
  struct Waiter {
    rpc::DeferredReply reply;
    int64_t worker = -1;  // rank of a synchronous worker, -1 when unknown
  };
  struct Barrier {
    int64_t count = 0;
    std::vector<Waiter> waiting;
  };
  struct ReactorState {                                                   // owned by one reactor thread
    std::map<std::string, std::vector<rpc::DeferredReply>> waiting_push;  // by table
    std::map<std::string, Barrier> barriers;                              // by name
    std::map<uint64_t, uint32_t> members;  // connection -> worker rank (synchronous workers)
    std::set<uint32_t> left;               // ranks whose last connection closed, not back yet
    // Row requests this shard received (stats: "pull_requests", "push_requests"), counted
    // as they arrive, refused ones included.
    int64_t pull_requests = 0;
    int64_t push_requests = 0;
  };
  // Reactor thread only. Fails every deferred push of `table` (all tables when empty) with
  // `status` (kStepAborted unless said), saying `why`.
  void fail_pushes(int reactor, const std::string& table, const std::string& why,
                   rpc::Status status = rpc::Status::kStepAborted);
  void fail_barriers(int reactor, const std::string& why);
  // Abandons the shard's incomplete steps and tells their waiting workers.
  void abort_steps(int reactor, const std::string& why);
  void connection_closed(int reactor, uint64_t connection);
  // Records `connection` as rank `worker`'s; a rank that left or has another connection here
  // has come back (restarted): the incomplete steps are abandoned.
  void join(int reactor, uint64_t connection, uint32_t worker);
  void barrier(const rpc::Request& r, rpc::Reply& reply);

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
