// The HTTP/1.1 request parser on bytes alone, TableStats' generated forms, and HttpServer over
// loopback: routing, keep-alive, limits, deadlines, connection reclaiming.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/rpc/http_request.h"
#include "sparsecore/rpc/http_server.h"
#include "sparsecore/rpc/socket.h"
#include "sparsecore/table/table_stats.h"

using namespace sparsecore;
using namespace sparsecore::rpc;

namespace {

HttpParse parse(const std::string& text, HttpRequest& out, HttpLimits limits = {}) {
  return parse_http_request(text, limits, out);
}

int error_status(const std::string& text, HttpLimits limits = {}) {
  HttpRequest r;
  HttpParse p = parse(text, r, limits);
  return p.state == HttpParse::State::kError ? p.status : 0;
}

TEST(HttpParser, ParsesARequestWithQueryHeadersAndBody) {
  HttpRequest r;
  std::string text = "POST /predict?model=a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A:  b \r\n\r\nabcNEXT";
  HttpParse p = parse(text, r);
  ASSERT_EQ(p.state, HttpParse::State::kComplete);
  EXPECT_EQ(p.consumed, text.size() - 4);
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/predict");
  EXPECT_EQ(r.query, "model=a");
  EXPECT_EQ(r.body, "abc");
  ASSERT_NE(r.header("x-a"), nullptr);
  EXPECT_EQ(*r.header("x-a"), "b");
  EXPECT_TRUE(r.keep_alive);
}

TEST(HttpParser, EveryPrefixOfAValidRequestIsIncomplete) {
  std::string text = "GET /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok";
  for (size_t n = 0; n < text.size(); ++n) {
    HttpRequest r;
    EXPECT_EQ(parse(text.substr(0, n), r).state, HttpParse::State::kIncomplete) << n;
  }
}

TEST(HttpParser, KeepAliveFollowsVersionAndConnectionHeader) {
  HttpRequest r;
  ASSERT_EQ(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n", r).state, HttpParse::State::kComplete);
  EXPECT_FALSE(r.keep_alive);
  ASSERT_EQ(parse("GET / HTTP/1.0\r\n\r\n", r).state, HttpParse::State::kComplete);
  EXPECT_FALSE(r.keep_alive);
  ASSERT_EQ(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", r).state, HttpParse::State::kComplete);
  EXPECT_TRUE(r.keep_alive);
}

TEST(HttpParser, RefusesMalformedRequestsWithTheirStatus) {
  EXPECT_EQ(error_status("GET /\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET metrics HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\n\r\n"), 400);                        // no Host
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);  // two
  EXPECT_EQ(error_status("GET / HTTP/1.1\nHost: h\n\n"), 400);                   // bare LF
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"), 501);
  EXPECT_EQ(error_status(std::string("GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n")), 400);
}

TEST(HttpParser, RefusesOversizedHeadsBodiesAndHeaderCountsBeforeTheyEnd) {
  HttpLimits limits;
  limits.max_header_bytes = 128;
  limits.max_headers = 3;
  limits.max_body_bytes = 10;
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nX: " + std::string(200, 'a'), limits), 431);  // no end yet
  EXPECT_EQ(error_status("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits), 431);
  EXPECT_EQ(error_status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", limits), 413);
  EXPECT_EQ(error_status("\r\r\n", limits), 400);  // a bare CR before any request line
}

TEST(TableStats, JsonRoundTripSumAndFieldOrder) {
  TableStats a;
  a.rows = 3;
  a.bytes = 100;
  a.admitted = 2;
  a.dropped_gradients = 7;
  TableStats b = TableStats::from_json(a.to_json());
  b += a;
  EXPECT_EQ(b.rows, 6);
  EXPECT_EQ(b.dropped_gradients, 14);
  std::string names;
  a.for_each([&](const char* name, const char*, const char*, int64_t) { names += std::string(name) + ","; });
  EXPECT_EQ(names.rfind("rows,bytes,", 0), 0u);
  EXPECT_EQ(TableStats::from_json(Json::object()).rows, 0);  // missing fields read as 0
}

// A loopback client (non-blocking: the helpers below poll before each call).
int connect_to(int port) { return connect_tcp("127.0.0.1", port, 5000).release(); }

std::string read_until_close(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 30'000) <= 0) break;  // bounded: the server closes long before
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void send_all(int fd, const std::string& s) {
  size_t sent = 0;
  while (sent < s.size()) {
    pollfd p{fd, POLLOUT, 0};
    ::poll(&p, 1, 5000);
    ssize_t n = ::send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpServerOptions o;
    o.timeout_ms = 300;
    o.max_connections = 4;
    server_ = std::make_unique<HttpServer>(o);
    server_->route("GET", "/hello", [](const HttpRequest& r) {
      return HttpResponse{200, "text/plain", "hi " + r.query, {}};
    });
    server_->route("GET", "/boom", [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("no"); });
    server_->route_async("GET", "/later", [this](const HttpRequest&, HttpResponder respond) {
      std::lock_guard<std::mutex> lock(mu_);
      waiting_.push_back(std::move(respond));
    });
    server_->start();
  }
  void TearDown() override { server_->stop(); }
  // Waits (bounded) until no connection is open on the server.
  bool drained() {
    for (int i = 0; i < 500 && server_->stats().connections_open != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return server_->stats().connections_open == 0;
  }
  // Waits (bounded) until `n` asynchronous requests are waiting for their answer.
  bool waiting(size_t n) {
    for (int i = 0; i < 500; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (waiting_.size() >= n) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  std::unique_ptr<HttpServer> server_;
  std::mutex mu_;
  std::vector<HttpResponder> waiting_;
};

TEST_F(HttpServerTest, RoutesPipelinedRequestsAndClosesWhenAsked) {
  UniqueFd fd(connect_to(server_->port()));
  send_all(fd.get(),
           "GET /hello?a HTTP/1.1\r\nHost: h\r\n\r\nGET /nope HTTP/1.1\r\nHost: h\r\n\r\n"
           "POST /hello HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\nGET /boom HTTP/1.1\r\nHost: h\r\n\r\n"
           "GET /hello?b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  std::string all = read_until_close(fd.get());
  size_t a = all.find("HTTP/1.1 200 OK"), b = all.find("404 Not Found"), c = all.find("405 Method Not Allowed"),
         d = all.find("500 Internal"), e = all.find("hi b");
  ASSERT_NE(a, std::string::npos);
  ASSERT_NE(e, std::string::npos);
  EXPECT_TRUE(a < b && b < c && c < d && d < e) << all;
  EXPECT_NE(all.find("Allow: GET"), std::string::npos);
  EXPECT_TRUE(drained());
}

TEST_F(HttpServerTest, ASilentClientIsDroppedAtTheDeadline) {
  UniqueFd fd(connect_to(server_->port()));
  send_all(fd.get(), "GET /hel");  // never finished
  EXPECT_EQ(read_until_close(fd.get()), "");
  EXPECT_GE(server_->stats().timeouts, 1u);
  EXPECT_TRUE(drained());
}

TEST_F(HttpServerTest, ConnectionsOverTheLimitAreRefusedAndAllAreReclaimed) {
  std::vector<UniqueFd> held;
  for (int i = 0; i < 4; ++i) held.emplace_back(connect_to(server_->port()));
  for (int i = 0; i < 500 && server_->stats().connections_open < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  UniqueFd extra(connect_to(server_->port()));
  EXPECT_NE(read_until_close(extra.get()).find("503"), std::string::npos);
  EXPECT_GE(server_->stats().connections_refused, 1u);
  held.clear();
  EXPECT_TRUE(drained());
}

TEST_F(HttpServerTest, AMalformedRequestIsAnsweredAndClosed) {
  UniqueFd fd(connect_to(server_->port()));
  send_all(fd.get(), "GET / HTTP/1.1\nHost: h\n\n");
  std::string all = read_until_close(fd.get());
  EXPECT_EQ(all.rfind("HTTP/1.1 400 Bad Request", 0), 0u) << all;
  EXPECT_NE(all.find("Connection: close"), std::string::npos);
  EXPECT_EQ(server_->stats().bad_requests, 1u);
}

TEST_F(HttpServerTest, AnAsynchronousRouteAnswersFromAnotherThreadWhileOthersAreServed) {
  UniqueFd a(connect_to(server_->port()));
  // pipelined behind the asynchronous request: answered after it, in order
  send_all(a.get(),
           "GET /later HTTP/1.1\r\nHost: h\r\n\r\nGET /hello?next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(waiting(1));
  UniqueFd b(connect_to(server_->port()));
  send_all(b.get(), "GET /hello?b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  EXPECT_NE(read_until_close(b.get()).find("hi b"), std::string::npos);  // not held up by a
  std::thread([this] { waiting_[0](HttpResponse{202, "text/plain", "done later", {}}); }).join();
  std::string all = read_until_close(a.get());
  const size_t first = all.find("HTTP/1.1 202"), second = all.find("hi next");
  ASSERT_NE(first, std::string::npos) << all;
  ASSERT_NE(second, std::string::npos) << all;
  EXPECT_LT(first, second);
  EXPECT_NE(all.find("done later"), std::string::npos);
  EXPECT_TRUE(drained());
}

TEST_F(HttpServerTest, AnAnswerAfterTheDeadlineOrAfterStopIsDropped) {
  UniqueFd a(connect_to(server_->port()));
  send_all(a.get(), "GET /later HTTP/1.1\r\nHost: h\r\n\r\n");
  ASSERT_TRUE(waiting(1));
  EXPECT_EQ(read_until_close(a.get()), "");  // closed at the deadline, unanswered
  EXPECT_GE(server_->stats().timeouts, 1u);
  waiting_[0](HttpResponse{200, "text/plain", "too late", {}});  // nobody to answer: dropped
  UniqueFd c(connect_to(server_->port()));
  send_all(c.get(), "GET /later HTTP/1.1\r\nHost: h\r\n\r\n");
  ASSERT_TRUE(waiting(2));
  server_->stop();
  waiting_[1](HttpResponse{200, "text/plain", "after stop", {}});
  EXPECT_TRUE(drained());
}

}  // namespace
