// Reactor: the event loop of one RpcServer thread (the model and what a peer can make the
// server hold are in rpc_server.h).
#include "sparsecore/rpc/reactor.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "sparsecore/core/file.h"
#include "sparsecore/core/stat_counter.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/rpc/hmac_sha256.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::rpc {
namespace {

constexpr uint64_t kListenTag = ~uint64_t{0};
constexpr uint64_t kWakeTag = ~uint64_t{0} - 1;
constexpr size_t kReadChunk = 64 * 1024;
// Until a peer authenticates it is read in small pieces: its only legal frame is tiny.
constexpr size_t kHandshakeReadChunk = 4 * 1024;
// A connection's read buffer up to this size stays with it between frames and is not taken
// from the server's memory budget (it is what one small request needs); beyond it, the
// buffer is reserved from the budget and freed once the frame has been handled.
constexpr size_t kResidentReadBytes = 1 << 20;
constexpr size_t kEagerFlushBytes = 16 * 1024;
constexpr int kMaxIov = 64;
// How often timeouts are checked, and how long the listener rests after accept() failed for
// lack of descriptors or memory (retrying at once would spin on the pending connection).
constexpr int kTimerTickMs = 100;
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

thread_local int t_current_reactor = -1;
std::atomic<uint64_t> g_next_connection_id{1};

std::string_view bytes_view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

bool out_of_descriptors_or_memory(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

}  // namespace

int RpcServer::current_reactor() { return t_current_reactor; }

Reactor::Reactor(RpcServer& server, int index) : server_(server), index_(index) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  check_syscall(epoll_.valid(), "epoll_create1", "reactor");
  wake_fd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  check_syscall(wake_fd_.valid(), "eventfd", "reactor");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) == 0, "epoll_ctl", "eventfd");
}

Reactor::~Reactor() {
  while (auto c = handoff_.try_pop()) {
    server_.release((*c)->reserved);
    delete *c;
  }
}

void Reactor::wake() {
  uint64_t one = 1;
  ssize_t r = ::write(wake_fd_.get(), &one, sizeof(one));
  (void)r;
}

void Reactor::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    posted_.push_back(std::move(task));
  }
  wake();
}

void Reactor::run_posted() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) {
    try {
      task();
    } catch (const std::exception&) {  // a task's failure must not stop the reactor
    }
  }
}

void Reactor::request_stop() {
  stop_.store(true, std::memory_order_release);
  wake();
}

void Reactor::add_stats(TransportStats& into) const {
  into.connections_accepted += stat_value(accepted_);
  into.open_connections += stat_value(open_);
  into.frames_rejected += stat_value(rejected_);
  into.accept_backoffs += stat_value(accept_backoffs_);
  into.handshake_timeouts += stat_value(handshake_timeouts_);
  into.idle_timeouts += stat_value(idle_timeouts_);
  into.memory_refusals += stat_value(memory_refusals_);
  into.out_of_memory += stat_value(out_of_memory_);
  into.requests += stat_value(requests_);
  into.error_replies += stat_value(error_replies_);
  into.bytes_received += stat_value(bytes_received_);
  into.bytes_sent += stat_value(bytes_sent_);
}

void Reactor::register_fd(Connection& c) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = c.id;
  check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c.socket.get(), &ev) == 0, "epoll_ctl", "connection");
}

