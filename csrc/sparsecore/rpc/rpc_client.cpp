#include "sparsecore/rpc/rpc_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <vector>

#include "sparsecore/rpc/hmac_sha256.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::rpc {
namespace {

// Copies `bytes` from `src` into the segments, starting `offset` bytes into them.
void copy_into(const std::vector<iovec>& segs, size_t offset, const std::byte* src, size_t bytes) {
  for (const iovec& v : segs) {
    if (bytes == 0) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const size_t n = std::min(bytes, v.iov_len - offset);
    std::memcpy(static_cast<std::byte*>(v.iov_base) + offset, src, n);
    src += n;
    bytes -= n;
    offset = 0;
  }
}

// Copies the first `bytes` of the segments to `dst`.
void copy_from(const std::vector<iovec>& segs, std::byte* dst, size_t bytes) {
  for (const iovec& v : segs) {
    if (bytes == 0) break;
    const size_t n = std::min(bytes, v.iov_len);
    std::memcpy(dst, v.iov_base, n);
    dst += n;
    bytes -= n;
  }
}

constexpr size_t kReadChunk = 64 * 1024;

int ms_until(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return -1;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count() + 1;
  return left <= 0 ? 0 : static_cast<int>(std::min<int64_t>(left, INT_MAX));
}

std::string_view bytes_view(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

}  // namespace

// ------------------------------------------------------------------------------- RpcFuture
bool RpcFuture::ready() const {
  std::lock_guard<std::mutex> lock(client_->mu_);
  return state_->done;
}

Response RpcFuture::get() {
  SC_CHECK_ARG(state_ != nullptr, "RpcFuture::get on an empty future");
  auto s = std::move(state_);
  return client_->wait(*s);
}

// ------------------------------------------------------------------------------- RpcClient
RpcClient::RpcClient(const std::string& host, int port, ClientOptions options)
    : peer_(host + ":" + std::to_string(port)), reader_(options.max_frame_bytes) {
  SC_CHECK_ARG(options.reactor >= 0, "reactor must be >= 0, got ", options.reactor);
  SC_CHECK_ARG(options.call_timeout_ms >= 0, "call_timeout_ms must be >= 0, got ", options.call_timeout_ms);
  SC_CHECK_ARG(options.heartbeat_ms >= 0, "heartbeat_ms must be >= 0, got ", options.heartbeat_ms);
  SC_CHECK_ARG(options.poll_us >= 0 && options.poll_us <= 10'000'000, "poll_us must be in [0, 1e7], got ",
               options.poll_us);
  poll_us_ = options.poll_us;
  default_timeout_ms_ = options.call_timeout_ms;
  heartbeat_ms_ = options.heartbeat_ms;
  last_received_ = Clock::now();
  max_frame_bytes_ = options.max_frame_bytes;
  socket_ = connect_tcp(host, port, options.connect_timeout_ms);
  handshake(options);
}

RpcClient::~RpcClient() {
  std::lock_guard<std::mutex> lock(mu_);
  fail_all("client closed");
}

void RpcClient::read_frame_blocking(FrameHeader* h, PodVector<std::byte>* payload, int timeout_ms) {
  Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const std::byte* p = nullptr;
    HeaderCheck err;
    FrameReader::Next next = reader_.next(h, &p, &err);
    if (next == FrameReader::Next::kFrame) {
      payload->assign(p, p + h->payload_bytes);
      return;
    }
    if (next == FrameReader::Next::kError)
      throw RpcProtocolError("bad handshake frame from " + peer_ + ": " + header_check_message(err));
    pollfd pfd{socket_.get(), POLLIN, 0};
    int n = ::poll(&pfd, 1, ms_until(deadline));
    if (n == 0) throw RpcTimeout("handshake with " + peer_ + " timed out");
    if (n < 0 && errno == EINTR) continue;
    std::byte* dst = reader_.write_ptr(kReadChunk);
    ssize_t r = ::recv(socket_.get(), dst, reader_.write_room(), 0);
    if (r == 0) throw RpcConnectionError("connection closed by " + peer_ + " during the handshake");
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      throw RpcConnectionError("reading from " + peer_ + ": " + std::strerror(errno));
    }
    reader_.commit(static_cast<size_t>(r));
  }
}

