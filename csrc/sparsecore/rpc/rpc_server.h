// RpcServer: one reactor thread per configured core over epoll, in the manner of Seastar.
//
// Each reactor owns its connections and whatever the application attaches to it (the ps
// layer attaches shards): handlers run on the reactor thread that owns the connection, one
// request at a time, so they touch reactor-owned data without locks. A client chooses its
// reactor in the handshake; reactor 0 accepts, authenticates, and hands the connection to
// the chosen reactor through an SPSC ring (the only cross-reactor traffic).
//
// Per connection: frames are read into one buffer that grows to the largest frame (bounded by
// max_frame_bytes) and handlers see their payload in place; replies are queued and written
// with writev, many frames per call. When queued replies exceed the memory budget the
// reactor stops reading that connection until they drain (backpressure). Requests whose
// deadline passed before they ran are answered kDeadlineExceeded. A bad magic/version/flags
// or an oversized frame gets an error reply and the connection is closed; an unknown method
// gets an error reply and the connection keeps serving. Nothing a peer sends stops the
// server serving the others.
//
// What a peer can make the server hold (see ServerOptions):
// - Before it authenticates, a connection may send one kMethodAuth request of at most
//   kMaxHandshakePayloadBytes; anything else (another method, a response, a larger frame)
//   closes it before any buffer is sized for it, and it must finish the handshake within
//   handshake_timeout_ms. A connection buffers at most a few KiB until then.
// - After it authenticates, the payload of a frame larger than a connection's small resident
//   buffer is reserved against memory_budget_bytes, shared by every connection of the server,
//   before it is read; a frame that does not fit is answered kBusy, its bytes are skipped,
//   and the connection keeps serving. The reservation is returned once the frame is handled.
// - A reply larger than max_frame_bytes is replaced by a kFrameTooLarge error (handlers that
//   can size their reply should refuse before allocating it).
// - Running out of memory (std::bad_alloc) in a handler is an error reply; anywhere else in
//   a reactor it closes that connection. The reactor keeps serving the others.
// - A connection is closed on EOF or reset (once the peer has shut its side, reads go on
//   until they meet the EOF, even after a short read), when it stays
//   silent past idle_timeout_ms with no request in progress, or when it is unauthenticated
//   past handshake_timeout_ms. When accept() fails for lack of descriptors or memory, reactor
//   0 stops watching the listener for a short back-off (counted in TransportStats) instead
//   of retrying at once, and accepts again once descriptors are free.
//
// Thread-safety: register_method before start(); stop() from any thread (idempotent).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/rpc/frame.h"

namespace sparsecore::rpc {

struct ServerOptions {
  std::string address = "127.0.0.1";  // loopback unless told otherwise
  int port = 0;                       // 0: any free port (see RpcServer::port())
  int num_reactors = 1;
  bool pin_threads = false;                         // pin reactor i to CPU i (mod cores)
  std::string token;                                // non-empty: clients must prove they know it (HMAC)
  uint64_t max_frame_bytes = 64ull << 20;           // largest payload accepted
  uint64_t connection_memory_bytes = 256ull << 20;  // queued replies before reads pause
  // Request payloads being received, over every connection of the server (see above). A
  // frame above it is always refused, so keep it >= max_frame_bytes.
  uint64_t memory_budget_bytes = 1ull << 30;
  // Close authenticated connections silent this long with no request in progress (0: never).
  // Off by default: clients do not reconnect on their own, and a worker may rightly stay
  // silent for long (evaluation, a slow data reader).
  int idle_timeout_ms = 0;
  // Close connections that have not authenticated this long after accept (0: never).
  int handshake_timeout_ms = 10'000;
  // Poll mode (Seastar's): > 0, a reactor that has had work in the last poll_us
  // microseconds polls its sockets without sleeping, so that a request arriving then finds
  // it running (no wakeup across cores, which costs tens of microseconds on virtual
  // machines); it sleeps once idle that long. It burns its core meanwhile: for servers
  // with cores of their own. 0: always sleep in epoll_wait.
  int poll_us = 0;
};

using Clock = std::chrono::steady_clock;

// What a handler sees. `payload` points into the connection's read buffer and is valid only
// during the call.
struct Request {
  uint16_t method = 0;
  uint64_t id = 0;
  int reactor = 0;
  uint64_t connection = 0;
  std::span<const std::byte> payload;
  Clock::time_point deadline = Clock::time_point::max();
};

// Identifies a reply that a handler postponed (Reply::defer) and completes later on the
// same reactor through Reactor::send_deferred.
struct DeferredReply {
  uint64_t connection = 0;
  uint64_t request_id = 0;
  uint16_t method = 0;
};

class Reply {
 public:
  // The reply's payload: handlers write results straight into it (it is sent as is).
  PodVector<std::byte> body;

