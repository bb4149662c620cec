// The RPC transport over loopback: calls, pipelining, limits, faults, authentication.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include "sparsecore/rpc/hmac_sha256.h"
#include "sparsecore/rpc/rpc_client.h"
#include "sparsecore/rpc/rpc_error.h"
#include "sparsecore/rpc/rpc_server.h"

using namespace sparsecore;
using namespace sparsecore::rpc;

namespace {

constexpr uint16_t kEcho = 1;
constexpr uint16_t kSlow = 2;
constexpr uint16_t kThrows = 3;
constexpr uint16_t kReactorOf = 4;
constexpr uint16_t kNeverReplies = 5;
constexpr uint16_t kOutOfMemory = 6;
constexpr uint16_t kReplyOfSize = 7;  // payload: uint64 size of the reply

std::unique_ptr<RpcServer> start_server(ServerOptions o = {}) {
  auto s = std::make_unique<RpcServer>(o);
  s->register_method(kEcho, [](const Request& r, Reply& reply) { reply.append(r.payload.data(), r.payload.size()); });
  s->register_method(kSlow,
                     [](const Request&, Reply&) { std::this_thread::sleep_for(std::chrono::milliseconds(300)); });
  s->register_method(kThrows, [](const Request&, Reply&) { SC_CHECK_ARG(false, "argument 'x' is bad"); });
  s->register_method(kReactorOf, [](const Request& r, Reply& reply) {
    int32_t i = r.reactor;
    reply.append(&i, sizeof(i));
  });
  s->register_method(kNeverReplies, [](const Request&, Reply& reply) { reply.defer(); });
  s->register_method(kOutOfMemory, [](const Request&, Reply&) { throw std::bad_alloc(); });
  s->register_method(kReplyOfSize, [](const Request& r, Reply& reply) {
    uint64_t n = 0;
    std::memcpy(&n, r.payload.data(), std::min(r.payload.size(), sizeof(n)));
    reply.body.resize(n);
  });
  s->start();
  return s;
}

std::string as_string(const Response& r) { return std::string(reinterpret_cast<const char*>(r.data.data()), r.bytes); }

Response echo(RpcClient& c, const std::string& s, int timeout_ms = -1) {
  iovec seg{const_cast<char*>(s.data()), s.size()};
  return c.call(kEcho, {&seg, 1}, timeout_ms);
}

// A raw socket past the hello frame, for sending hand-made frames.
struct RawPeer {
  UniqueFd sock;
  explicit RawPeer(int port) : sock(connect_tcp("127.0.0.1", port, 2000)) {
    FrameHeader h;
    read_exact(&h, sizeof(h));
    std::vector<char> hello(h.payload_bytes);
    read_exact(hello.data(), hello.size());
  }
  void send_bytes(const void* p, size_t n) { ASSERT_EQ(::send(sock.get(), p, n, MSG_NOSIGNAL), (ssize_t)n); }
  bool read_exact(void* dst, size_t n) {
    auto* p = static_cast<char*>(dst);
    while (n > 0) {
      pollfd pfd{sock.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 5000) <= 0) return false;
      ssize_t r = ::recv(sock.get(), p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= r;
    }
    return true;
  }
  // The next frame's status, or -1 when the connection closed first.
  int64_t next_status() {
    FrameHeader h;
    if (!read_exact(&h, sizeof(h))) return -1;
    std::vector<char> body(h.payload_bytes);
    if (!read_exact(body.data(), body.size())) return -1;
    return h.status;
  }
  bool closed_by_peer() {
    char c;
    return !read_exact(&c, 1);
  }
};

}  // namespace

TEST(Rpc, EchoRoundTrip) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  EXPECT_EQ(as_string(echo(c, "hello")), "hello");
  EXPECT_EQ(as_string(echo(c, "")), "");
}

TEST(Rpc, PipelinedCallsMatchById) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  std::vector<std::string> msgs;
  std::vector<RpcFuture> futures;
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 64; ++i) msgs.push_back(std::string(rng() % 70000, static_cast<char>('a' + i % 26)));
  for (auto& m : msgs) {
    iovec seg{m.data(), m.size()};
    futures.push_back(c.call_async(kEcho, {&seg, 1}));
  }
  for (int i = 63; i >= 0; --i) EXPECT_EQ(as_string(futures[i].get()), msgs[i]);
}