void Reactor::run() {
  t_current_reactor = index_;
  // A reactor is the unit of parallelism of a server (one per core): handlers run inline.
  InlineParallelScope inline_parallel;
  if (listener_.valid()) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenTag;
    check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) == 0, "epoll_ctl", "listener");
    listener_watched_ = true;
  }
  const ServerOptions& o = server_.options_;
  // Only reactor 0 holds unauthenticated connections (it hands the others over after auth).
  const bool timers = o.idle_timeout_ms > 0 || (listener_.valid() && o.handshake_timeout_ms > 0);
  const auto poll_window = std::chrono::microseconds(o.poll_us);
  epoll_event events[256];
  Clock::time_point last_timer_check = Clock::now();
  Clock::time_point last_work = Clock::time_point::min();
  while (!stop_.load(std::memory_order_acquire)) {
    const bool polling = poll_window.count() > 0 && Clock::now() - last_work < poll_window;
    const bool ticking = timers || !listener_watched_;
    int n = ::epoll_wait(epoll_.get(), events, 256, polling ? 0 : ticking ? kTimerTickMs : 500);
    if (n < 0 && errno != EINTR) break;
    if (n > 0 && poll_window.count() > 0) last_work = Clock::now();
    for (int i = 0; i < n; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kListenTag) {
        accept_all();
      } else if (tag == kWakeTag) {
        uint64_t v;
        while (::read(wake_fd_.get(), &v, sizeof(v)) > 0) {
        }
        while (auto c = handoff_.try_pop()) adopt(*c);
        run_posted();
      } else {
        auto it = connections_.find(tag);
        if (it == connections_.end()) continue;  // closed earlier in this batch
        Connection& c = *it->second;
        if (events[i].events & (EPOLLERR | EPOLLHUP)) {
          close_connection(c);
          continue;
        }
        // The peer shut its side: what it sent before is still to be read, then EOF.
        if (events[i].events & EPOLLRDHUP) c.peer_shut = true;
        service_guarded(c);
      }
    }
    closed_.clear();
    if (ticking) {
      Clock::time_point now = Clock::now();
      if (!listener_watched_) resume_accepting(now);
      if (timers && now - last_timer_check >= std::chrono::milliseconds(kTimerTickMs)) {
        try {
          close_expired(now);
        } catch (const std::bad_alloc&) {
          out_of_memory_.fetch_add(1, std::memory_order_relaxed);  // checked again next tick
        }
        last_timer_check = now;
        closed_.clear();
      }
    }
  }
  // Shutdown: drop every connection (clients see the close as RpcConnectionError).
  for (auto& [id, c] : connections_) {
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->socket.get(), nullptr);
    server_.release(c->reserved);
  }
  open_.fetch_sub(connections_.size(), std::memory_order_relaxed);
  connections_.clear();
  t_current_reactor = -1;
}

