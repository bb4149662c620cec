// PsServer: the parameter server's methods (ps_protocol.h) over an RpcServer with one reactor
// per shard; reactor i owns shard i, so requests for a shard are served on its thread without
// locks. Constructed but not started, it is the embedded server: PsClient drives its shards
// with plain calls and no socket.
//
// Unstarted, the same methods serve in-process calls (serve(), used by the embedded transport
// of shard_transport.h): one caller at a time, and nothing that would wait for another worker.
//
// Synchronous training: a push waits (its reply deferred) until every worker pushed the same
// step of every table it carries, and is released once each of its tables' steps completed. A connection that
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
//
// Bounded staleness (SSP): workers that join with a staleness bound (kJoin {worker,
// num_workers, staleness}) push asynchronously, and each shard holds a pull or push of a
// worker that is more than `staleness` steps ahead of the slowest worker present
// (staleness_gate.h) until that one catches up; a held request whose deadline passes is
// answered kDeadlineExceeded, one whose connection closes is dropped.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/ps/ps_shard.h"
#include "sparsecore/ps/staleness_gate.h"
#include "sparsecore/rpc/rpc_server.h"

namespace sparsecore::ps {

// One shard's part of an export (serving/export_format.h): where, what, and which part.
struct ExportPartRequest {
  bool delta = false;
  int64_t since = 0;
  int64_t version = 0;
  std::string dtype;  // "fp32" | "fp16" | "int8" | "int4"
  int part = 0;       // the shard's global index
  int num_parts = 1;  // the cluster's shards
};
// Writes a part into the stream directory (crash-safe); the format belongs to the serving
// layer, which provides the writer (serving::ps_export_writer), so this layer stays below it.
using ExportPartWriter = std::function<void(const std::string& stream_dir, const ExportPartRequest& request,
                                            std::vector<ExportTable>& tables)>;

struct PsServerOptions {
  rpc::ServerOptions rpc;  // rpc.num_reactors = shards of this server
  int server_index = 0;
  int num_servers = 1;
  int64_t max_ids_per_request = 1 << 24;
  // Where snapshots live (ps_snapshot.h). Clients name snapshots, never paths; empty: save
  // and restore are refused.
  std::string snapshot_dir;
  // > 0: after each save this server commits, all but the newest `keep_snapshots` complete
  // step-<k> snapshots are removed (prune_snapshots); 0 keeps them all.
  int64_t keep_snapshots = 0;
  // Where exports live: a client names a stream, its parts go to export_dir/<stream>. Empty
  // (or no writer): exports are refused.
  std::string export_dir;
  ExportPartWriter export_writer;
  // Where tables keep their rows (ps/device_rows.h): empty, the shards' own EmbeddingTables;
  // e.g. cuda::device_rows_factory, a GPU (sparsecore server --device cuda).
  DeviceRowsFactory device_rows;
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
  // Serves one request for shard `shard` on the calling thread as its reactor would, for a
  // server that is not started: the reply (or its error status) is left in `reply`; a handler
  // may also throw. Calls must not overlap.
  void serve(int shard, uint16_t method, std::span<const std::byte> payload, rpc::Reply& reply);
  // What a kStats request answers, for every shard in order, from any thread (the metrics
  // endpoint): read on each shard's reactor when the server runs, so a shard busy for longer
  // than timeout_ms (a long save) gives a null entry instead of a wait. Not started: read
  // directly (no call may overlap, as for serve()). Must not overlap stop().
  std::vector<Json> shard_stats(int timeout_ms);
  // The transport's counters (zeros when not started); any thread, not overlapping stop().
  rpc::TransportStats transport_stats() const;

 private:
  Json stats_of(int shard) const;  // the kStats reply of one shard (its reactor's thread)
  void add_methods();              // fills methods_
  void register_methods();         // hands methods_ to the RpcServer
  // A push of `updates` on the request's shard: applied, or deferred until every worker's
  // push completed the step of each of its tables (PsShard::push_tables).
  void push(const rpc::Request& r, rpc::Reply& reply, const std::vector<PsShard::TableUpdate>& updates, int64_t step,
            uint32_t worker, uint32_t num_workers);
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
  // A deferred push reply, sent once every table it waits on completed its step (or failed
  // as soon as one of them is aborted).
  struct WaitingPush {
    rpc::DeferredReply reply;
    size_t outstanding = 0;  // tables whose step has not completed yet
    bool answered = false;
  };
  // A pull or push held by the staleness gate: its payload copied, its reply deferred.
  struct HeldRequest {
    uint16_t method = 0;
    rpc::DeferredReply reply;
    uint64_t connection = 0;
    uint32_t worker = 0;
    rpc::Clock::time_point deadline;
    std::vector<std::byte> payload;
  };
  struct ReactorState {  // owned by one reactor thread
    // Pushes waiting on each table; one that waits on several tables is listed under each.
    std::map<std::string, std::vector<std::shared_ptr<WaitingPush>>, std::less<>> waiting_push;
    std::map<std::string, Barrier> barriers;  // by name
    std::map<uint64_t, uint32_t> members;     // connection -> worker rank (synchronous workers)
    std::set<uint32_t> left;                  // ranks whose last connection closed, not back yet
    // Row requests this shard received (stats: "pull_requests", "push_requests"), counted
    // as they arrive, refused ones included.
    int64_t pull_requests = 0;
    int64_t push_requests = 0;
    StalenessGate gate;
    // Synchronous dense steps waiting for the other workers, by variable.
    std::map<std::string, std::vector<rpc::DeferredReply>, std::less<>> dense_waiting;
    std::vector<HeldRequest> held;  // in arrival order
    bool releasing = false;         // release_held is running (a send may re-enter it)
    bool release_again = false;
  };
  // The handler of a pull or push (`push`: it advances the worker's clock) behind the
  // staleness gate: a member worker too far ahead has its request held.
  rpc::Handler gated(rpc::Handler handler, bool push);
  // Reactor thread only: runs the held requests the gate admits now, answers the expired
  // ones, drops those of closed connections.
  void release_held(int reactor);
  void add_dense_methods();  // kDenseCreate, kDenseStep (ps_server_dense.cpp)
  // Reactor thread only: abandons the shard's incomplete dense steps and fails their waiters.
  void fail_dense_steps(int reactor, const std::string& why);
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
  std::map<uint16_t, rpc::Handler> methods_;
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