void RpcClient::handshake(const ClientOptions& options) {
  FrameHeader h;
  PodVector<std::byte> payload;
  read_frame_blocking(&h, &payload, options.connect_timeout_ms);
  if (h.method != kMethodHello || payload.size() != sizeof(HelloPayload))
    throw RpcProtocolError("expected a hello frame from " + peer_);
  HelloPayload hello;
  std::memcpy(&hello, payload.data(), sizeof(hello));
  if (hello.token_required && options.token.empty())
    throw RpcAuthError("server " + peer_ + " requires a token and none was given");
  num_reactors_ = static_cast<int>(std::max<uint32_t>(1, hello.num_reactors));

  AuthPayload auth{};
  auth.reactor = static_cast<uint32_t>(options.reactor);
  auto nonce = random_nonce();
  std::memcpy(auth.client_nonce, nonce.data(), 16);
  if (!options.token.empty()) {
    Digest256 mac = hmac_sha256(
        options.token, {kClientMacLabel, bytes_view(hello.server_nonce, 16), bytes_view(auth.client_nonce, 16)});
    std::memcpy(auth.client_mac, mac.data(), 32);
  }
  FrameHeader out;
  out.method = kMethodAuth;
  out.payload_bytes = sizeof(auth);
  iovec seg{&auth, sizeof(auth)};
  send_frame(out, {&seg, 1});
  read_frame_blocking(&h, &payload, options.connect_timeout_ms);
  if (h.status != static_cast<uint32_t>(Status::kOk)) {
    std::string message(reinterpret_cast<const char*>(payload.data()), payload.size());
    throw RpcAuthError("server " + peer_ + " refused the connection: " + message);
  }
  if (h.method != kMethodAuth || payload.size() != sizeof(AuthReplyPayload))
    throw RpcProtocolError("expected an authentication reply from " + peer_);
  if (!options.token.empty()) {
    Digest256 expect = hmac_sha256(
        options.token, {kServerMacLabel, bytes_view(auth.client_nonce, 16), bytes_view(hello.server_nonce, 16)});
    Digest256 got;
    std::memcpy(got.data(), payload.data(), 32);
    if (!digests_equal(expect, got)) throw RpcAuthError("server " + peer_ + " does not know the token");
  }
}

std::string RpcClient::transport_stats(int timeout_ms) {
  Response r = call(kMethodTransportStats, {}, timeout_ms);
  return std::string(reinterpret_cast<const char*>(r.data.data()), r.bytes);
}

void RpcClient::close() {
  std::lock_guard<std::mutex> lock(mu_);
  fail_all(broken_ ? broken_reason_ : std::string("client closed"));
}

bool RpcClient::connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !broken_;
}

RpcFuture RpcClient::call_async(uint16_t method, std::span<const iovec> payload, int timeout_ms, void* recv_into,
                                size_t recv_capacity) {
  if (!recv_into || recv_capacity == 0) return call_async(method, payload, timeout_ms, std::span<const iovec>{});
  const iovec into{recv_into, recv_capacity};
  return call_async(method, payload, timeout_ms, {&into, 1});
}

RpcFuture RpcClient::call_async(uint16_t method, std::span<const iovec> payload, int timeout_ms,
                                std::span<const iovec> recv_into) {
  SC_CHECK_ARG(method < kFirstReservedMethod || method == kMethodPing || method == kMethodTransportStats, "method ",
               method, " is reserved");
  auto state = std::make_shared<detail::CallState>();
  state->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  state->method = method;
  for (const iovec& v : recv_into)
    if (v.iov_len) {
      state->recv_into.push_back(v);
      state->recv_capacity += v.iov_len;
    }
  int t = timeout_ms < 0 ? default_timeout_ms_ : timeout_ms;
  state->timeout_ms = static_cast<uint32_t>(t);
  if (t > 0) state->deadline = Clock::now() + std::chrono::milliseconds(t);
  FrameHeader h;
  h.method = method;
  h.request_id = state->id;
  h.timeout_ms = static_cast<uint32_t>(t);
  for (const iovec& v : payload) h.payload_bytes += v.iov_len;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) throw RpcConnectionError("connection to " + peer_ + " is closed: " + broken_reason_);
    pending_.emplace(state->id, state);
  }
  try {
    send_frame(h, payload);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(state->id);
    throw;
  }
  return RpcFuture(this, std::move(state));
}

