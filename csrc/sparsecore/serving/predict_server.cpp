#include "sparsecore/serving/predict_server.h"

#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/rpc/reactor.h"
#include "sparsecore/serving/subscriber.h"

namespace sparsecore::serving {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kJson = "application/json";

rpc::ServerOptions rpc_options(const PredictServerOptions& o) {
  rpc::ServerOptions r;
  r.address = o.address;
  r.port = o.port;
  r.num_reactors = o.reactors;
  r.token = o.token;
  return r;
}

rpc::HttpResponse json_error(int status, const std::string& message) {
  Json body = Json::object();
  body["error"] = Json(message);
  return rpc::HttpResponse{status, kJson, body.dump() + "\n", {}};
}

int http_status(rpc::Status s) {
  switch (s) {
    case rpc::Status::kOk:
      return 200;
    case rpc::Status::kInvalidArgument:
    case rpc::Status::kTypeMismatch:
      return 400;
    case rpc::Status::kDeadlineExceeded:
      return 504;
    case rpc::Status::kBusy:
    case rpc::Status::kShuttingDown:
      return 503;
    default:
      return 500;
  }
}

// Compares without an early exit, so that the time taken says nothing of where they differ.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

}  // namespace

PredictServer::PredictServer(const std::string& model_dir, PredictServerOptions options)
    : options_(std::move(options)), model_(load_model(model_dir)), rpc_(rpc_options(options_)) {
  SC_CHECK_ARG(options_.http_port >= -1 && options_.http_port <= 65535, "http_port must be in [-1, 65535], got ",
               options_.http_port);
  SC_CHECK_ARG(options_.default_timeout_ms >= 0, "default_timeout_ms must be >= 0, got ", options_.default_timeout_ms);
  SC_CHECK_ARG(options_.poll_interval_ms >= 0, "poll_interval_ms must be >= 0, got ", options_.poll_interval_ms);
  batcher_ = std::make_unique<PredictBatcher>(*model_.predictor, model_.subscriber.get(), options_.batcher);
  rpc_.register_method(kMethodPredict, [this](const rpc::Request& q, rpc::Reply& r) { handle_rpc_predict(q, r); });
  rpc_.register_method(kMethodModelInfo, [this](const rpc::Request&, rpc::Reply& r) {
    const std::string info = model_info_json(*model_.predictor, version());
    r.append(info.data(), info.size());
  });
  if (options_.http_port >= 0) {
    rpc::HttpServerOptions h;
    h.address = options_.address;
    h.port = options_.http_port;
    h.limits.max_body_bytes = options_.max_body_bytes;
    h.max_connections = options_.max_http_connections;
    h.timeout_ms = options_.http_timeout_ms;
    http_ = std::make_unique<rpc::HttpServer>(h);
    http_->route_async("POST", "/v1/predict", [this](const rpc::HttpRequest& q, rpc::HttpResponder respond) {
      handle_http_predict(q, std::move(respond));
    });
    http_->route("GET", "/healthz", [this](const rpc::HttpRequest&) {
      return rpc::HttpResponse{
          200, kJson, "{\"status\": \"ok\", \"version\": " + std::to_string(version()) + "}\n", {}};
    });
    http_->route("GET", "/metrics", [this](const rpc::HttpRequest& q) {
      if (!authorized(q)) {
        http_unauthorized_.fetch_add(1, std::memory_order_relaxed);
        return rpc::HttpResponse{
            401, "text/plain; charset=utf-8", "a valid bearer token is required\n", {{"WWW-Authenticate", "Bearer"}}};
      }
      return rpc::HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", metrics(), {}};
    });
  }
}

PredictServer::~PredictServer() { stop(); }

void PredictServer::start() {
  SC_CHECK_ARG(!started_, "PredictServer already started");
  started_ = true;
  rpc_.start();
  if (http_) http_->start();
  if (options_.poll_interval_ms > 0) model_.subscriber->start(std::chrono::milliseconds(options_.poll_interval_ms));
}

void PredictServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  // No new requests first; then the batcher answers what it holds (replies to connections
  // already closed are dropped), then the rows stop following the stream.
  if (http_) http_->stop();
  rpc_.stop();
  batcher_->stop();
  model_.subscriber->stop();
}

int64_t PredictServer::version() const { return model_.subscriber->version(); }

bool PredictServer::authorized(const rpc::HttpRequest& request) const {
  if (options_.token.empty()) return true;
  const std::string* h = request.header("authorization");
  if (h == nullptr || h->compare(0, 7, "Bearer ") != 0) return false;
  return same_secret(h->substr(7), options_.token);
}