// ------------------------------------------------------------------------------- accepting
void Reactor::accept_all() {
  for (;;) {
    UniqueFd socket(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (socket.valid()) {
      accept_one(std::move(socket));
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    // Out of descriptors (or memory): the pending connection stays queued and the listener
    // stays readable, so watching it now would spin. Rest, then try again.
    if (out_of_descriptors_or_memory(errno)) {
      pause_accepting(Clock::now());
      return;
    }
    // Network errors of the pending connection (accept(2) lists them) consumed it: go on.
    if (errno == EPROTO || errno == ENETDOWN || errno == ENOPROTOOPT || errno == EHOSTDOWN || errno == ENONET ||
        errno == EHOSTUNREACH || errno == EOPNOTSUPP || errno == ENETUNREACH || errno == EPERM)
      continue;
    pause_accepting(Clock::now());
    return;
  }
}

void Reactor::accept_one(UniqueFd socket) {  // closes the descriptor if anything below throws
  std::unique_ptr<Connection> owned;
  Connection* c = nullptr;
  try {
    set_nodelay(socket.get());
    owned = std::make_unique<Connection>(server_.options_.max_frame_bytes);
    owned->id = g_next_connection_id.fetch_add(1);
    owned->socket = std::move(socket);
    owned->server_nonce = random_nonce();
    owned->accepted_at = owned->last_activity = Clock::now();
    c = owned.get();
    connections_.emplace(c->id, std::move(owned));
  } catch (const std::exception&) {
    out_of_memory_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  accepted_.fetch_add(1, std::memory_order_relaxed);
  open_.fetch_add(1, std::memory_order_relaxed);
  try {
    register_fd(*c);
    HelloPayload hello{};
    hello.num_reactors = static_cast<uint32_t>(server_.num_reactors());
    hello.token_required = server_.options_.token.empty() ? 0 : 1;
    std::memcpy(hello.server_nonce, c->server_nonce.data(), 16);
    Reply r;
    r.append(&hello, sizeof(hello));
    queue_reply(*c, kMethodHello, 0, std::move(r));
  } catch (const std::exception&) {
    out_of_memory_.fetch_add(1, std::memory_order_relaxed);
    close_connection(*c);
    return;
  }
  service_guarded(*c);
}

void Reactor::pause_accepting(Clock::time_point now) {
  accept_backoffs_.fetch_add(1, std::memory_order_relaxed);
  accept_resume_at_ = now + kAcceptBackoff;
  if (!listener_watched_) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
  listener_watched_ = false;
}

void Reactor::resume_accepting(Clock::time_point now) {
  if (listener_watched_ || !listener_.valid() || now < accept_resume_at_) return;
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered: connections that queued meanwhile are reported now
  ev.data.u64 = kListenTag;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) == 0)
    listener_watched_ = true;
  else
    accept_resume_at_ = now + kAcceptBackoff;
}

void Reactor::adopt(Connection* raw) {
  std::unique_ptr<Connection> c(raw);
  Connection& ref = *c;
  ref.moved = false;
  ref.handoff_to = -1;
  ref.last_activity = Clock::now();
  try {
    connections_.emplace(ref.id, std::move(c));
  } catch (const std::exception&) {
    out_of_memory_.fetch_add(1, std::memory_order_relaxed);
    server_.release(ref.reserved);
    return;  // `c` still owns it (emplace failed before taking it): freed and closed here
  }
  open_.fetch_add(1, std::memory_order_relaxed);
  try {
    register_fd(ref);  // reports the socket's current readiness, so nothing already sent is missed
  } catch (const std::exception&) {
    out_of_memory_.fetch_add(1, std::memory_order_relaxed);
    close_connection(ref);
    return;
  }
  service_guarded(ref);
}

// ---------------------------------------------------------------------------------- reading
void Reactor::service_guarded(Connection& c) {
  try {
    service(c);
  } catch (const std::exception&) {
    // Out of memory (or a failed system call) outside a handler: this connection cannot go
    // on, the others can.
    out_of_memory_.fetch_add(1, std::memory_order_relaxed);
    close_connection(c);
  }
}

void Reactor::service(Connection& c) {
  for (;;) {
    if (!c.read_paused && !c.closing) read_and_dispatch(c);
    if (c.moved) {
      hand_off(c);
      return;
    }
    bool was_paused = c.read_paused;
    flush(c);
    if (!c.socket.valid()) return;  // closed
    if (!(was_paused && !c.read_paused)) return;
  }
}

void Reactor::read_and_dispatch(Connection& c) {
  // Frames already buffered (left over from a pause) go first.
  dispatch_frames(c, Clock::now());
  settle_reservation(c);
  while (!c.read_paused && !c.closing && !c.moved) {
    std::byte* p = c.reader.write_ptr(c.authed ? kReadChunk : kHandshakeReadChunk);
    size_t room = c.reader.write_room();
    ssize_t n = ::recv(c.socket.get(), p, room, 0);
    if (n > 0) {
      bytes_received_.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
      c.reader.commit(static_cast<size_t>(n));
      Clock::time_point now = Clock::now();
      c.last_activity = now;
      dispatch_frames(c, now);
      settle_reservation(c);
      // A short read drained the socket, and the next byte raises a new edge; unless the
      // peer has shut its side, when the EOF behind these bytes raises none: read on to it.
      if (static_cast<size_t>(n) < room && !c.peer_shut) return;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // EOF or a reset: the peer is gone, and so is whatever it would have read.
    c.closing = true;
    c.out.clear();
    c.out_bytes = 0;
    c.front_sent = 0;
    return;
  }
}

void Reactor::dispatch_frames(Connection& c, Clock::time_point arrival) {
  FrameHeader h;
  const std::byte* payload = nullptr;
  HeaderCheck err;
  size_t available = 0;
  while (!c.closing && !c.moved && !c.read_paused) {
    // The header alone first: nothing is sized for a frame before it is admitted.
    FrameReader::Next next = c.reader.peek(&h, &available, &err);
    if (next == FrameReader::Next::kNeedMore) return;
    if (next == FrameReader::Next::kError) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, err == HeaderCheck::kTooLarge ? Status::kFrameTooLarge : Status::kBadFrame,
                  std::string(header_check_message(err)) + " (payload " + std::to_string(h.payload_bytes) +
                      " bytes, limit " + std::to_string(server_.options_.max_frame_bytes) + ")");
      c.closing = true;
      return;
    }
    if (!admit_frame(c, h)) continue;  // skipped (kBusy) or closing
    next = c.reader.next(&h, &payload, &err);
    if (next != FrameReader::Next::kFrame) return;
    dispatch(c, h, {payload, static_cast<size_t>(h.payload_bytes)}, arrival);
    if (c.out_bytes > server_.options_.connection_memory_bytes) c.read_paused = true;
    // Large replies leave as soon as they are made, so that with many requests in flight the
    // client works on the first replies while later requests are served; small replies are
    // gathered into one writev after the batch.
    if (c.out_bytes >= kEagerFlushBytes) {
      flush(c);
      if (!c.socket.valid()) return;
    }
  }
}