void RpcClient::send_frame(const FrameHeader& h, std::span<const iovec> payload) {
  std::lock_guard<std::mutex> send_lock(send_mu_);
  std::vector<iovec> iov;
  iov.reserve(payload.size() + 1);
  iov.push_back({const_cast<FrameHeader*>(&h), kFrameHeaderBytes});
  for (const iovec& v : payload)
    if (v.iov_len) iov.push_back(v);
  size_t first = 0;
  while (first < iov.size()) {
    msghdr msg{};
    msg.msg_iov = iov.data() + first;
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    ssize_t n = ::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // The server may be waiting for us to read its replies (backpressure): read while
        // we wait for room, if no one else is reading.
        pollfd pfd{socket_.get(), POLLOUT | POLLIN, 0};
        ::poll(&pfd, 1, 100);
        if (pfd.revents & POLLIN) {
          std::unique_lock<std::mutex> lock(mu_);
          if (!reading_ && !broken_) {
            reading_ = true;
            lock.unlock();
            try {
              read_round(Clock::now());
            } catch (...) {
            }
            lock.lock();
            reading_ = false;
            cv_.notify_all();
          }
        }
        std::lock_guard<std::mutex> lock(mu_);
        if (broken_) throw RpcConnectionError("connection to " + peer_ + " is closed: " + broken_reason_);
        continue;
      }
      std::string reason = std::string("sending to ") + peer_ + ": " + std::strerror(errno);
      std::lock_guard<std::mutex> lock(mu_);
      fail_all(reason);
      throw RpcConnectionError(reason);
    }
    size_t written = static_cast<size_t>(n);
    while (written > 0 && first < iov.size()) {
      if (written >= iov[first].iov_len) {
        written -= iov[first].iov_len;
        ++first;
      } else {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + written;
        iov[first].iov_len -= written;
        written = 0;
      }
    }
  }
}

// The descriptor is shut down, never closed, before the destructor: another thread may be
// inside recv, poll or sendmsg on it (the reader role, or a sender waiting for room), and a
// closed number can be handed to the next socket or file this process opens. Shutting down
// wakes those calls (end of stream, EPIPE), and the number stays ours until no one can use it.
void RpcClient::fail_all(const std::string& reason) {
  if (!broken_) {
    broken_ = true;
    broken_reason_ = reason;
    ::shutdown(socket_.get(), SHUT_RDWR);
  }
  for (auto& [id, s] : pending_) {
    s->done = true;
    s->lost = true;
    s->error = reason;
  }
  pending_.clear();
  cv_.notify_all();
}

Response RpcClient::wait(detail::CallState& state) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!state.done) {
    if (broken_) {
      state.done = state.lost = true;
      state.error = broken_reason_;
      break;
    }
    if (Clock::now() >= state.deadline && !state.claimed) {
      pending_.erase(state.id);
      throw RpcTimeout("call of method " + std::to_string(state.method) + " to " + peer_ + " timed out after " +
                       std::to_string(state.timeout_ms) + " ms");
    }
    if (!reading_) {
      reading_ = true;
      lock.unlock();
      try {
        read_round(heartbeat(state.deadline));
      } catch (...) {
        lock.lock();
        reading_ = false;
        cv_.notify_all();
        throw;
      }
      lock.lock();
      reading_ = false;
      cv_.notify_all();
    } else {
      if (state.claimed || state.deadline == Clock::time_point::max())
        cv_.wait(lock);
      else
        cv_.wait_until(lock, state.deadline);
    }
  }
  if (state.lost) throw RpcConnectionError("connection to " + peer_ + " lost: " + state.error);
  if (state.status != Status::kOk) throw_status(state.status, state.error + " [" + peer_ + "]");
  return std::move(state.response);
}

