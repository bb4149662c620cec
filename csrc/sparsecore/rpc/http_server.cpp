#include "sparsecore/rpc/http_server.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/stat_counter.h"
#include "sparsecore/rpc/socket.h"

namespace sparsecore::rpc {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kListenTag = 0;
constexpr uint64_t kWakeTag = ~uint64_t{0};
constexpr size_t kReadChunk = 16 << 10;
// How long the listener rests after accept() failed for lack of descriptors or memory.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

}  // namespace

struct HttpServer::Connection {
  uint64_t id = 0;
  UniqueFd socket;
  std::string in;   // bytes received and not yet parsed
  std::string out;  // the response being written
  size_t sent = 0;  // bytes of `out` written
  bool close_after_write = false;
  bool peer_closed = false;  // EOF seen: answer what is buffered, then close
  bool draining = false;     // answered and shut for writing: discarding input until EOF
  bool awaiting = false;     // an asynchronous route has the request: nothing is read meanwhile
  bool await_keep_alive = false;
  bool await_head = false;
  uint32_t watched = 0;  // epoll events registered
  Clock::time_point deadline;
};

HttpServer::HttpServer(HttpServerOptions options) : options_(std::move(options)) {
  SC_CHECK_ARG(options_.port >= 0 && options_.port <= 65535, "port must be in [0, 65535], got ", options_.port);
  SC_CHECK_ARG(options_.max_connections >= 1, "max_connections must be >= 1, got ", options_.max_connections);
  SC_CHECK_ARG(options_.timeout_ms >= 1, "timeout_ms must be >= 1, got ", options_.timeout_ms);
  SC_CHECK_ARG(options_.limits.max_header_bytes >= 64, "max_header_bytes must be >= 64, got ",
               options_.limits.max_header_bytes);
  SC_CHECK_ARG(options_.limits.max_headers >= 1, "max_headers must be >= 1");
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::route(const std::string& method, const std::string& path, HttpHandler handler) {
  SC_CHECK_ARG(!started_, "HttpServer::route must be called before start()");
  SC_CHECK_ARG(!path.empty() && path.front() == '/', "a route's path must start with '/', got '", path, "'");
  SC_CHECK_ARG(!method.empty(), "a route needs a method");
  SC_CHECK_ARG(handler != nullptr, "a route needs a handler");
  routes_[path][method] = Route{std::move(handler), nullptr};
}

void HttpServer::route_async(const std::string& method, const std::string& path, HttpAsyncHandler handler) {
  SC_CHECK_ARG(!started_, "HttpServer::route_async must be called before start()");
  SC_CHECK_ARG(!path.empty() && path.front() == '/', "a route's path must start with '/', got '", path, "'");
  SC_CHECK_ARG(!method.empty(), "a route needs a method");
  SC_CHECK_ARG(handler != nullptr, "a route needs a handler");
  routes_[path][method] = Route{nullptr, std::move(handler)};
}

void HttpServer::start() {
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  SC_CHECK_ARG(!started_, "HttpServer already started");
  listener_ = listen_tcp(options_.address, options_.port, 128);
  port_ = local_port(listener_.get());
  epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  check_syscall(epoll_.valid(), "epoll_create1", "http server");
  wake_fd_ = UniqueFd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  check_syscall(wake_fd_.valid(), "eventfd", "http server");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) == 0, "epoll_ctl", "eventfd");
  ev.data.u64 = kListenTag;
  check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) == 0, "epoll_ctl", "listener");
  completions_->wake_fd = wake_fd_.get();
  started_ = true;
  thread_ = std::thread([this] { run(); });
}

void HttpServer::stop() {
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  if (!started_ || !thread_.joinable()) return;
  stop_.store(true, std::memory_order_release);
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
  thread_.join();
  listener_.reset();
  std::lock_guard<std::mutex> done_lock(completions_->mutex);
  completions_->open = false;  // responders called from now on do nothing
  completions_->done.clear();
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats s;
  s.connections_accepted = stat_value(accepted_);
  s.connections_open = stat_value(open_);
  s.connections_refused = stat_value(refused_);
  s.timeouts = stat_value(timeouts_);
  s.requests = stat_value(requests_);
  s.bad_requests = stat_value(bad_requests_);
  return s;
}