bool Reactor::admit_frame(Connection& c, const FrameHeader& h) {
  if (!c.authed) {
    // Anything but the handshake's one small request ends the connection before a byte of
    // it is buffered: an unauthenticated peer cannot make the server hold more than a read.
    if (!allowed_before_auth(h)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, Status::kAuthFailed,
                  "the first frame must authenticate (a request of at most " +
                      std::to_string(kMaxHandshakePayloadBytes) + " bytes)");
      c.closing = true;
      return false;
    }
    return true;
  }
  // What next() will hold for this frame, plus the read that completes it.
  const uint64_t capacity = kFrameHeaderBytes + h.payload_bytes + kReadChunk;
  const uint64_t wanted = capacity > kResidentReadBytes ? capacity - kResidentReadBytes : 0;
  if (wanted <= c.reserved) return true;
  if (server_.try_reserve(wanted - c.reserved)) {
    c.reserved = wanted;
    return true;
  }
  memory_refusals_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t budget = server_.options_.memory_budget_bytes;
  std::string why = h.payload_bytes + kFrameHeaderBytes > budget
                        ? "exceeds the server's memory budget of " + std::to_string(budget) + " bytes"
                        : "does not fit in the server's memory budget now (" +
                              std::to_string(server_.reserved_bytes_.load(std::memory_order_relaxed)) + " of " +
                              std::to_string(budget) + " bytes in use); retry later";
  queue_error(c, h.method, h.request_id, Status::kBusy,
              "request of " + std::to_string(h.payload_bytes) + " bytes " + why);
  c.reader.discard(kFrameHeaderBytes + h.payload_bytes);  // the stream goes on after it
  return false;
}

void Reactor::settle_reservation(Connection& c) {
  c.reader.release_if_idle(kResidentReadBytes);
  const uint64_t capacity = c.reader.capacity();
  const uint64_t held = capacity > kResidentReadBytes ? capacity - kResidentReadBytes : 0;
  if (held > c.reserved) {
    server_.force_reserve(held - c.reserved);  // at most one read beyond what admit_frame took
    c.reserved = held;
  } else if (held < c.reserved && c.reader.buffered() == 0) {
    // Only between frames: a frame being received keeps what admit_frame reserved for it.
    server_.release(c.reserved - held);
    c.reserved = held;
  }
}

// ------------------------------------------------------------------------------ dispatching
void Reactor::dispatch(Connection& c, const FrameHeader& h, std::span<const std::byte> payload,
                       Clock::time_point arrival) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  if (!c.authed) {  // admit_frame let only an auth request through
    handle_auth(c, h, payload);
    return;
  }
  if (h.flags & kFlagResponse) return;  // clients send no responses; ignore
  if (h.method == kMethodPing) {
    queue_reply(c, h.method, h.request_id, Reply());
    return;
  }
  if (h.method == kMethodTransportStats) {
    Reply r;
    std::string json = server_.transport_stats().to_json();
    r.append(json.data(), json.size());
    queue_reply(c, h.method, h.request_id, std::move(r));
    return;
  }
  const auto& handlers = server_.handlers_;
  if (h.method >= handlers.size() || !handlers[h.method]) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    queue_error(c, h.method, h.request_id, Status::kUnknownMethod, "unknown method " + std::to_string(h.method));
    return;
  }
  Request req;
  req.method = h.method;
  req.id = h.request_id;
  req.reactor = index_;
  req.connection = c.id;
  req.payload = payload;
  if (h.timeout_ms > 0) {
    req.deadline = arrival + std::chrono::milliseconds(h.timeout_ms);
    if (Clock::now() > req.deadline) {
      queue_error(c, h.method, h.request_id, Status::kDeadlineExceeded,
                  "request waited past its " + std::to_string(h.timeout_ms) + " ms deadline");
      return;
    }
  }
  Reply reply;
  reply.body = take_body();
  reply.token_ = DeferredReply{c.id, h.request_id, h.method};
  try {
    handlers[h.method](req, reply);
  } catch (...) {
    std::string message;  // std::bad_alloc included: "out of memory", kInternal
    Status s = status_of_current_exception(&message);
    reply = Reply();
    reply.fail(s, message);
  }
  if (reply.deferred())
    ++c.deferred;
  else
    queue_reply(c, h.method, h.request_id, std::move(reply));
}