// Liveness of a connected peer (heartbeat_ms > 0), checked by the reading thread: after
// heartbeat_ms without a byte from the server a ping goes out; if another heartbeat_ms passes
// with nothing at all, the server is taken for dead (stopped, hung, or cut off without a
// FIN) and every call fails with RpcConnectionError instead of waiting for ever.
// Returns how long the next read may wait.
Clock::time_point RpcClient::heartbeat(Clock::time_point deadline) {
  if (heartbeat_ms_ <= 0) return deadline;
  const auto period = std::chrono::milliseconds(heartbeat_ms_);
  Clock::time_point now = Clock::now();
  if (ping_sent_ != Clock::time_point{} && now - ping_sent_ >= period) {
    std::string reason =
        "no reply from " + peer_ + " to a heartbeat within " + std::to_string(heartbeat_ms_) + " ms (silent for " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - last_received_).count()) +
        " ms): the server is not responding";
    std::lock_guard<std::mutex> lock(mu_);
    fail_all(reason);
    throw RpcConnectionError(reason);
  }
  if (ping_sent_ == Clock::time_point{} && now - last_received_ >= period) {
    FrameHeader h;
    h.method = kMethodPing;
    h.request_id = next_id_.fetch_add(1, std::memory_order_relaxed);  // no one waits: its reply is dropped
    send_frame(h, {});
    ping_sent_ = now;
  }
  Clock::time_point check = (ping_sent_ == Clock::time_point{} ? last_received_ : ping_sent_) + period;
  return std::min(deadline, check);
}

void RpcClient::recv_exact(const std::vector<iovec>& segs, size_t offset, size_t bytes) {
  for (const iovec& v : segs) {
    if (bytes == 0) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const size_t n = std::min(bytes, v.iov_len - offset);
    recv_exact(static_cast<std::byte*>(v.iov_base) + offset, n);
    bytes -= n;
    offset = 0;
  }
}

void RpcClient::recv_exact(std::byte* dst, size_t bytes) {
  while (bytes > 0) {
    ssize_t r = ::recv(socket_.get(), dst, bytes, 0);
    if (r > 0) {
      dst += r;
      bytes -= static_cast<size_t>(r);
      received();
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // The rest of a frame whose header has arrived: a healthy peer sends it at once.
      int n = wait_readable(Clock::now() + std::chrono::seconds(30));
      if (n == 0) throw RpcConnectionError("peer stalled in the middle of a frame");
      continue;
    }
    throw RpcConnectionError(r == 0 ? "connection closed by the server" : std::strerror(errno));
  }
}

int RpcClient::wait_readable(Clock::time_point deadline) {
  pollfd pfd{socket_.get(), POLLIN, 0};
  if (poll_us_ > 0) {
    const Clock::time_point until = std::min(deadline, Clock::now() + std::chrono::microseconds(poll_us_));
    do {
      int n = ::poll(&pfd, 1, 0);
      if (n != 0) return n;
    } while (Clock::now() < until);
  }
  return ::poll(&pfd, 1, ms_until(deadline));
}

void RpcClient::deliver(const FrameHeader& h, const std::byte* payload) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pending_.find(h.request_id);
  if (it == pending_.end()) return;  // timed out and abandoned by its caller
  detail::CallState& s = *it->second;
  s.status = static_cast<Status>(h.status);
  if (s.status != Status::kOk) {
    s.error.assign(reinterpret_cast<const char*>(payload), h.payload_bytes);
  } else if (!s.claimed) {
    s.response.bytes = h.payload_bytes;
    if (!s.recv_into.empty() && h.payload_bytes <= s.recv_capacity) {
      copy_into(s.recv_into, 0, payload, h.payload_bytes);
      s.response.in_caller_buffer = true;
    } else {
      s.response.data.assign(payload, payload + h.payload_bytes);
    }
  }
  s.done = true;
  pending_.erase(it);
  cv_.notify_all();
}

