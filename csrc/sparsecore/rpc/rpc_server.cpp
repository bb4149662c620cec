#include "sparsecore/rpc/rpc_server.h"

#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/rpc/hmac_sha256.h"
#include "sparsecore/rpc/reactor.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::rpc {
namespace {

constexpr uint64_t kListenTag = ~uint64_t{0};
constexpr uint64_t kWakeTag = ~uint64_t{0} - 1;
constexpr size_t kReadChunk = 64 * 1024;
constexpr int kMaxIov = 64;

thread_local int t_current_reactor = -1;
std::atomic<uint64_t> g_next_connection_id{1};

std::string_view bytes_view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

}  // namespace

// ------------------------------------------------------------------------------------- Reply
void Reply::append(const void* data, size_t bytes) {
  size_t at = body.size();
  body.resize(at + bytes);
  if (bytes) std::memcpy(body.data() + at, data, bytes);
}

void Reply::fail(Status status, const std::string& message) {
  status_ = status;
  body.clear();
  append(message.data(), message.size());
}

DeferredReply Reply::defer() {
  deferred_ = true;
  return token_;
}

// ----------------------------------------------------------------------------------- Reactor
Reactor::Reactor(RpcServer& server, int index) : server_(server), index_(index) {
  epoll_ = Socket(::epoll_create1(EPOLL_CLOEXEC));
  check_syscall(epoll_.valid(), "epoll_create1", "reactor");
  wake_fd_ = Socket(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  check_syscall(wake_fd_.valid(), "eventfd", "reactor");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  check_syscall(::epoll_ctl(epoll_.fd(), EPOLL_CTL_ADD, wake_fd_.fd(), &ev) == 0, "epoll_ctl", "eventfd");
}

Reactor::~Reactor() {
  while (auto c = handoff_.try_pop()) delete *c;
}

void Reactor::wake() {
  uint64_t one = 1;
  ssize_t r = ::write(wake_fd_.fd(), &one, sizeof(one));
  (void)r;
}

void Reactor::request_stop() {
  stop_.store(true, std::memory_order_release);
  wake();
}

void Reactor::register_fd(Connection& c) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.u64 = c.id;
  check_syscall(::epoll_ctl(epoll_.fd(), EPOLL_CTL_ADD, c.socket.fd(), &ev) == 0, "epoll_ctl", "connection");
}

void Reactor::run() {
  t_current_reactor = index_;
  // A reactor is the unit of parallelism of a server (one per core): handlers run inline.
  InlineParallelScope inline_parallel;
  if (listener_.valid()) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenTag;
    check_syscall(::epoll_ctl(epoll_.fd(), EPOLL_CTL_ADD, listener_.fd(), &ev) == 0, "epoll_ctl", "listener");
  }
  const int idle_ms = server_.options_.idle_timeout_ms;
  const auto poll_window = std::chrono::microseconds(server_.options_.poll_us);
  epoll_event events[256];
  Clock::time_point last_idle_check = Clock::now();
  Clock::time_point last_work = Clock::time_point::min();
  while (!stop_.load(std::memory_order_acquire)) {
    const bool polling = poll_window.count() > 0 && Clock::now() - last_work < poll_window;
    int n = ::epoll_wait(epoll_.fd(), events, 256, polling ? 0 : idle_ms > 0 ? std::min(idle_ms, 100) : 500);
    if (n < 0 && errno != EINTR) break;
    if (n > 0 && poll_window.count() > 0) last_work = Clock::now();
    for (int i = 0; i < n; ++i) {
      uint64_t tag = events[i].data.u64;
      if (tag == kListenTag) {
        accept_all();
      } else if (tag == kWakeTag) {
        uint64_t v;
        while (::read(wake_fd_.fd(), &v, sizeof(v)) > 0) {
        }
        while (auto c = handoff_.try_pop()) adopt(*c);
      } else {
        auto it = connections_.find(tag);
        if (it == connections_.end()) continue;  // closed earlier in this batch
        Connection& c = *it->second;
        if (events[i].events & (EPOLLERR | EPOLLHUP)) {
          close_connection(c);
          continue;
        }
        service(c);
      }
    }
    closed_.clear();
    if (idle_ms > 0) {
      Clock::time_point now = Clock::now();
      if (now - last_idle_check > std::chrono::milliseconds(std::min(idle_ms, 100))) {
        close_idle(now);
        last_idle_check = now;
        closed_.clear();
      }
    }
  }
  // Shutdown: drop every connection (clients see the close as RpcConnectionError).
  for (auto& [id, c] : connections_) ::epoll_ctl(epoll_.fd(), EPOLL_CTL_DEL, c->socket.fd(), nullptr);
  open_.fetch_sub(connections_.size(), std::memory_order_relaxed);
  connections_.clear();
  t_current_reactor = -1;
}