void Reactor::handle_auth(Connection& c, const FrameHeader& h, std::span<const std::byte> payload) {
  const std::string& token = server_.options_.token;
  AuthPayload auth{};
  if (payload.size() != sizeof(AuthPayload)) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    queue_error(c, h.method, h.request_id, Status::kAuthFailed, "malformed authentication frame");
    c.closing = true;
    return;
  }
  std::memcpy(&auth, payload.data(), sizeof(auth));
  AuthReplyPayload answer{};
  if (!token.empty()) {
    Digest256 expect =
        hmac_sha256(token, {kClientMacLabel, bytes_view(c.server_nonce.data(), 16), bytes_view(auth.client_nonce, 16)});
    Digest256 got;
    std::memcpy(got.data(), auth.client_mac, 32);
    if (!digests_equal(expect, got)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, Status::kAuthFailed, "wrong token");
      c.closing = true;
      return;
    }
    Digest256 mine =
        hmac_sha256(token, {kServerMacLabel, bytes_view(auth.client_nonce, 16), bytes_view(c.server_nonce.data(), 16)});
    std::memcpy(answer.server_mac, mine.data(), 32);
  }
  c.authed = true;
  Reply r;
  r.append(&answer, sizeof(answer));
  int target = static_cast<int>(auth.reactor % static_cast<uint32_t>(server_.num_reactors()));
  queue_reply(c, h.method, h.request_id, std::move(r));
  if (target == index_) return;
  // Hand the connection over once this dispatch unwinds (service() does it). The client
  // sends nothing until it has our answer, so nothing else is buffered.
  c.moved = true;
  c.handoff_to = target;
}

void Reactor::hand_off(Connection& c) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.socket.get(), nullptr);
  auto it = connections_.find(c.id);
  Connection* raw = it->second.release();
  connections_.erase(it);
  open_.fetch_sub(1, std::memory_order_relaxed);
  Reactor& dest = server_.reactor(raw->handoff_to);
  while (!dest.handoff_.try_push(raw)) std::this_thread::yield();
  dest.wake();  // from here on only `dest` touches the connection
}

// ---------------------------------------------------------------------------------- writing
void Reactor::queue_reply(Connection& c, uint16_t method, uint64_t id, Reply&& reply) {
  if (reply.body.size() > server_.options_.max_frame_bytes) {
    // The client would refuse it, and the server should not queue it either.
    size_t bytes = reply.body.size();
    reply = Reply();
    reply.fail(Status::kFrameTooLarge, "reply of " + std::to_string(bytes) +
                                           " bytes exceeds the server's frame limit of " +
                                           std::to_string(server_.options_.max_frame_bytes) + " bytes");
  }
  if (reply.status() != Status::kOk) error_replies_.fetch_add(1, std::memory_order_relaxed);
  OutFrame f;
  f.header.flags = kFlagResponse;
  f.header.method = method;
  f.header.request_id = id;
  f.header.status = static_cast<uint32_t>(reply.status());
  f.header.payload_bytes = reply.body.size();
  f.body = std::move(reply.body);
  c.out_bytes += kFrameHeaderBytes + f.body.size();
  c.out.push_back(std::move(f));
}

void Reactor::queue_error(Connection& c, uint16_t method, uint64_t id, Status status, const std::string& message) {
  Reply r;
  r.fail(status, message);
  queue_reply(c, method, id, std::move(r));
}

void Reactor::send_deferred(const DeferredReply& token, Reply&& reply) {
  auto it = connections_.find(token.connection);
  if (it == connections_.end()) return;
  Connection& c = *it->second;
  if (c.deferred > 0) --c.deferred;
  if (c.closing) return;
  queue_reply(c, token.method, token.request_id, std::move(reply));
  flush(c);
}