void PredictServer::handle_rpc_predict(const rpc::Request& request, rpc::Reply& reply) {
  rpc_requests_.fetch_add(1, std::memory_order_relaxed);
  auto r = std::make_unique<OwnedPredictRequest>();
  decode_predict_request(*model_.predictor, request.payload, *r);  // throws: an error reply
  r->deadline = request.deadline;
  rpc::Reactor* reactor = &rpc_.reactor(request.reactor);
  const rpc::DeferredReply token = reply.defer();
  r->done = [reactor, token](PredictOutcome&& o) {
    auto outcome = std::make_shared<PredictOutcome>(std::move(o));
    reactor->post([reactor, token, outcome] {
      rpc::Reply answer;
      if (outcome->status != rpc::Status::kOk) {
        answer.fail(outcome->status, outcome->error);
      } else {
        PredictWireReplyHeader h{outcome->output_width, outcome->version};
        answer.append(&h, sizeof(h));
        answer.append(outcome->logits.data(), outcome->logits.size() * sizeof(float));
      }
      reactor->send_deferred(token, std::move(answer));
    });
  };
  batcher_->submit(std::move(r));
}

void PredictServer::handle_http_predict(const rpc::HttpRequest& request, rpc::HttpResponder respond) {
  http_requests_.fetch_add(1, std::memory_order_relaxed);
  if (!authorized(request)) {
    http_unauthorized_.fetch_add(1, std::memory_order_relaxed);
    rpc::HttpResponse denied = json_error(401, "a valid bearer token is required");
    denied.headers.emplace_back("WWW-Authenticate", "Bearer");
    respond(std::move(denied));
    return;
  }
  auto r = std::make_unique<OwnedPredictRequest>();
  int64_t timeout_ms = 0;
  try {
    parse_json_request(*model_.predictor, request.body, *r, &timeout_ms);
  } catch (const InvalidArgument& e) {
    http_bad_requests_.fetch_add(1, std::memory_order_relaxed);
    respond(json_error(400, e.what()));
    return;
  }
  if (timeout_ms == 0) timeout_ms = options_.default_timeout_ms;
  if (timeout_ms > 0) r->deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  const int64_t batch = r->batch;
  r->done = [respond = std::move(respond), batch](PredictOutcome&& o) {
    if (o.status != rpc::Status::kOk) {
      respond(json_error(http_status(o.status), o.error));
    } else {
      respond(rpc::HttpResponse{200, kJson, format_json_outcome(o, batch), {}});
    }
  };
  batcher_->submit(std::move(r));
}

std::string PredictServer::metrics() const {
  std::string out;
  auto single = [&](const char* name, const char* type, const char* help, int64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(v) + "\n";
  };
  const BatcherStats b = batcher_->stats();
  single("sparsecore_serve_model_version", "gauge", "Version (training step) of the rows served", version());
  single("sparsecore_serve_rpc_requests_total", "counter", "Predict requests received over RPC",
         static_cast<int64_t>(rpc_requests_.load()));
  single("sparsecore_serve_http_requests_total", "counter", "Predict requests received over HTTP",
         static_cast<int64_t>(http_requests_.load()));
  single("sparsecore_serve_http_unauthorized_total", "counter", "HTTP requests refused for a missing or wrong token",
         static_cast<int64_t>(http_unauthorized_.load()));
  single("sparsecore_serve_http_bad_requests_total", "counter", "HTTP predict requests refused as malformed",
         static_cast<int64_t>(http_bad_requests_.load()));
  single("sparsecore_serve_predictions_total", "counter", "Requests queued for prediction",
         static_cast<int64_t>(b.requests));
  single("sparsecore_serve_samples_total", "counter", "Samples predicted", static_cast<int64_t>(b.samples));
  single("sparsecore_serve_batches_total", "counter", "Batches run (requests of many connections each)",
         static_cast<int64_t>(b.batches));
  single("sparsecore_serve_rejected_total", "counter", "Requests refused at submit (malformed, queue full, stopping)",
         static_cast<int64_t>(b.rejected));
  single("sparsecore_serve_deadline_exceeded_total", "counter", "Requests dropped past their deadline",
         static_cast<int64_t>(b.deadline_exceeded));
  single("sparsecore_serve_failed_total", "counter", "Predictions that failed", static_cast<int64_t>(b.failed));
  single("sparsecore_serve_queued_requests", "gauge", "Requests waiting for a batch", static_cast<int64_t>(b.queued));
  const rpc::TransportStats t = rpc_.transport_stats();
  single("sparsecore_rpc_requests_total", "counter", "RPC request frames handled", static_cast<int64_t>(t.requests));
  single("sparsecore_rpc_errors_total", "counter", "RPC replies with an error status",
         static_cast<int64_t>(t.error_replies));
  single("sparsecore_rpc_connections_open", "gauge", "RPC connections open", static_cast<int64_t>(t.open_connections));
  if (http_) {
    const rpc::HttpServerStats h = http_->stats();
    single("sparsecore_http_connections_open", "gauge", "HTTP connections open",
           static_cast<int64_t>(h.connections_open));
    single("sparsecore_http_connections_refused_total", "counter", "HTTP connections refused over the limit",
           static_cast<int64_t>(h.connections_refused));
    single("sparsecore_http_timeouts_total", "counter", "HTTP connections closed past their deadline",
           static_cast<int64_t>(h.timeouts));
    single("sparsecore_http_requests_total", "counter", "HTTP requests parsed", static_cast<int64_t>(h.requests));
    single("sparsecore_http_bad_requests_total", "counter", "HTTP requests refused by the parser",
           static_cast<int64_t>(h.bad_requests));
  }
  return out;
}

}  // namespace sparsecore::serving