  template <typename T>
  T* resize_as(size_t count) {
    body.resize(count * sizeof(T));
    return reinterpret_cast<T*>(body.data());
  }
  void append(const void* data, size_t bytes);
  void fail(Status status, const std::string& message);
  Status status() const { return status_; }

  // The reply will be sent later (e.g. when every worker's push of a step has arrived).
  DeferredReply defer();
  bool deferred() const { return deferred_; }

 private:
  friend class Reactor;
  Status status_ = Status::kOk;
  bool deferred_ = false;
  DeferredReply token_;
};

// Counters summed over the reactors (monotonic except the gauges open_connections and
// memory_reserved_bytes).
struct TransportStats {
  uint64_t connections_accepted = 0;
  uint64_t open_connections = 0;
  uint64_t frames_rejected = 0;     // bad frames, oversize frames, failed handshakes, unknown methods
  uint64_t accept_backoffs = 0;     // accept() failed for lack of descriptors/memory; listener paused
  uint64_t handshake_timeouts = 0;  // closed unauthenticated past handshake_timeout_ms
  uint64_t idle_timeouts = 0;       // closed silent past idle_timeout_ms
  uint64_t memory_refusals = 0;     // frames refused (kBusy) for lack of budget
  uint64_t out_of_memory = 0;       // std::bad_alloc (or a failed system call) outside handlers:
                                    // that connection closed
  uint64_t memory_reserved_bytes = 0;
  uint64_t memory_budget_bytes = 0;
  uint64_t requests = 0;        // request frames handled (handshakes and pings included)
  uint64_t error_replies = 0;   // replies with a non-ok status
  uint64_t bytes_received = 0;  // from every connection, frame headers included
  uint64_t bytes_sent = 0;
  std::string to_json() const;
};

class Reactor;
using Handler = std::function<void(const Request&, Reply&)>;

class RpcServer {
 public:
  explicit RpcServer(ServerOptions options);
  ~RpcServer();
  RpcServer(const RpcServer&) = delete;
  RpcServer& operator=(const RpcServer&) = delete;

  // method < kFirstReservedMethod. Handlers run on reactor threads and may throw: the
  // exception becomes the reply's status (InvalidArgument -> kInvalidArgument, ...).
  void register_method(uint16_t method, Handler handler);
  // Called on the reactor thread (before start(): set once) whenever an authenticated
  // connection closes, for whatever reason (peer gone, idle, protocol error); the
  // application forgets what it kept for that connection (e.g. deferred replies).
  void on_connection_closed(std::function<void(int reactor, uint64_t connection)> hook);
  // Binds and starts the reactors. Throws IoError when the address cannot be bound.
  void start();
  // Closes every connection and joins the reactors. Idempotent.
  void stop();

  int port() const { return port_; }
  const ServerOptions& options() const { return options_; }
  int num_reactors() const { return options_.num_reactors; }
  Reactor& reactor(int i) { return *reactors_.at(i); }
  // Reactor running the calling thread, or -1.
  static int current_reactor();

  // Counters summed over reactors (monotonic): for stats and tests.
  uint64_t connections_accepted() const;
  uint64_t connections_open() const;
  uint64_t frames_rejected() const;
  TransportStats transport_stats() const;

 private:
  friend class Reactor;
  // The server-wide budget of request payloads (memory_budget_bytes); any reactor thread.
  bool try_reserve(uint64_t bytes);
  void force_reserve(uint64_t bytes) { reserved_bytes_.fetch_add(bytes, std::memory_order_relaxed); }
  void release(uint64_t bytes) { reserved_bytes_.fetch_sub(bytes, std::memory_order_relaxed); }

  ServerOptions options_;
  std::atomic<uint64_t> reserved_bytes_{0};
  int port_ = 0;
  std::vector<Handler> handlers_;  // by method
  std::function<void(int, uint64_t)> close_hook_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::vector<std::thread> threads_;
  std::atomic<bool> running_{false};
  std::mutex lifecycle_mutex_;
};

}  // namespace sparsecore::rpc