void HttpServer::run() {
  bool listening = true;
  Clock::time_point resume_at;
  std::vector<epoll_event> events(64);
  while (!stop_.load(std::memory_order_acquire)) {
    Clock::time_point now = Clock::now();
    Clock::time_point next = now + std::chrono::seconds(1);
    for (const auto& [id, c] : connections_) next = std::min(next, c->deadline);
    if (!listening) next = std::min(next, resume_at);
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1;
    int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                         static_cast<int>(std::clamp<int64_t>(wait, 0, 1000)));
    if (n < 0 && errno != EINTR) break;  // the epoll descriptor is gone: nothing more to serve
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == kWakeTag) {
        uint64_t v;
        while (::read(wake_fd_.get(), &v, sizeof(v)) > 0) {
        }
        complete_async();
      } else if (tag == kListenTag) {
        try {
          accept_all();
        } catch (const IoError&) {
          // Out of descriptors or memory: rest the listener instead of spinning on it.
          ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
          listening = false;
          resume_at = Clock::now() + kAcceptBackoff;
        }
      } else {
        auto it = connections_.find(tag);
        if (it == connections_.end()) continue;  // closed earlier in this batch
        try {
          // A connection waiting for an asynchronous response watches no events, but a hang-up
          // is reported anyway (and again and again): the peer is gone, nobody reads the answer.
          if ((events[i].events & EPOLLERR) || (it->second->awaiting && (events[i].events & EPOLLHUP))) {
            close(*it->second);
          } else {
            drive(*it->second);
          }
        } catch (const std::exception&) {
          // std::bad_alloc: drop this connection and serve the others; drive() may have
          // closed it already before it threw.
          auto again = connections_.find(tag);
          if (again != connections_.end()) close(*again->second);
        }
      }
    }
    now = Clock::now();
    if (!listening && now >= resume_at) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = kListenTag;
      listening = ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &ev) == 0;
      if (!listening) resume_at = now + kAcceptBackoff;
    }
    std::vector<Connection*> expired;
    for (const auto& [id, c] : connections_)
      if (c->deadline <= now) expired.push_back(c.get());
    for (Connection* c : expired) {
      if (!c->draining) timeouts_.fetch_add(1, std::memory_order_relaxed);
      close(*c);
    }
    closed_.clear();
  }
  while (!connections_.empty()) close(*connections_.begin()->second);
  closed_.clear();
}

void HttpServer::accept_all() {
  while (true) {
    UniqueFd s(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!s.valid()) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      check_syscall(false, "accept", "http listener");  // EMFILE, ENFILE, ENOBUFS, ENOMEM
    }
    accepted_.fetch_add(1, std::memory_order_relaxed);
    if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      HttpResponse busy{503, "text/plain; charset=utf-8", "too many connections\n", {}};
      std::string bytes = format_http_response(busy, false);
      [[maybe_unused]] ssize_t n = ::send(s.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      continue;  // s closes here
    }
    auto c = std::make_unique<Connection>();
    c->id = next_id_++;
    c->socket = std::move(s);
    c->deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
    Connection& ref = *c;
    connections_.emplace(ref.id, std::move(c));
    open_.fetch_add(1, std::memory_order_relaxed);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = ref.id;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, ref.socket.get(), &ev) != 0) {
      close(ref);
      continue;
    }
    ref.watched = ev.events;
  }
}

void HttpServer::watch(Connection& c, uint32_t events) {
  if (c.watched == events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = c.id;
  check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.socket.get(), &ev) == 0, "epoll_ctl", "http connection");
  c.watched = events;
}

void HttpServer::drive(Connection& c) {
  // What a connection may buffer: one whole request (the parser refuses a larger one before
  // the buffer fills up).
  const size_t cap = options_.limits.max_header_bytes + options_.limits.max_body_bytes;
  while (c.socket.valid()) {
    if (c.sent < c.out.size()) {  // a response is being written: nothing is read meanwhile
      ssize_t n = ::send(c.socket.get(), c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        watch(c, EPOLLOUT);
        return;
      }
      close(c);
      return;
    }
    if (!c.out.empty()) {  // written whole
      c.out.clear();
      c.sent = 0;
      c.deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
      if (c.close_after_write) {
        if (c.peer_closed) {
          close(c);
          return;
        }
        // Lingering close: closing with unread bytes would reset the connection, and the
        // peer could lose the answer. Shut our side, then discard what comes until its EOF
        // (or the deadline).
        ::shutdown(c.socket.get(), SHUT_WR);
        c.draining = true;
        c.in.clear();
      }
    }
    if (c.draining) {
      char scratch[4096];
      ssize_t n = ::recv(c.socket.get(), scratch, sizeof(scratch), 0);
      if (n > 0 || (n < 0 && errno == EINTR)) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        watch(c, EPOLLIN | EPOLLRDHUP);
        return;
      }
      close(c);  // EOF or reset: done
      return;
    }
    if (c.awaiting) {  // until the response comes (complete_async), nothing is read
      watch(c, 0);
      return;
    }
    if (process(c)) continue;  // a request buffered whole (pipelined, or sent before an EOF)
    if (c.peer_closed) {
      close(c);
      return;
    }
    if (c.in.size() >= cap) {  // the parser refuses a request this large first; never spin on it
      close(c);
      return;
    }
    const size_t room = std::min(kReadChunk, cap - c.in.size());
    const size_t old = c.in.size();
    c.in.resize(old + room);
    ssize_t n = ::recv(c.socket.get(), c.in.data() + old, room, 0);
    c.in.resize(old + (n > 0 ? static_cast<size_t>(n) : 0));
    if (n > 0) continue;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      watch(c, EPOLLIN | EPOLLRDHUP);
      return;
    }
    if (n < 0) {  // reset
      close(c);
      return;
    }
    c.peer_closed = true;  // EOF: a request buffered whole is still answered, then it closes
  }
}