void Reactor::flush(Connection& c) {
  while (!c.out.empty()) {
    iovec iov[kMaxIov];
    int count = 0;
    size_t skip = c.front_sent;
    for (auto& f : c.out) {
      if (count + 2 > kMaxIov) break;
      auto* hdr = reinterpret_cast<std::byte*>(&f.header);
      if (skip < kFrameHeaderBytes) {
        iov[count++] = {hdr + skip, kFrameHeaderBytes - skip};
        skip = 0;
      } else {
        skip -= kFrameHeaderBytes;
      }
      if (f.body.size() > skip) iov[count++] = {f.body.data() + skip, f.body.size() - skip};
      skip = 0;
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = ::sendmsg(c.socket.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // EPOLLOUT edge resumes us
      close_connection(c);
      return;
    }
    size_t written = static_cast<size_t>(n);
    bytes_sent_.fetch_add(written, std::memory_order_relaxed);
    c.out_bytes -= written;
    while (written > 0) {
      OutFrame& f = c.out.front();
      size_t left = kFrameHeaderBytes + f.body.size() - c.front_sent;
      if (written >= left) {
        written -= left;
        c.front_sent = 0;
        recycle(std::move(f.body));
        c.out.pop_front();
      } else {
        c.front_sent += written;
        written = 0;
      }
    }
  }
  if (c.read_paused && c.out_bytes <= server_.options_.connection_memory_bytes / 2) c.read_paused = false;
  if (c.closing && c.out.empty()) close_connection(c);
}

PodVector<std::byte> Reactor::take_body() {
  if (spare_bodies_.empty()) return {};
  PodVector<std::byte> body = std::move(spare_bodies_.back());
  spare_bodies_.pop_back();
  body.clear();  // keeps its capacity
  return body;
}

void Reactor::recycle(PodVector<std::byte>&& body) {
  constexpr size_t kMinKept = 4 << 10, kMaxKept = 16 << 20, kMaxSpare = 32;
  if (body.capacity() >= kMinKept && body.capacity() <= kMaxKept && spare_bodies_.size() < kMaxSpare)
    spare_bodies_.push_back(std::move(body));
}

// ---------------------------------------------------------------------------------- closing
void Reactor::close_connection(Connection& c) {
  if (!c.socket.valid()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.socket.get(), nullptr);
  c.socket.reset();
  server_.release(c.reserved);
  c.reserved = 0;
  auto it = connections_.find(c.id);
  if (it == connections_.end()) return;
  std::unique_ptr<Connection> owned = std::move(it->second);
  connections_.erase(it);
  open_.fetch_sub(1, std::memory_order_relaxed);
  if (c.authed && server_.close_hook_) server_.close_hook_(index_, c.id);
  try {
    closed_.push_back(std::move(owned));  // callers may still hold `c` this event batch
  } catch (const std::bad_alloc&) {
    // No memory to defer the free: keep the (closed, small) object rather than free it under
    // a caller that may still use it.
    (void)owned.release();
  }
}

void Reactor::close_expired(Clock::time_point now) {
  const ServerOptions& o = server_.options_;
  const auto handshake_limit = std::chrono::milliseconds(o.handshake_timeout_ms);
  const auto idle_limit = std::chrono::milliseconds(o.idle_timeout_ms);
  std::vector<Connection*> handshake_expired, idle;
  for (auto& [id, c] : connections_) {
    if (!c->authed) {
      if (o.handshake_timeout_ms > 0 && now - c->accepted_at > handshake_limit) handshake_expired.push_back(c.get());
    } else if (o.idle_timeout_ms > 0 && now - c->last_activity > idle_limit && c->out.empty() && c->deferred == 0) {
      idle.push_back(c.get());
    }
  }
  handshake_timeouts_.fetch_add(handshake_expired.size(), std::memory_order_relaxed);
  idle_timeouts_.fetch_add(idle.size(), std::memory_order_relaxed);
  for (Connection* c : handshake_expired) close_connection(*c);
  for (Connection* c : idle) close_connection(*c);
}

}  // namespace sparsecore::rpc