void Reactor::accept_all() {
  for (;;) {
    int fd = ::accept4(listener_.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN, or out of descriptors: try again on the next event
    }
    set_nodelay(fd);
    auto c = std::make_unique<Connection>(server_.options_.max_frame_bytes);
    c->id = g_next_connection_id.fetch_add(1);
    c->socket = Socket(fd);
    c->server_nonce = random_nonce();
    c->last_activity = Clock::now();
    Connection& ref = *c;
    connections_.emplace(c->id, std::move(c));
    accepted_.fetch_add(1, std::memory_order_relaxed);
    open_.fetch_add(1, std::memory_order_relaxed);
    register_fd(ref);
    HelloPayload hello{};
    hello.num_reactors = static_cast<uint32_t>(server_.num_reactors());
    hello.token_required = server_.options_.token.empty() ? 0 : 1;
    std::memcpy(hello.server_nonce, ref.server_nonce.data(), 16);
    Reply r;
    r.append(&hello, sizeof(hello));
    queue_reply(ref, kMethodHello, 0, std::move(r));
    service(ref);
  }
}

void Reactor::adopt(Connection* raw) {
  std::unique_ptr<Connection> c(raw);
  Connection& ref = *c;
  ref.moved = false;
  ref.handoff_to = -1;
  ref.last_activity = Clock::now();
  connections_.emplace(ref.id, std::move(c));
  open_.fetch_add(1, std::memory_order_relaxed);
  register_fd(ref);  // reports the socket's current readiness, so nothing already sent is missed
  service(ref);
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
    if (c.socket.fd() < 0) return;  // closed
    if (!(was_paused && !c.read_paused)) return;
  }
}

void Reactor::read_and_dispatch(Connection& c) {
  // Frames already buffered (left over from a pause) go first.
  dispatch_frames(c, Clock::now());
  while (!c.read_paused && !c.closing && !c.moved) {
    std::byte* p = c.reader.write_ptr(kReadChunk);
    size_t room = c.reader.write_room();
    ssize_t n = ::recv(c.socket.fd(), p, room, 0);
    if (n > 0) {
      c.reader.commit(static_cast<size_t>(n));
      Clock::time_point now = Clock::now();
      c.last_activity = now;
      dispatch_frames(c, now);
      if (static_cast<size_t>(n) < room) return;  // drained: the next byte raises a new edge
      continue;
    }
    if (n == 0) {  // peer closed; a partial frame in the buffer is dropped with it
      c.closing = true;
      c.out.clear();
      c.out_bytes = 0;
      c.front_sent = 0;
      return;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    c.closing = true;
    c.out.clear();
    c.out_bytes = 0;
    c.front_sent = 0;
    return;
  }
}

constexpr size_t kEagerFlushBytes = 16 * 1024;

void Reactor::dispatch_frames(Connection& c, Clock::time_point arrival) {
  FrameHeader h;
  const std::byte* payload = nullptr;
  HeaderCheck err;
  while (!c.closing && !c.moved && !c.read_paused) {
    FrameReader::Next next = c.reader.next(&h, &payload, &err);
    if (next == FrameReader::Next::kNeedMore) return;
    if (next == FrameReader::Next::kError) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, err == HeaderCheck::kTooLarge ? Status::kFrameTooLarge : Status::kBadFrame,
                  std::string(header_check_message(err)) + " (payload " + std::to_string(h.payload_bytes) +
                      " bytes, limit " + std::to_string(server_.options_.max_frame_bytes) + ")");
      c.closing = true;
      return;
    }
    dispatch(c, h, {payload, static_cast<size_t>(h.payload_bytes)}, arrival);
    if (c.out_bytes > server_.options_.connection_memory_bytes) c.read_paused = true;
    // Large replies leave as soon as they are made, so that with many requests in flight the
    // client works on the first replies while later requests are served; small replies are
    // gathered into one writev after the batch.
    if (c.out_bytes >= kEagerFlushBytes) {
      flush(c);
      if (c.socket.fd() < 0) return;
    }
  }
}