TEST(Rpc, ManySegmentsAreSentBackToBack) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  std::vector<int64_t> a = {1, 2, 3};
  std::vector<float> b = {4.f, 5.f};
  iovec segs[2] = {{a.data(), 24}, {b.data(), 8}};
  std::vector<char> out(32);
  Response r = c.call(kEcho, segs, -1, out.data(), out.size());
  ASSERT_TRUE(r.in_caller_buffer);
  EXPECT_EQ(std::memcmp(out.data(), a.data(), 24), 0);
  EXPECT_EQ(std::memcmp(out.data() + 24, b.data(), 8), 0);
}

TEST(Rpc, ReplyReadIntoCallerBuffer) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  std::vector<uint8_t> in(300000), out(300000);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 7);
  iovec seg{in.data(), in.size()};
  Response r = c.call(kEcho, {&seg, 1}, -1, out.data(), out.size());
  EXPECT_TRUE(r.in_caller_buffer);
  EXPECT_EQ(in, out);
}

TEST(Rpc, ConcurrentCallersFromManyThreads) {
  ServerOptions o;
  o.num_reactors = 2;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        std::string m = std::to_string(t) + ":" + std::to_string(i);
        if (as_string(echo(c, m)) == m) ok++;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 800);
}

TEST(Rpc, ClientChoosesItsReactor) {
  ServerOptions o;
  o.num_reactors = 3;
  auto s = start_server(o);
  for (int want = 0; want < 5; ++want) {
    ClientOptions co;
    co.reactor = want;
    RpcClient c("127.0.0.1", s->port(), co);
    EXPECT_EQ(c.num_reactors(), 3);
    Response r = c.call(kReactorOf, {});
    int32_t got;
    std::memcpy(&got, r.data.data(), 4);
    EXPECT_EQ(got, want % 3);
  }
}

TEST(Rpc, HandlerErrorsArriveTyped) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  EXPECT_THROW(c.call(kThrows, {}), InvalidArgument);
  EXPECT_THROW(c.call(77, {}), RpcUnknownMethod);
  EXPECT_EQ(as_string(echo(c, "still fine")), "still fine");
}

TEST(Rpc, SlowServerExceedsDeadline) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(c.call(kSlow, {}, 50), RpcTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // The late reply is discarded; the connection goes on.
  EXPECT_EQ(as_string(echo(c, "next")), "next");
}

TEST(Rpc, TokenIsRequiredAndChecked) {
  ServerOptions o;
  o.token = "s3cret";
  auto s = start_server(o);
  ClientOptions good;
  good.token = "s3cret";
  RpcClient c("127.0.0.1", s->port(), good);
  EXPECT_EQ(as_string(echo(c, "x")), "x");
  ClientOptions bad;
  bad.token = "guess";
  EXPECT_THROW(RpcClient("127.0.0.1", s->port(), bad), RpcAuthError);
  EXPECT_THROW(RpcClient("127.0.0.1", s->port()), RpcAuthError);
}

TEST(Rpc, BadMagicGetsErrorAndCloseOthersUnaffected) {
  auto s = start_server();
  RpcClient healthy("127.0.0.1", s->port());
  RawPeer raw(s->port());
  FrameHeader h;
  h.magic = 0xdeadbeef;
  raw.send_bytes(&h, sizeof(h));
  EXPECT_EQ(raw.next_status(), static_cast<int64_t>(Status::kBadFrame));
  EXPECT_TRUE(raw.closed_by_peer());
  EXPECT_EQ(as_string(echo(healthy, "ok")), "ok");
  EXPECT_GE(s->frames_rejected(), 1u);
}

TEST(Rpc, OversizedFrameRejected) {
  ServerOptions o;
  o.max_frame_bytes = 4096;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  std::string big(5000, 'x');
  EXPECT_THROW(echo(c, big), RpcError);
  RpcClient again("127.0.0.1", s->port());
  EXPECT_EQ(as_string(echo(again, std::string(4000, 'y'))), std::string(4000, 'y'));
}

TEST(Rpc, UnknownVersionRejected) {
  auto s = start_server();
  RawPeer raw(s->port());
  FrameHeader h;
  h.version = 99;
  raw.send_bytes(&h, sizeof(h));
  EXPECT_EQ(raw.next_status(), static_cast<int64_t>(Status::kBadFrame));
}

TEST(Rpc, UnauthenticatedRequestRejected) {
  auto s = start_server();
  RawPeer raw(s->port());
  FrameHeader h;
  h.method = kEcho;
  raw.send_bytes(&h, sizeof(h));
  EXPECT_EQ(raw.next_status(), static_cast<int64_t>(Status::kAuthFailed));
  EXPECT_TRUE(raw.closed_by_peer());
}