bool HttpServer::process(Connection& c) {
  if (c.close_after_write || c.awaiting || c.in.empty()) return false;
  HttpRequest request;
  HttpParse p = parse_http_request(c.in, options_.limits, request);
  if (p.state == HttpParse::State::kIncomplete) return false;
  if (p.state == HttpParse::State::kError) {
    bad_requests_.fetch_add(1, std::memory_order_relaxed);
    c.in.clear();
    respond(c, HttpResponse{p.status, "text/plain; charset=utf-8", p.reason + "\n", {}}, false, false);
    return true;
  }
  requests_.fetch_add(1, std::memory_order_relaxed);
  c.in.erase(0, p.consumed);
  HttpResponse response;
  if (route_request(c, request, response))
    respond(c, response, request.keep_alive && !c.peer_closed, request.method == "HEAD");
  return true;
}

bool HttpServer::route_request(Connection& c, const HttpRequest& request, HttpResponse& response) {
  auto by_path = routes_.find(request.path);
  if (by_path == routes_.end()) {
    response = HttpResponse{404, "text/plain; charset=utf-8", "not found\n", {}};
    return true;
  }
  auto route = by_path->second.find(request.method);
  if (route == by_path->second.end()) {
    std::string allow;
    for (const auto& [method, h] : by_path->second) allow += (allow.empty() ? "" : ", ") + method;
    response = HttpResponse{405, "text/plain; charset=utf-8", "method not allowed\n", {{"Allow", allow}}};
    return true;
  }
  try {
    if (route->second.handler) {
      response = route->second.handler(request);
      return true;
    }
    c.awaiting = true;
    c.await_keep_alive = request.keep_alive;
    c.await_head = request.method == "HEAD";
    c.deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
    std::shared_ptr<Completions> completions = completions_;
    const uint64_t id = c.id;
    route->second.async_handler(request, [completions, id](HttpResponse r) {
      std::lock_guard<std::mutex> lock(completions->mutex);
      if (!completions->open) return;
      completions->done.emplace_back(id, std::move(r));
      uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(completions->wake_fd, &one, sizeof(one));
    });
    return false;
  } catch (const std::exception& e) {
    c.awaiting = false;
    response = HttpResponse{500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n", {}};
    return true;
  }
}

void HttpServer::complete_async() {
  std::vector<std::pair<uint64_t, HttpResponse>> done;
  {
    std::lock_guard<std::mutex> lock(completions_->mutex);
    done.swap(completions_->done);
  }
  for (auto& [id, response] : done) {
    auto it = connections_.find(id);
    if (it == connections_.end() || !it->second->awaiting) continue;  // closed meanwhile
    Connection& c = *it->second;
    c.awaiting = false;
    respond(c, response, c.await_keep_alive && !c.peer_closed, c.await_head);
    try {
      drive(c);
    } catch (const std::exception&) {
      auto again = connections_.find(id);
      if (again != connections_.end()) close(*again->second);
    }
  }
}

void HttpServer::respond(Connection& c, const HttpResponse& response, bool keep_alive, bool head_request) {
  c.out = format_http_response(response, keep_alive, head_request);
  c.sent = 0;
  c.close_after_write = !keep_alive;
  c.deadline = Clock::now() + std::chrono::milliseconds(options_.timeout_ms);
}

void HttpServer::close(Connection& c) {
  if (!c.socket.valid()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.socket.get(), nullptr);
  c.socket.reset();
  open_.fetch_sub(1, std::memory_order_relaxed);
  auto it = connections_.find(c.id);
  closed_.push_back(std::move(it->second));  // freed after the event batch: callers may still hold c
  connections_.erase(it);
}

}  // namespace sparsecore::rpc