// One call in flight whose reply goes to the caller's memory (a pull): one readv puts the
// header aside and the payload straight into place, with no copy through the read buffer.
// Anything else that arrives (a stale reply of an abandoned call, an error) is moved into
// the frame reader and parsed as usual.
RpcClient::DirectRead RpcClient::read_direct() {
  std::shared_ptr<detail::CallState> target;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.size() != 1) return DirectRead::kNotApplicable;
    const auto& s = pending_.begin()->second;
    if (s->recv_into.empty() || s->claimed) return DirectRead::kNotApplicable;
    target = s;
    target->claimed = true;
  }
  auto release = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    target->claimed = false;
  };
  FrameHeader h;
  std::vector<iovec> iov{{&h, kFrameHeaderBytes}};
  iov.insert(iov.end(), target->recv_into.begin(),
             target->recv_into.begin() + static_cast<std::ptrdiff_t>(std::min<size_t>(target->recv_into.size(), 63)));
  ssize_t r = ::readv(socket_.get(), iov.data(), static_cast<int>(iov.size()));
  if (r <= 0) {
    release();
    if (r == 0) throw RpcConnectionError("connection closed by the server");
    if (errno == EAGAIN || errno == EINTR) return DirectRead::kDone;
    throw RpcConnectionError(std::strerror(errno));
  }
  const size_t got = static_cast<size_t>(r);
  received();
  if (got >= kFrameHeaderBytes) {
    const size_t in_place = got - kFrameHeaderBytes;
    if (check_header(h, max_frame_bytes_) == HeaderCheck::kOk && h.request_id == target->id && h.status == 0 &&
        h.payload_bytes <= target->recv_capacity && in_place <= h.payload_bytes) {
      try {
        recv_exact(target->recv_into, in_place, static_cast<size_t>(h.payload_bytes) - in_place);
      } catch (...) {
        release();
        throw;
      }
      std::lock_guard<std::mutex> lock(mu_);
      target->claimed = false;
      target->response.bytes = static_cast<size_t>(h.payload_bytes);
      target->response.in_caller_buffer = true;
      target->status = Status::kOk;
      target->done = true;
      pending_.erase(target->id);
      cv_.notify_all();
      return DirectRead::kDone;
    }
  }
  std::byte* dst = reader_.write_ptr(got);
  std::memcpy(dst, &h, std::min(got, kFrameHeaderBytes));
  if (got > kFrameHeaderBytes) copy_from(target->recv_into, dst + kFrameHeaderBytes, got - kFrameHeaderBytes);
  reader_.commit(got);
  release();
  return DirectRead::kBuffered;
}

void RpcClient::read_round(Clock::time_point deadline) {
  try {
    int n = wait_readable(deadline);
    if (n <= 0) return;  // deadline (or EINTR): the caller re-checks
    DirectRead direct = reader_.buffered() == 0 ? read_direct() : DirectRead::kNotApplicable;
    if (direct == DirectRead::kDone) return;
    if (direct == DirectRead::kNotApplicable) {
      std::byte* dst = reader_.write_ptr(kReadChunk);
      ssize_t r = ::recv(socket_.get(), dst, reader_.write_room(), 0);
      if (r == 0) throw RpcConnectionError("connection closed by the server");
      if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        throw RpcConnectionError(std::strerror(errno));
      }
      received();
      reader_.commit(static_cast<size_t>(r));
    }
    for (;;) {
      FrameHeader h;
      size_t available = 0;
      HeaderCheck err;
      FrameReader::Next next = reader_.peek(&h, &available, &err);
      if (next == FrameReader::Next::kNeedMore) return;
      if (next == FrameReader::Next::kError)
        throw RpcProtocolError(std::string("bad frame from the server: ") + header_check_message(err));
      size_t payload = static_cast<size_t>(h.payload_bytes);
      if (available == payload) {
        deliver(h, reader_.front() + kFrameHeaderBytes);
        reader_.consume(kFrameHeaderBytes + payload);
        continue;
      }
      // Partial payload: read the rest straight into the caller's buffer when it has one.
      std::shared_ptr<detail::CallState> target;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = pending_.find(h.request_id);
        if (it != pending_.end() && h.status == 0 && !it->second->recv_into.empty() &&
            payload <= it->second->recv_capacity) {
          target = it->second;
          target->claimed = true;
        }
      }
      if (!target) {
        reader_.write_ptr(kFrameHeaderBytes + payload - reader_.buffered());
        return;
      }
      copy_into(target->recv_into, 0, reader_.front() + kFrameHeaderBytes, available);
      reader_.consume(kFrameHeaderBytes + available);
      recv_exact(target->recv_into, available, payload - available);
      std::lock_guard<std::mutex> lock(mu_);
      target->claimed = false;
      target->response.bytes = payload;
      target->response.in_caller_buffer = true;
      target->status = Status::kOk;
      target->done = true;
      pending_.erase(h.request_id);
      cv_.notify_all();
      return;
    }
  } catch (const RpcError& e) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, s] : pending_) s->claimed = false;
    fail_all(e.what());
  }
}

}  // namespace sparsecore::rpc