TEST(Rpc, TruncatedFrameThenDisconnectLeavesServerServing) {
  auto s = start_server();
  {
    RawPeer raw(s->port());
    FrameHeader h;
    h.method = kMethodAuth;
    h.payload_bytes = 1000;
    raw.send_bytes(&h, sizeof(h));
    raw.send_bytes("partial", 7);
  }  // closed mid-frame
  RpcClient c("127.0.0.1", s->port());
  EXPECT_EQ(as_string(echo(c, "alive")), "alive");
}

TEST(Rpc, ServerDeathFailsPendingAndLaterCalls) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  RpcFuture pending = c.call_async(kNeverReplies, {});
  EXPECT_EQ(as_string(echo(c, "x")), "x");  // the request has reached the server
  s->stop();
  EXPECT_THROW(pending.get(), RpcConnectionError);
  EXPECT_THROW(echo(c, "x"), RpcConnectionError);
  EXPECT_FALSE(c.connected());
}

// The descriptors this process has open (entries of /proc/self/fd, less the listing's own).
std::vector<int> open_descriptors() {
  std::vector<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return fds;
  const int own = ::dirfd(dir);
  while (const dirent* e = ::readdir(dir))
    if (e->d_name[0] != '.' && std::atoi(e->d_name) != own) fds.push_back(std::atoi(e->d_name));
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  return fds;
}

