#include "sparsecore/ps/shard_transport.h"

#include <algorithm>
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {
namespace {

std::pair<std::string, int> split_address(const std::string& a) {
  auto colon = a.rfind(':');
  SC_CHECK_ARG(colon != std::string::npos && colon + 1 < a.size(), "address '", a, "' is not host:port");
  return {a.substr(0, colon), std::stoi(a.substr(colon + 1))};
}

}  // namespace

ShardCall ShardCall::answered(rpc::Response response) {
  ShardCall c;
  c.response_ = std::move(response);
  c.valid_ = c.local_ = true;
  return c;
}

ShardCall ShardCall::failed(std::exception_ptr error) {
  ShardCall c;
  c.error_ = std::move(error);
  c.valid_ = c.local_ = true;
  return c;
}

rpc::Response ShardCall::get() {
  SC_CHECK_ARG(valid_, "ShardCall::get on an empty or finished call");
  valid_ = false;
  if (!local_) return future_.get();
  if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  return std::move(response_);
}

RpcShardTransport::RpcShardTransport(const std::vector<std::string>& addresses, rpc::ClientOptions options) {
  SC_CHECK_ARG(!addresses.empty(), "at least one server address is needed");
  int first_shards = 0;
  for (size_t s = 0; s < addresses.size(); ++s) {
    auto [host, port] = split_address(addresses[s]);
    options.reactor = 0;
    auto first = std::make_unique<rpc::RpcClient>(host, port, options);
    rpc::Response r = first->call(kInfo, {});
    Json info = Json::parse(std::string_view(reinterpret_cast<const char*>(r.data.data()), r.bytes));
    const int shards = static_cast<int>(info.at("shards").as_int());
    SC_CHECK_ARG(info.at("server_index").as_int() == static_cast<int64_t>(s) &&
                     info.at("num_servers").as_int() == static_cast<int64_t>(addresses.size()),
                 "server ", addresses[s], " says it is server ", info.at("server_index").as_int(), " of ",
                 info.at("num_servers").as_int(), ", but is listed as ", s, " of ", addresses.size());
    if (s == 0) first_shards = shards;
    SC_CHECK_ARG(shards == first_shards, "server ", addresses[s], " has ", shards,
                 " shards; every server must have as many as the first");
    conns_.push_back(std::move(first));
    for (int r = 1; r < shards; ++r) {
      options.reactor = r;
      conns_.push_back(std::make_unique<rpc::RpcClient>(host, port, options));
    }
  }
}

ShardCall RpcShardTransport::call(int shard, uint16_t method, std::span<const iovec> payload,
                                  std::span<const iovec> recv_into) {
  return ShardCall(conns_.at(static_cast<size_t>(shard))->call_async(method, payload, -1, recv_into));
}

LocalShardTransport::LocalShardTransport(PsServer& server) : server_(server) {
  SC_CHECK_ARG(server.options().num_servers == 1, "an embedded server must be the only server");
}

int LocalShardTransport::num_shards() const { return server_.num_shards(); }

ShardCall LocalShardTransport::call(int shard, uint16_t method, std::span<const iovec> payload,
                                    std::span<const iovec> recv_into) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    size_t bytes = 0;
    for (const iovec& v : payload) bytes += v.iov_len;
    request_.resize(bytes);
    size_t at = 0;
    for (const iovec& v : payload) {
      if (v.iov_len) std::memcpy(request_.data() + at, v.iov_base, v.iov_len);
      at += v.iov_len;
    }
    rpc::Reply reply;
    try {
      server_.serve(shard, method, {request_.data(), bytes}, reply);
    } catch (...) {
      // The error a remote caller would get: the status the handler's exception maps to.
      std::string message;
      const rpc::Status status = rpc::status_of_current_exception(&message);
      rpc::throw_status(status, message);
    }
    if (reply.status() != rpc::Status::kOk)
      rpc::throw_status(reply.status(),
                        std::string(reinterpret_cast<const char*>(reply.body.data()), reply.body.size()));
    rpc::Response response;
    response.bytes = reply.body.size();
    size_t capacity = 0;
    for (const iovec& v : recv_into) capacity += v.iov_len;
    if (capacity > 0 && response.bytes <= capacity) {
      size_t at = 0;
      for (const iovec& v : recv_into) {
        const size_t n = std::min(v.iov_len, response.bytes - at);
        if (n) std::memcpy(v.iov_base, reply.body.data() + at, n);
        at += n;
      }
      response.in_caller_buffer = true;
    } else {
      response.data = std::move(reply.body);
    }
    return ShardCall::answered(std::move(response));
  } catch (...) {
    return ShardCall::failed(std::current_exception());
  }
}

}  // namespace sparsecore::ps