void Reactor::dispatch(Connection& c, const FrameHeader& h, std::span<const std::byte> payload,
                       Clock::time_point arrival) {
  if (h.flags & kFlagResponse) return;  // clients send no responses; ignore
  if (!c.authed) {
    if (h.method == kMethodAuth) {
      handle_auth(c, h, payload);
    } else {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, Status::kAuthFailed, "the first frame must authenticate");
      c.closing = true;
    }
    return;
  }
  if (h.method == kMethodPing) {
    queue_reply(c, h.method, h.request_id, Reply());
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
    std::string message;
    Status s = status_of_current_exception(&message);
    reply = Reply();
    reply.fail(s, message);
  }
  if (!reply.deferred()) queue_reply(c, h.method, h.request_id, std::move(reply));
}

void Reactor::handle_auth(Connection& c, const FrameHeader& h, std::span<const std::byte> payload) {
  const std::string& token = server_.options_.token;
  AuthPayload auth{};
  if (payload.size() != sizeof(AuthPayload)) {
    queue_error(c, h.method, h.request_id, Status::kAuthFailed, "malformed authentication frame");
    c.closing = true;
    return;
  }
  std::memcpy(&auth, payload.data(), sizeof(auth));
  AuthReplyPayload answer{};
  if (!token.empty()) {
    Digest256 expect = hmac_sha256(token, {kClientMacLabel, bytes_view(c.server_nonce.data(), 16),
                                           bytes_view(auth.client_nonce, 16)});
    Digest256 got;
    std::memcpy(got.data(), auth.client_mac, 32);
    if (!digests_equal(expect, got)) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      queue_error(c, h.method, h.request_id, Status::kAuthFailed, "wrong token");
      c.closing = true;
      return;
    }
    Digest256 mine = hmac_sha256(token, {kServerMacLabel, bytes_view(auth.client_nonce, 16),
                                         bytes_view(c.server_nonce.data(), 16)});
    std::memcpy(answer.server_mac, mine.data(), 32);
  }
  c.authed = true;
  Reply r;
  r.append(&answer, sizeof(answer));
  int target = static_cast<int>(auth.reactor % static_cast<uint32_t>(server_.num_reactors()));
  if (target == index_) {
    queue_reply(c, h.method, h.request_id, std::move(r));
    return;
  }
  // Hand the connection over once this dispatch unwinds (service() does it). The client
  // sends nothing until it has our answer, so nothing else is buffered.
  queue_reply(c, h.method, h.request_id, std::move(r));
  c.moved = true;
  c.handoff_to = target;
}

void Reactor::hand_off(Connection& c) {
  ::epoll_ctl(epoll_.fd(), EPOLL_CTL_DEL, c.socket.fd(), nullptr);
  auto it = connections_.find(c.id);
  Connection* raw = it->second.release();
  connections_.erase(it);
  open_.fetch_sub(1, std::memory_order_relaxed);
  Reactor& dest = server_.reactor(raw->handoff_to);
  while (!dest.handoff_.try_push(raw)) std::this_thread::yield();
  dest.wake();  // from here on only `dest` touches the connection
}

