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
// deadline passed before they ran are answered kDeadlineExceeded; connections idle longer
// than idle_timeout_ms are closed. A bad magic/version/flags or an oversized frame gets an
// error reply and the connection is closed; an unknown method gets an error reply and the
// connection keeps serving. Nothing a peer sends stops the server serving the others.
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
  int port = 0;                        // 0: any free port (see RpcServer::port())
  int num_reactors = 1;
  bool pin_threads = false;            // pin reactor i to CPU i (mod cores)
  std::string token;                   // non-empty: clients must prove they know it (HMAC)
  uint64_t max_frame_bytes = 64ull << 20;          // largest payload accepted
  uint64_t connection_memory_bytes = 256ull << 20;  // queued replies before reads pause
  int idle_timeout_ms = 0;             // close connections silent this long (0: never)
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

 private:
  friend class Reactor;
  ServerOptions options_;
  int port_ = 0;
  std::vector<Handler> handlers_;  // by method
  std::function<void(int, uint64_t)> close_hook_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  std::vector<std::thread> threads_;
  std::atomic<bool> running_{false};
  std::mutex lifecycle_mutex_;
};

}  // namespace sparsecore::rpc