TEST(Rpc, ABrokenConnectionKeepsItsDescriptorUntilTheClientIsDestroyed) {
  // A thread waits on a call (the reader role) while the connection fails under it. Closing
  // the descriptor at that moment would let the next socket or file this process opens take
  // its number while that thread, or a sender waiting for room, still uses it: the client
  // shuts it down instead and closes it only when destroyed.
  auto s = start_server();
  const std::vector<int> before = open_descriptors();
  auto c = std::make_unique<RpcClient>("127.0.0.1", s->port());
  std::vector<int> after = open_descriptors(), added;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::back_inserter(added));
  int fd = -1;  // the client's end: its peer is the server's port (the server's end is added too)
  for (int f : added) {
    sockaddr_in peer{};
    socklen_t peer_len = sizeof(peer);
    if (::getpeername(f, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0 && ntohs(peer.sin_port) == s->port())
      fd = f;
  }
  ASSERT_GE(fd, 0);
  RpcFuture pending = c->call_async(kNeverReplies, {});
  EXPECT_EQ(as_string(echo(*c, "x")), "x");
  std::thread waiter([&] { EXPECT_THROW(pending.get(), RpcConnectionError); });
  s->stop();
  waiter.join();
  EXPECT_FALSE(c->connected());
  EXPECT_THROW(echo(*c, "y"), RpcConnectionError);
  int type = 0;
  socklen_t len = sizeof(type);
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len), 0) << "descriptor closed while the client lives";
  EXPECT_EQ(type, SOCK_STREAM);
  c->close();
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len), 0) << "close() shuts down, the destructor closes";
  c.reset();
  EXPECT_EQ(::fcntl(fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

TEST(Rpc, ConnectRefusedIsConnectionError) {
  int port;
  {
    auto s = start_server();
    port = s->port();
  }
  EXPECT_THROW(RpcClient("127.0.0.1", port), RpcConnectionError);
}

TEST(Rpc, BackpressureWithManyLargeRepliesInFlight) {
  ServerOptions o;
  o.connection_memory_bytes = 1 << 20;  // far below what is in flight
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  std::string m(256 * 1024, 'z');
  std::vector<RpcFuture> futures;
  for (int i = 0; i < 40; ++i) {
    iovec seg{m.data(), m.size()};
    futures.push_back(c.call_async(kEcho, {&seg, 1}));
  }
  for (auto& f : futures) EXPECT_EQ(f.get().bytes, m.size());
}

TEST(Rpc, IdleConnectionsAreClosed) {
  ServerOptions o;
  o.idle_timeout_ms = 100;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  EXPECT_EQ(as_string(echo(c, "x")), "x");
  for (int i = 0; i < 100 && s->connections_open() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s->connections_open(), 0u);
  EXPECT_THROW(echo(c, "y"), RpcConnectionError);
}

TEST(Rpc, HmacSha256KnownAnswer) {
  // RFC 4231 test case 2.
  Digest256 d = hmac_sha256("Jefe", {"what do ya want ", "for nothing?"});
  const uint8_t want[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
                            0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
                            0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
  EXPECT_EQ(std::memcmp(d.data(), want, 32), 0);
  Digest256 e = sha256("abc", 3);
  EXPECT_EQ(e[0], 0xba);
  EXPECT_EQ(e[31], 0xad);
}

TEST(Rpc, HeartbeatKeepsACallWaitingOnALiveServer) {
  // The server holds the reply back but answers pings: the call ends by its own deadline.
  auto s = start_server();
  ClientOptions o;
  o.heartbeat_ms = 40;
  RpcClient c("127.0.0.1", s->port(), o);
  EXPECT_THROW(c.call(kNeverReplies, {}, 400), RpcTimeout);
  EXPECT_TRUE(c.connected());
  EXPECT_NO_THROW(c.ping(1000));
}

TEST(Rpc, PollModeServesPipelinedLargeRepliesAndKeepsDeadlines) {
  // Server and client both poll (poll_us), through large pipelined replies (partial reads
  // into the caller's buffers), an idle gap longer than the poll window (the reactor goes back
  // to sleeping and must wake for the next request), and a call that misses its deadline.
  ServerOptions so;
  so.poll_us = 300;
  so.num_reactors = 2;
  auto s = start_server(so);
  ClientOptions co;
  co.poll_us = 300;
  RpcClient c("127.0.0.1", s->port(), co);
  std::mt19937 rng(std::random_device{}());
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<uint8_t>> in(8), out(8);
    std::vector<RpcFuture> futures;
    for (size_t i = 0; i < in.size(); ++i) {
      in[i].resize(1 + rng() % 200000);
      for (auto& b : in[i]) b = static_cast<uint8_t>(rng());
      out[i].resize(in[i].size());
      iovec seg{in[i].data(), in[i].size()};
      futures.push_back(c.call_async(kEcho, {&seg, 1}, -1, out[i].data(), out[i].size()));
    }
    for (size_t i = 0; i < in.size(); ++i) {
      Response r = futures[i].get();
      EXPECT_TRUE(r.in_caller_buffer);
      EXPECT_EQ(in[i], out[i]);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // past the poll window
  }
  EXPECT_THROW(c.call(kSlow, {}, 50), RpcTimeout);
  EXPECT_EQ(as_string(echo(c, "after")), "after");
  ServerOptions bad;
  bad.poll_us = -1;
  EXPECT_THROW(RpcServer{bad}, InvalidArgument);
  ClientOptions bad_client;
  bad_client.poll_us = -1;
  EXPECT_THROW(RpcClient("127.0.0.1", s->port(), bad_client), InvalidArgument);
}

// ------------------------------------------------------------ what a peer can make it hold
namespace {

bool eventually(const std::function<bool()>& condition) {
  for (int i = 0; i < 500; ++i) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

}  // namespace

TEST(RpcLimits, FrameReaderDiscardSkipsBufferedAndLaterBytes) {
  FrameReader reader(1 << 20);
  FrameHeader first, second;
  first.payload_bytes = 10000;
  second.request_id = 42;
  std::string stream(reinterpret_cast<const char*>(&first), sizeof(first));
  stream += std::string(10000, 'x');
  stream.append(reinterpret_cast<const char*>(&second), sizeof(second));
  size_t fed = 100;  // the header and part of the refused payload
  std::memcpy(reader.write_ptr(fed), stream.data(), fed);
  reader.commit(fed);
  FrameHeader h;
  size_t available = 0;
  HeaderCheck err;
  ASSERT_EQ(reader.peek(&h, &available, &err), FrameReader::Next::kFrame);
  reader.discard(sizeof(h) + h.payload_bytes);
  EXPECT_LE(reader.capacity(), 4096u);  // nothing was sized for the refused frame
  std::memcpy(reader.write_ptr(stream.size() - fed), stream.data() + fed, stream.size() - fed);
  reader.commit(stream.size() - fed);
  const std::byte* payload = nullptr;
  ASSERT_EQ(reader.next(&h, &payload, &err), FrameReader::Next::kFrame);
  EXPECT_EQ(h.request_id, 42u);
  EXPECT_TRUE(reader.release_if_idle(0));
  EXPECT_EQ(reader.capacity(), 0u);
}

TEST(RpcLimits, FrameReaderHoldsExactlyTheFrame) {
  FrameReader reader(1 << 30);
  FrameHeader h;
  h.payload_bytes = 5 << 20;
  std::memcpy(reader.write_ptr(sizeof(h)), &h, sizeof(h));
  reader.commit(sizeof(h));
  const std::byte* payload = nullptr;
  HeaderCheck err;
  ASSERT_EQ(reader.next(&h, &payload, &err), FrameReader::Next::kNeedMore);
  EXPECT_EQ(reader.capacity(), sizeof(h) + (5u << 20));  // not rounded up to a power of two
}

TEST(RpcLimits, OversizeHandshakeFrameClosesWithoutReservingMemory) {
  auto s = start_server();
  RawPeer raw(s->port());
  FrameHeader h;
  h.method = kMethodAuth;
  h.payload_bytes = 32 << 20;
  raw.send_bytes(&h, sizeof(h));
  EXPECT_EQ(raw.next_status(), static_cast<int64_t>(Status::kAuthFailed));
  EXPECT_TRUE(raw.closed_by_peer());
  EXPECT_EQ(s->transport_stats().memory_reserved_bytes, 0u);
}

TEST(RpcLimits, ResponseFrameBeforeAuthClosesTheConnection) {
  auto s = start_server();
  RawPeer raw(s->port());
  FrameHeader h;
  h.flags = kFlagResponse;
  h.payload_bytes = 100;
  raw.send_bytes(&h, sizeof(h));
  raw.send_bytes(std::string(100, 'r').data(), 100);
  EXPECT_EQ(raw.next_status(), static_cast<int64_t>(Status::kAuthFailed));
  EXPECT_TRUE(raw.closed_by_peer());
}

TEST(RpcLimits, BytesThenShutdownInOneSegmentCloseTheConnection) {
  ServerOptions o;
  o.handshake_timeout_ms = 0;  // the EOF alone must reclaim them
  auto s = start_server(o);
  for (int i = 0; i < 20; ++i) {
    RawPeer raw(s->port());
    int one = 1;
    ::setsockopt(raw.sock.get(), IPPROTO_TCP, TCP_CORK, &one, sizeof(one));
    raw.send_bytes("SCRP", 4);
  }  // closed: the FIN leaves with the corked bytes
  EXPECT_TRUE(eventually([&] { return s->connections_open() == 0; }));
  RpcClient c("127.0.0.1", s->port());
  EXPECT_EQ(as_string(echo(c, "alive")), "alive");
}

TEST(RpcLimits, SilentUnauthenticatedConnectionTimesOut) {
  ServerOptions o;
  o.handshake_timeout_ms = 100;
  auto s = start_server(o);
  RawPeer raw(s->port());
  EXPECT_TRUE(eventually([&] { return s->transport_stats().handshake_timeouts == 1; }));
  EXPECT_TRUE(raw.closed_by_peer());
  RpcClient c("127.0.0.1", s->port());  // an authenticated connection is not subject to it
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(as_string(echo(c, "x")), "x");
}

TEST(RpcLimits, IdleTimeoutSparesAConnectionWaitingForADeferredReply) {
  ServerOptions o;
  o.idle_timeout_ms = 50;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  RpcFuture pending = c.call_async(kNeverReplies, {});
  EXPECT_EQ(as_string(echo(c, "x")), "x");
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(s->transport_stats().idle_timeouts, 0u);
  EXPECT_TRUE(c.connected());
}

TEST(RpcLimits, OutOfMemoryInAHandlerIsAnErrorReply) {
  auto s = start_server();
  RpcClient c("127.0.0.1", s->port());
  try {
    c.call(kOutOfMemory, {});
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_NE(std::string(e.what()).find("out of memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(as_string(echo(c, "still")), "still");
}

TEST(RpcLimits, ReplyAboveTheFrameLimitBecomesAnError) {
  ServerOptions o;
  o.max_frame_bytes = 1 << 20;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  uint64_t size = (1 << 20) + 1;
  iovec seg{&size, sizeof(size)};
  EXPECT_THROW(c.call(kReplyOfSize, {&seg, 1}), RpcProtocolError);
  size = 1 << 20;
  EXPECT_EQ(c.call(kReplyOfSize, {&seg, 1}).bytes, size);
}

TEST(RpcLimits, RequestAboveTheMemoryBudgetIsRefusedAndTheConnectionGoesOn) {
  ServerOptions o;
  o.memory_budget_bytes = 2 << 20;
  auto s = start_server(o);
  RpcClient c("127.0.0.1", s->port());
  std::string big(4 << 20, 'b');
  try {
    echo(c, big);
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_NE(std::string(e.what()).find("memory budget"), std::string::npos) << e.what();
  }
  EXPECT_EQ(as_string(echo(c, "after")), "after");
  std::string fits(2 << 20, 'f');  // above the resident buffer, within the budget
  EXPECT_EQ(echo(c, fits).bytes, fits.size());
  EXPECT_EQ(s->transport_stats().memory_refusals, 1u);
  // Returned once each frame was handled (just after its reply left).
  EXPECT_TRUE(eventually([&] { return s->transport_stats().memory_reserved_bytes == 0; }));
}