void Reactor::queue_reply(Connection& c, uint16_t method, uint64_t id, Reply&& reply) {
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
    ssize_t n = ::sendmsg(c.socket.fd(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // EPOLLOUT edge resumes us
      close_connection(c);
      return;
    }
    size_t written = static_cast<size_t>(n);
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

void Reactor::close_connection(Connection& c) {
  if (c.socket.fd() < 0) return;
  ::epoll_ctl(epoll_.fd(), EPOLL_CTL_DEL, c.socket.fd(), nullptr);
  c.socket.close();
  auto it = connections_.find(c.id);
  if (it != connections_.end()) {
    closed_.push_back(std::move(it->second));  // callers may still hold `c` this event batch
    connections_.erase(it);
    open_.fetch_sub(1, std::memory_order_relaxed);
    if (c.authed && server_.close_hook_) server_.close_hook_(index_, c.id);
  }
}

void Reactor::close_idle(Clock::time_point now) {
  auto limit = std::chrono::milliseconds(server_.options_.idle_timeout_ms);
  std::vector<Connection*> idle;
  for (auto& [id, c] : connections_)
    if (now - c->last_activity > limit && c->out.empty()) idle.push_back(c.get());
  for (Connection* c : idle) close_connection(*c);
}

// --------------------------------------------------------------------------------- RpcServer
RpcServer::RpcServer(ServerOptions options) : options_(std::move(options)) {
  SC_CHECK_ARG(options_.num_reactors >= 1 && options_.num_reactors <= 1024,
               "num_reactors must be in [1, 1024], got ", options_.num_reactors);
  SC_CHECK_ARG(options_.max_frame_bytes >= 1024, "max_frame_bytes must be at least 1024, got ",
               options_.max_frame_bytes);
  SC_CHECK_ARG(options_.idle_timeout_ms >= 0, "idle_timeout_ms must be >= 0, got ", options_.idle_timeout_ms);
  SC_CHECK_ARG(options_.poll_us >= 0 && options_.poll_us <= 10'000'000, "poll_us must be in [0, 1e7], got ",
               options_.poll_us);
}

RpcServer::~RpcServer() { stop(); }

void RpcServer::on_connection_closed(std::function<void(int, uint64_t)> hook) {
  SC_CHECK_ARG(!running_.load(), "on_connection_closed must be called before start()");
  close_hook_ = std::move(hook);
}

void RpcServer::register_method(uint16_t method, Handler handler) {
  SC_CHECK_ARG(method < kFirstReservedMethod, "method ids from ", kFirstReservedMethod, " up are reserved, got ", method);
  SC_CHECK_ARG(!running_.load(), "register_method must be called before start()");
  if (handlers_.size() <= method) handlers_.resize(method + 1);
  handlers_[method] = std::move(handler);
}

void RpcServer::start() {
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  SC_CHECK_ARG(!running_.load(), "server already started");
  Socket listener = listen_tcp(options_.address, options_.port);
  port_ = local_port(listener);
  for (int i = 0; i < options_.num_reactors; ++i) reactors_.push_back(std::make_unique<Reactor>(*this, i));
  reactors_[0]->set_listener(std::move(listener));
  running_ = true;
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 0; i < options_.num_reactors; ++i) {
    threads_.emplace_back([this, i] { reactors_[i]->run(); });
    if (options_.pin_threads) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(static_cast<unsigned>(i) % cores, &set);
      pthread_setaffinity_np(threads_.back().native_handle(), sizeof(set), &set);
    }
  }
}

void RpcServer::stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  if (!running_.exchange(false)) return;
  for (auto& r : reactors_) r->request_stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  reactors_.clear();
}

int RpcServer::current_reactor() { return t_current_reactor; }

uint64_t RpcServer::connections_accepted() const {
  uint64_t n = 0;
  for (auto& r : reactors_) n += r->accepted();
  return n;
}
uint64_t RpcServer::connections_open() const {
  uint64_t n = 0;
  for (auto& r : reactors_) n += r->open();
  return n;
}
uint64_t RpcServer::frames_rejected() const {
  uint64_t n = 0;
  for (auto& r : reactors_) n += r->rejected();
  return n;
}

}  // namespace sparsecore::rpc
