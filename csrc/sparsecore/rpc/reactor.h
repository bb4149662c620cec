// Reactor: one thread's event loop over epoll (see rpc_server.h for the model). Public only
// so that handlers can complete deferred replies on the reactor that owns the connection.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "sparsecore/rpc/frame.h"
#include "sparsecore/rpc/rpc_server.h"
#include "sparsecore/rpc/socket.h"
#include "sparsecore/rpc/spsc_queue.h"

namespace sparsecore::rpc {

class Reactor {
 public:
  Reactor(RpcServer& server, int index);
  ~Reactor();
  int index() const { return index_; }

  // Reactor thread only: sends a reply that a handler deferred. Dropped silently when the
  // connection has closed meanwhile (its client already saw the failure).
  void send_deferred(const DeferredReply& token, Reply&& reply);
  // Any thread: runs `task` on this reactor's thread soon (e.g. to send a deferred reply once
  // work handed to another thread is done). Tasks still queued when the reactor stops are
  // dropped.
  void post(std::function<void()> task);

  uint64_t accepted() const { return accepted_.load(std::memory_order_relaxed); }
  uint64_t open() const { return open_.load(std::memory_order_relaxed); }
  uint64_t rejected() const { return rejected_.load(std::memory_order_relaxed); }
  // Adds this reactor's counters to `into` (any thread).
  void add_stats(TransportStats& into) const;

 private:
  friend class RpcServer;
  struct OutFrame {
    FrameHeader header;
    PodVector<std::byte> body;
  };
  struct Connection {
    uint64_t id = 0;
    UniqueFd socket;
    FrameReader reader;
    std::deque<OutFrame> out;
    size_t front_sent = 0;  // bytes of out.front() (header + body) already written
    size_t out_bytes = 0;
    bool authed = false;
    bool closing = false;      // flush what is queued, then close
    bool read_paused = false;  // backpressure
    bool moved = false;        // to be handed to reactor `handoff_to` after this dispatch
    bool peer_shut = false;    // the peer closed its side (EPOLLRDHUP): read on to EOF
    int handoff_to = -1;
    uint64_t reserved = 0;  // bytes of the server's memory budget held by `reader`
    uint32_t deferred = 0;  // replies a handler deferred and has not sent yet
    std::array<uint8_t, 16> server_nonce{};
    Clock::time_point accepted_at;
    Clock::time_point last_activity;
    explicit Connection(uint64_t max_frame) : reader(max_frame) {}
  };

  void set_listener(UniqueFd listener) { listener_ = std::move(listener); }
  void run();
  void request_stop();
  void wake();
  void accept_all();
  void accept_one(UniqueFd socket);
  void pause_accepting(Clock::time_point now);
  void resume_accepting(Clock::time_point now);
  void adopt(Connection* c);  // a connection handed over by reactor 0
  void service(Connection& c);
  // service() that turns std::bad_alloc (or any exception outside a handler) into closing
  // that connection.
  void service_guarded(Connection& c);
  void read_and_dispatch(Connection& c);
  void dispatch_frames(Connection& c, Clock::time_point arrival);
  // Before a frame is buffered whole: refuses what an unauthenticated peer may not send
  // (closing) and reserves the frame's memory from the server's budget (or answers kBusy and
  // skips it). Returns whether the frame may be read.
  bool admit_frame(Connection& c, const FrameHeader& h);
  // Makes c.reserved cover what c.reader holds (reserving when it grew, returning the excess
  // when it shrank); frees a large idle buffer first.
  void settle_reservation(Connection& c);
  void dispatch(Connection& c, const FrameHeader& h, std::span<const std::byte> payload, Clock::time_point arrival);
  void handle_auth(Connection& c, const FrameHeader& h, std::span<const std::byte> payload);
  void queue_reply(Connection& c, uint16_t method, uint64_t id, Reply&& reply);
  void queue_error(Connection& c, uint16_t method, uint64_t id, Status status, const std::string& message);
  void flush(Connection& c);
  void close_connection(Connection& c);
  void hand_off(Connection& c);
  void close_expired(Clock::time_point now);
  void register_fd(Connection& c);
  void run_posted();  // the tasks of post(), on the reactor thread
  // Reply bodies whose frames have been written are kept for later replies: a fresh body per
  // reply (72 KiB for a pull of 1000 rows of dim 18) would have its pages faulted in, and
  // handed back to the system, on every request.
  PodVector<std::byte> take_body();
  void recycle(PodVector<std::byte>&& body);

  RpcServer& server_;
  int index_;
  UniqueFd epoll_;
  UniqueFd wake_fd_;
  UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
  // Connections handed over by reactor 0 (the only producer). Owning raw pointers.
  SpscQueue<Connection*> handoff_{1024};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> open_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> accept_backoffs_{0};
  std::atomic<uint64_t> handshake_timeouts_{0};
  std::atomic<uint64_t> idle_timeouts_{0};
  std::atomic<uint64_t> memory_refusals_{0};
  std::atomic<uint64_t> out_of_memory_{0};
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> error_replies_{0};
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  bool listener_watched_ = false;
  Clock::time_point accept_resume_at_;               // while !listener_watched_
  std::vector<std::unique_ptr<Connection>> closed_;  // freed after the event batch
  std::vector<PodVector<std::byte>> spare_bodies_;
  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
};

}  // namespace sparsecore::rpc
