// RpcClient: one connection to one reactor of an RpcServer, with blocking and future-based
// calls and many requests in flight, matched by id.
//
// There is no background thread: a caller waiting for its reply reads the socket for every
// caller (one at a time) and hands out the replies it finds, so a lone blocking call costs
// one wake-up, and pipelined calls from one thread need no thread at all. A reply may be read
// straight into memory the caller supplied (recv_into), e.g. the rows of a pull, scattered over
// several buffers when the caller gives several (the rows of several tables).
//
// Failures: RpcConnectionError once the peer is gone (every pending and later call fails with
// it), RpcTimeout after the call's deadline, and the server's typed errors (InvalidArgument,
// NotFound, RpcUnknownMethod, ...) as thrown there.
//
// Thread-safety: all methods may be called from many threads at once.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/rpc/frame.h"
#include "sparsecore/rpc/rpc_server.h"
#include "sparsecore/rpc/socket.h"

namespace sparsecore::rpc {

struct ClientOptions {
  std::string token;
  int reactor = 0;  // which server reactor serves this connection
  int connect_timeout_ms = 5000;
  int call_timeout_ms = 0;  // default deadline of a call (0: none)
  // > 0: a waiting caller pings a server silent this long and gives the connection up
  // (RpcConnectionError) when the server stays silent as long again. It must exceed the
  // longest handler (a reactor busy in one answers no ping). 0: off.
  int heartbeat_ms = 0;
  uint64_t max_frame_bytes = 1ull << 32;
  // > 0: a caller waiting for a reply polls the socket for up to poll_us microseconds before
  // it sleeps (see ServerOptions::poll_us): a reply that comes sooner is read without a
  // wakeup. 0: sleep in poll() at once.
  int poll_us = 0;
};

// A reply: in the caller's buffer (`in_caller_buffer`, `bytes` long) or in `data`.
struct Response {
  size_t bytes = 0;
  bool in_caller_buffer = false;
  PodVector<std::byte> data;
};

class RpcClient;

namespace detail {
struct CallState {
  uint64_t id = 0;
  uint16_t method = 0;
  std::vector<iovec> recv_into;  // where an ok reply's payload goes when it fits, in order
  size_t recv_capacity = 0;      // their total length
  Clock::time_point deadline = Clock::time_point::max();
  uint32_t timeout_ms = 0;
  bool done = false;
  bool claimed = false;  // its payload is being read by a reader right now
  bool lost = false;     // the connection failed before the reply came
  Status status = Status::kOk;
  std::string error;
  Response response;
};
}  // namespace detail

class RpcFuture {
 public:
  RpcFuture() = default;
  bool valid() const { return state_ != nullptr; }
  bool ready() const;
  // Waits for the reply (reading the socket if no one else is) and returns it, or throws.
  Response get();

 private:
  friend class RpcClient;
  RpcFuture(RpcClient* c, std::shared_ptr<detail::CallState> s) : client_(c), state_(std::move(s)) {}
  RpcClient* client_ = nullptr;
  std::shared_ptr<detail::CallState> state_;
};

class RpcClient {
 public:
  // Connects and authenticates. Throws RpcConnectionError / RpcTimeout / RpcAuthError.
  RpcClient(const std::string& host, int port, ClientOptions options = {});
  ~RpcClient();
  RpcClient(const RpcClient&) = delete;
  RpcClient& operator=(const RpcClient&) = delete;

  // Sends `payload` (segments written back to back with one writev, not copied) and returns
  // at once. timeout_ms: -1 = the client default, 0 = none. recv_into/recv_capacity: where
  // the reply payload goes when it fits (host memory the caller keeps alive until get()).
  RpcFuture call_async(uint16_t method, std::span<const iovec> payload, int timeout_ms = -1, void* recv_into = nullptr,
                       size_t recv_capacity = 0);
  // The same, with the reply's payload scattered over `recv_into` (segments filled in order)
  // when it fits in their total length.
  RpcFuture call_async(uint16_t method, std::span<const iovec> payload, int timeout_ms,
                       std::span<const iovec> recv_into);
  Response call(uint16_t method, std::span<const iovec> payload, int timeout_ms = -1, void* recv_into = nullptr,
                size_t recv_capacity = 0) {
    return call_async(method, payload, timeout_ms, recv_into, recv_capacity).get();
  }
  void ping(int timeout_ms = -1) { call(kMethodPing, {}, timeout_ms); }
  // The server's TransportStats as JSON (connections, refusals, accept back-offs, memory).
  std::string transport_stats(int timeout_ms = -1);

  int num_reactors() const { return num_reactors_; }
  const std::string& peer() const { return peer_; }
  bool connected() const;
  // Ends the connection now, from any thread: the server sees it close at once, and calls in
  // flight and later ones fail with RpcConnectionError ("client closed"). The descriptor is
  // shut down, not closed, so a thread still reading or sending on it is not handed another
  // one; it is closed with the client.
  void close();

 private:
  friend class RpcFuture;
  void handshake(const ClientOptions& options);
  Response wait(detail::CallState& state);
  // One round of reading: waits up to `deadline` for bytes, hands out complete replies.
  void read_round(Clock::time_point deadline);
  void deliver(const FrameHeader& h, const std::byte* payload);
  Clock::time_point heartbeat(Clock::time_point deadline);
  void received() {
    last_received_ = Clock::now();
    ping_sent_ = {};
  }
  enum class DirectRead { kNotApplicable, kDone, kBuffered };
  DirectRead read_direct();
  void recv_exact(std::byte* dst, size_t bytes);
  // recv_exact of `bytes` into `segs`, starting `offset` bytes into them.
  void recv_exact(const std::vector<iovec>& segs, size_t offset, size_t bytes);
  // Waits until the socket is readable or `deadline`, polling without sleeping for up to
  // poll_us_ first. Returns poll()'s result.
  int wait_readable(Clock::time_point deadline);
  void send_frame(const FrameHeader& h, std::span<const iovec> payload);
  void fail_all(const std::string& reason);  // caller holds mu_
  void read_frame_blocking(FrameHeader* h, PodVector<std::byte>* payload, int timeout_ms);

  std::string peer_;
  UniqueFd socket_;
  FrameReader reader_;
  int num_reactors_ = 1;
  int default_timeout_ms_ = 0;
  uint64_t max_frame_bytes_ = 0;
  int heartbeat_ms_ = 0;
  int poll_us_ = 0;
  // Touched only by the thread that holds the reader role (reading_).
  Clock::time_point last_received_;
  Clock::time_point ping_sent_;  // {}: no ping outstanding
  std::atomic<uint64_t> next_id_{1};

  mutable std::mutex mu_;  // pending_, reading_, broken_, call states
  std::condition_variable cv_;
  std::unordered_map<uint64_t, std::shared_ptr<detail::CallState>> pending_;
  bool reading_ = false;
  bool broken_ = false;
  std::string broken_reason_;
  std::mutex send_mu_;
};

}  // namespace sparsecore::rpc
