// PredictServer: a model directory (load_model) served over the project's RPC layer (binary,
// predict_protocol.h; the C++ PredictClient and Python sparsecore.PredictClient speak it) and
// over HTTP/1.1 JSON, with requests of every connection batched together (PredictBatcher).
//
// HTTP endpoints (when http_port >= 0):
//   POST /v1/predict  the JSON request of predict_protocol.h; 200 with the logits, 400 for a
//                     malformed request (naming what is wrong), 401 without the token, 413 for
//                     a body over max_body_bytes (refused before it is parsed), 503 when the
//                     queue is full or the server stops, 504 past the request's deadline
//   GET /healthz      200 {"status": "ok", "version": V}
//   GET /metrics      Prometheus text: requests, batches, samples, refusals, deadlines, queue,
//                     the model version, the HTTP and RPC transports' counters
// With a token, /v1/predict and /metrics need "Authorization: Bearer <token>" (RPC clients
// prove the token in the handshake, as with `sparsecore server`); /healthz is open.
//
// Deadlines: an RPC call's timeout (its frame's) and an HTTP request's "timeout_ms" (else
// default_timeout_ms; 0: none) bound how long a request may wait for its batch: one past it
// is answered DeadlineExceeded (504) without running. A connection that does not send a whole
// request, or does not read its answer, within http_timeout_ms is closed; other connections
// are never held up by it.
//
// New exports and deltas of the model's stream are applied while serving by its Subscriber
// (every poll_interval_ms); each batch reads one version of the rows.
//
// Thread-safety: start() then stop() from one thread (stop is idempotent and run by the
// destructor); port(), http_port(), metrics() from any thread.
#pragma once

#include <memory>
#include <string>

#include "sparsecore/rpc/http_server.h"
#include "sparsecore/rpc/rpc_server.h"
#include "sparsecore/serving/predict_batcher.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {

struct PredictServerOptions {
  std::string address = "127.0.0.1";  // loopback unless told otherwise (both ports)
  int port = 0;                       // RPC port; 0: any free port
  int http_port = -1;                 // -1: no HTTP endpoint; 0: any free port
  std::string token;                  // non-empty: required on RPC and HTTP
  int reactors = 1;                   // RPC reactor threads
  BatcherOptions batcher;
  int default_timeout_ms = 0;       // HTTP requests without "timeout_ms" (0: no deadline)
  int http_timeout_ms = 10'000;     // see above
  size_t max_body_bytes = 1 << 20;  // largest HTTP request body
  int max_http_connections = 256;
  int poll_interval_ms = 1000;  // Subscriber polls (0: never; the exports at load only)
};

class PredictServer {
 public:
  // Loads the model (load_model: NotFound / CorruptData / InvalidArgument as it throws).
  PredictServer(const std::string& model_dir, PredictServerOptions options);
  ~PredictServer();
  PredictServer(const PredictServer&) = delete;
  PredictServer& operator=(const PredictServer&) = delete;

  void start();  // IoError when a port cannot be bound
  void stop();
  int port() const { return rpc_.port(); }
  int http_port() const { return http_ ? http_->port() : -1; }
  int64_t version() const;
  const Predictor& predictor() const { return *model_.predictor; }
  BatcherStats batcher_stats() const { return batcher_->stats(); }
  std::string metrics() const;  // the /metrics text

 private:
  void handle_rpc_predict(const rpc::Request& request, rpc::Reply& reply);
  void handle_http_predict(const rpc::HttpRequest& request, rpc::HttpResponder respond);
  bool authorized(const rpc::HttpRequest& request) const;

  PredictServerOptions options_;
  LoadedModel model_;
  std::unique_ptr<PredictBatcher> batcher_;
  rpc::RpcServer rpc_;
  std::unique_ptr<rpc::HttpServer> http_;
  std::atomic<uint64_t> rpc_requests_{0}, http_requests_{0}, http_unauthorized_{0}, http_bad_requests_{0};
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace sparsecore::serving
