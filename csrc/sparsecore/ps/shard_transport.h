// ShardTransport: how a PsClient reaches the global shards of its cluster. A call sends one
// request (method + payload segments) to one shard and returns a ShardCall to wait on; the
// client's methods are written once over it. Two implementations:
//  - RpcShardTransport: one rpc::RpcClient connection per global shard (remote servers);
//  - LocalShardTransport: the shards of an unstarted PsServer in this process, served on the
//    caller's thread through the server's own handlers (PsServer::serve), one call at a time.
// Both run the same request and reply bytes through the same handlers, so embedded and remote
// give the same results and the same typed errors.
//
// Thread-safety: call() may come from several threads (the local transport serialises them).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/rpc/rpc_client.h"

namespace sparsecore::ps {

class PsServer;

// One request in flight (or already answered, for the local transport).
class ShardCall {
 public:
  ShardCall() = default;
  explicit ShardCall(rpc::RpcFuture future) : future_(std::move(future)), valid_(true) {}
  static ShardCall answered(rpc::Response response);
  static ShardCall failed(std::exception_ptr error);
  bool valid() const { return valid_; }
  // The reply, or the call's error (RpcError family or the handler's typed error). Once.
  rpc::Response get();

 private:
  rpc::RpcFuture future_;
  rpc::Response response_;
  std::exception_ptr error_;
  bool valid_ = false;
  bool local_ = false;
};

class ShardTransport {
 public:
  virtual ~ShardTransport() = default;
  virtual int num_shards() const = 0;
  // Sends `method` with `payload` (segments, read before call returns) to global shard
  // `shard`. recv_into (host memory kept alive until get()): where the reply's payload goes,
  // segment after segment, when it fits in their total length (Response::in_caller_buffer).
  virtual ShardCall call(int shard, uint16_t method, std::span<const iovec> payload,
                         std::span<const iovec> recv_into = {}) = 0;
  // Ends every connection (rpc::RpcClient::close); later calls fail with RpcConnectionError.
  // Nothing to end in process.
  virtual void close() {}
};

class RpcShardTransport final : public ShardTransport {
 public:
  // addresses: "host:port" of every server, in server-index order; each is asked how many
  // shards it has (every server must have as many) and one connection opens per shard.
  RpcShardTransport(const std::vector<std::string>& addresses, rpc::ClientOptions options);
  int num_shards() const override { return static_cast<int>(conns_.size()); }
  ShardCall call(int shard, uint16_t method, std::span<const iovec> payload, std::span<const iovec> recv_into) override;
  void close() override {
    for (auto& c : conns_) c->close();
  }

 private:
  std::vector<std::unique_ptr<rpc::RpcClient>> conns_;  // by global shard
};

class LocalShardTransport final : public ShardTransport {
 public:
  explicit LocalShardTransport(PsServer& server);
  int num_shards() const override;
  ShardCall call(int shard, uint16_t method, std::span<const iovec> payload, std::span<const iovec> recv_into) override;

 private:
  PsServer& server_;
  std::mutex mutex_;
  PodVector<std::byte> request_;  // the payload gathered (under mutex_)
};

}  // namespace sparsecore::ps
