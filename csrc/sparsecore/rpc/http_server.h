// HttpServer: a small, strict HTTP/1.1 server on one epoll thread, for the endpoints a
// server exposes beside its RPC port (Prometheus metrics; later predictions). Requests are
// parsed by parse_http_request (http_request.h) and routed by exact path and method: an
// unknown path is answered 404, a known path with another method 405 (with Allow).
//
// What a peer can make it hold (HttpServerOptions):
// - at most max_connections connections; one more is answered 503 (best effort) and closed;
// - per connection, a request head of max_header_bytes and a body of max_body_bytes;
//   anything larger is answered 431/413 and the connection closed;
// - time: a request must arrive whole within timeout_ms of the connection's accept (or of
//   its previous response being written), and a response must be written within timeout_ms;
//   a connection past its deadline is closed (a client that sends nothing, or sends slowly,
//   or never reads, is dropped). Keep-alive connections are closed by the same deadline;
// - one request at a time per connection: pipelined requests wait in its buffer (which the
//   limits above bound) until the previous response is written.
// Every connection is closed and freed on EOF, error, deadline or stop(). A malformed request
// is answered with its 4xx/5xx status and "Connection: close".
//
// Handlers run on the server's thread, one at a time: they must return promptly (a slow one
// delays every other connection, not the deadlines' enforcement after it returns). An
// exception from a handler is answered 500. Work that takes longer (a prediction waiting to
// be batched with others) goes through route_async: its handler hands the request on and
// returns; the response comes later, from any thread, through the HttpResponder it was
// given. Meanwhile that connection reads nothing more, and its deadline (timeout_ms from the
// request's arrival) still holds: a response that comes after the connection closed is
// dropped.
//
// Thread-safety: route() and route_async() before start(); stop() and stats() from any
// thread; an HttpResponder from any thread, also after stop() (then it does nothing).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/core/unique_fd.h"
#include "sparsecore/rpc/http_request.h"

namespace sparsecore::rpc {

struct HttpServerOptions {
  std::string address = "127.0.0.1";  // loopback unless told otherwise
  int port = 0;                       // 0: any free port (see HttpServer::port())
  HttpLimits limits;
  int max_connections = 64;
  int timeout_ms = 10'000;  // to receive a whole request, and to write a response
};

struct HttpServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;     // gauge
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t timeouts = 0;             // connections closed past their deadline
  uint64_t requests = 0;             // requests parsed whole (routed, whatever the answer)
  uint64_t bad_requests = 0;         // requests refused by the parser (4xx/5xx, then closed)
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;
// Answers one request of an asynchronous route; call it once.
using HttpResponder = std::function<void(HttpResponse)>;
using HttpAsyncHandler = std::function<void(const HttpRequest&, HttpResponder)>;

class HttpServer {
 public:
  explicit HttpServer(HttpServerOptions options);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Serves `method` on `path` (exact match, query ignored) with `handler`. Before start().
  void route(const std::string& method, const std::string& path, HttpHandler handler);
  // The same, for a handler that answers later through its HttpResponder (see above).
  void route_async(const std::string& method, const std::string& path, HttpAsyncHandler handler);
  // Binds (IoError when the address cannot be bound) and starts the thread.
  void start();
  // Closes every connection and joins the thread. Idempotent.
  void stop();
  int port() const { return port_; }
  const HttpServerOptions& options() const { return options_; }
  HttpServerStats stats() const;

 private:
  struct Connection;
  struct Route {
    HttpHandler handler;
    HttpAsyncHandler async_handler;
  };
  // Responses of asynchronous routes, handed from any thread to the server's thread. Shared
  // with the responders, which may outlive the server.
  struct Completions {
    std::mutex mutex;
    std::vector<std::pair<uint64_t, HttpResponse>> done;  // (connection, response)
    int wake_fd = -1;
    bool open = true;
  };
  void run();
  void accept_all();
  // Writes the pending response, answers requests buffered whole and reads, until the socket
  // would block (then waits for the event it needs) or the connection closes.
  void drive(Connection& c);
  // Answers the request at the front of c.in when it is there whole (or refused); false when
  // more bytes are needed.
  bool process(Connection& c);
  void respond(Connection& c, const HttpResponse& response, bool keep_alive, bool head_request);
  void watch(Connection& c, uint32_t events);
  void close(Connection& c);
  // Fills `response` and returns true, or returns false when an asynchronous route took the
  // request (its response comes through complete_async).
  bool route_request(Connection& c, const HttpRequest& request, HttpResponse& response);
  void complete_async();  // writes the responses that asynchronous routes have sent

  HttpServerOptions options_;
  int port_ = 0;
  std::map<std::string, std::map<std::string, Route>> routes_;  // path -> method -> route
  std::shared_ptr<Completions> completions_ = std::make_shared<Completions>();
  UniqueFd listener_;
  UniqueFd epoll_;
  UniqueFd wake_fd_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex lifecycle_mutex_;
  bool started_ = false;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::unique_ptr<Connection>> connections_;  // server thread only
  std::vector<std::unique_ptr<Connection>> closed_;              // freed after each event batch
  std::atomic<uint64_t> accepted_{0}, open_{0}, refused_{0}, timeouts_{0}, requests_{0}, bad_requests_{0};
};

}  // namespace sparsecore::rpc
