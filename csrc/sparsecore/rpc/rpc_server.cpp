#include "sparsecore/rpc/rpc_server.h"

#include <pthread.h>
#include <sched.h>

#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/rpc/reactor.h"

namespace sparsecore::rpc {

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

// --------------------------------------------------------------------------------- RpcServer
RpcServer::RpcServer(ServerOptions options) : options_(std::move(options)) {
  SC_CHECK_ARG(options_.num_reactors >= 1 && options_.num_reactors <= 1024, "num_reactors must be in [1, 1024], got ",
               options_.num_reactors);
  SC_CHECK_ARG(options_.max_frame_bytes >= 1024, "max_frame_bytes must be at least 1024, got ",
               options_.max_frame_bytes);
  SC_CHECK_ARG(options_.idle_timeout_ms >= 0, "idle_timeout_ms must be >= 0, got ", options_.idle_timeout_ms);
  SC_CHECK_ARG(options_.handshake_timeout_ms >= 0, "handshake_timeout_ms must be >= 0, got ",
               options_.handshake_timeout_ms);
  SC_CHECK_ARG(options_.memory_budget_bytes >= (1u << 20), "memory_budget_bytes must be at least 1 MiB, got ",
               options_.memory_budget_bytes);
  SC_CHECK_ARG(options_.poll_us >= 0 && options_.poll_us <= 10'000'000, "poll_us must be in [0, 1e7], got ",
               options_.poll_us);
}

RpcServer::~RpcServer() { stop(); }

void RpcServer::on_connection_closed(std::function<void(int, uint64_t)> hook) {
  SC_CHECK_ARG(!running_.load(), "on_connection_closed must be called before start()");
  close_hook_ = std::move(hook);
}

void RpcServer::register_method(uint16_t method, Handler handler) {
  SC_CHECK_ARG(method < kFirstReservedMethod, "method ids from ", kFirstReservedMethod, " up are reserved, got ",
               method);
  SC_CHECK_ARG(!running_.load(), "register_method must be called before start()");
  if (handlers_.size() <= method) handlers_.resize(method + 1);
  handlers_[method] = std::move(handler);
}

void RpcServer::start() {
  std::lock_guard<std::mutex> lock(lifecycle_mutex_);
  SC_CHECK_ARG(!running_.load(), "server already started");
  UniqueFd listener = listen_tcp(options_.address, options_.port);
  port_ = local_port(listener.get());
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

bool RpcServer::try_reserve(uint64_t bytes) {
  const uint64_t budget = options_.memory_budget_bytes;
  uint64_t used = reserved_bytes_.load(std::memory_order_relaxed);
  do {
    if (bytes > budget || used > budget - bytes) return false;
  } while (!reserved_bytes_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

TransportStats RpcServer::transport_stats() const {
  TransportStats s;
  for (auto& r : reactors_) r->add_stats(s);
  s.memory_reserved_bytes = reserved_bytes_.load(std::memory_order_relaxed);
  s.memory_budget_bytes = options_.memory_budget_bytes;
  return s;
}

std::string TransportStats::to_json() const {
  Json j = Json::object();
  auto put = [&j](const char* name, uint64_t v) { j[name] = static_cast<int64_t>(v); };
  put("connections_accepted", connections_accepted);
  put("open_connections", open_connections);
  put("frames_rejected", frames_rejected);
  put("accept_backoffs", accept_backoffs);
  put("handshake_timeouts", handshake_timeouts);
  put("idle_timeouts", idle_timeouts);
  put("memory_refusals", memory_refusals);
  put("out_of_memory", out_of_memory);
  put("memory_reserved_bytes", memory_reserved_bytes);
  put("memory_budget_bytes", memory_budget_bytes);
  put("requests", requests);
  put("error_replies", error_replies);
  put("bytes_received", bytes_received);
  put("bytes_sent", bytes_sent);
  return j.dump();
}

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
