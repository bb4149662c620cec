// PsClient's dense variables (ps_client.h): the plain ones of kDensePull / kDensePush and the
// ones with a server-side optimizer (kDenseCreate / kDenseStep), each on one global shard.
#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {
namespace {

const char kZeros[8] = {};  // padding of names and JSON to 8 bytes

}  // namespace

std::vector<float> PsClient::dense_pull(const std::string& name, int64_t size, float init, int shard) {
  SC_CHECK_ARG(shard >= 0 && shard < total_shards_, "dense variable '", name, "': shard ", shard, " out of range for ",
               total_shards_, " shards");
  Json j = Json::object();
  j["name"] = name;
  j["size"] = size;
  j["init"] = static_cast<double>(init);
  std::string text = j.dump();
  iovec seg{text.data(), text.size()};
  rpc::Response r = transport_->call(shard, kDensePull, {&seg, 1}).get();
  std::vector<float> v(r.bytes / sizeof(float));
  std::memcpy(v.data(), r.data.data(), v.size() * sizeof(float));
  return v;
}

void PsClient::dense_push(const std::string& name, const float* grads, int64_t size, float lr) {
  SC_CHECK_ARG(size >= 0, "dense push of '", name, "': size must be >= 0, got ", size);
  DenseHeader h{};
  h.name_bytes = static_cast<uint32_t>(name.size());
  h.lr = lr;
  h.size = static_cast<uint64_t>(size);
  iovec segs[4] = {{&h, sizeof(h)},
                   {const_cast<char*>(name.data()), name.size()},
                   {const_cast<char*>(kZeros), padded8(name.size()) - name.size()},
                   {const_cast<float*>(grads), static_cast<size_t>(size) * sizeof(float)}};
  transport_->call(0, kDensePush, segs).get();
}

void PsClient::dense_create(int shard, const std::string& name, const float* values, int64_t size,
                            const std::string& optimizer_json) {
  SC_CHECK_ARG(shard >= 0 && shard < total_shards_, "dense variable '", name, "': shard ", shard, " out of range for ",
               total_shards_, " shards");
  SC_CHECK_ARG(size >= 1, "dense variable '", name, "': size must be >= 1, got ", size);
  DenseCreateHeader h{static_cast<uint32_t>(name.size()), static_cast<uint32_t>(optimizer_json.size()),
                      static_cast<uint64_t>(size)};
  iovec segs[6] = {{&h, sizeof(h)},
                   {const_cast<char*>(name.data()), name.size()},
                   {const_cast<char*>(kZeros), padded8(name.size()) - name.size()},
                   {const_cast<char*>(optimizer_json.data()), optimizer_json.size()},
                   {const_cast<char*>(kZeros), padded8(optimizer_json.size()) - optimizer_json.size()},
                   {const_cast<float*>(values), static_cast<size_t>(size) * sizeof(float)}};
  transport_->call(shard, kDenseCreate, segs).get();
}

void PsClient::dense_step(int shard, const std::string& name, const float* grads, int64_t size, int64_t step,
                          float* out) {
  SC_CHECK_ARG(shard >= 0 && shard < total_shards_, "dense variable '", name, "': shard ", shard, " out of range for ",
               total_shards_, " shards");
  SC_CHECK_ARG(size >= 1, "dense variable '", name, "': size must be >= 1, got ", size);
  DenseStepHeader h{};
  h.name_bytes = static_cast<uint32_t>(name.size());
  h.size = static_cast<uint64_t>(size);
  h.step = step;
  h.worker = options_.worker;
  h.num_workers = options_.staleness >= 0 ? 0 : options_.num_workers;
  iovec segs[4] = {{&h, sizeof(h)},
                   {const_cast<char*>(name.data()), name.size()},
                   {const_cast<char*>(kZeros), padded8(name.size()) - name.size()},
                   {const_cast<float*>(grads), static_cast<size_t>(size) * sizeof(float)}};
  iovec into{out, static_cast<size_t>(size) * sizeof(float)};
  rpc::Response r = transport_->call(shard, kDenseStep, segs, {&into, 1}).get();
  SC_CHECK(r.in_caller_buffer && r.bytes == into.iov_len, RpcProtocolError, "dense step reply of ", r.bytes,
           " bytes for '", name, "', expected ", into.iov_len);
}

}  // namespace sparsecore::ps
