#include "sparsecore/ps/ps_client.h"

#include <cstring>
#include <unordered_map>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/rpc/rpc_error.h"
#include <cmath>

namespace sparsecore::ps {
namespace {

std::pair<std::string, int> split_address(const std::string& a) {
  auto colon = a.rfind(':');
  SC_CHECK_ARG(colon != std::string::npos && colon + 1 < a.size(), "address '", a, "' is not host:port");
  return {a.substr(0, colon), std::stoi(a.substr(colon + 1))};
}

Json parse_reply(const rpc::Response& r) {
  return Json::parse(std::string_view(reinterpret_cast<const char*>(r.data.data()), r.bytes));
}

// Unique ids in first-seen order and the index of each id among them.
void dedup(const int64_t* ids, int64_t n, std::vector<int64_t>& unique, std::vector<int32_t>& inverse) {
  std::unordered_map<int64_t, int32_t> index;
  index.reserve(static_cast<size_t>(n) * 2);
  unique.clear();
  inverse.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto [it, fresh] = index.try_emplace(ids[i], static_cast<int32_t>(unique.size()));
    if (fresh) unique.push_back(ids[i]);
    inverse[static_cast<size_t>(i)] = it->second;
  }
}

// Positions of the unique ids grouped by owning shard.
std::vector<std::vector<int32_t>> route(const std::vector<int64_t>& unique, int total) {
  std::vector<std::vector<int32_t>> by_shard(static_cast<size_t>(total));
  for (size_t i = 0; i < unique.size(); ++i)
    by_shard[static_cast<size_t>(global_shard_of_key(unique[i], total))].push_back(static_cast<int32_t>(i));
  return by_shard;
}

}  // namespace

PsClient::PsClient(const std::vector<std::string>& addresses, PsClientOptions options) : options_(options) {
  SC_CHECK_ARG(!addresses.empty(), "at least one server address is needed");
  for (size_t s = 0; s < addresses.size(); ++s) {
    auto [host, port] = split_address(addresses[s]);
    rpc::ClientOptions co;
    co.token = options_.token;
    co.call_timeout_ms = options_.timeout_ms;
    co.connect_timeout_ms = options_.connect_timeout_ms;
    auto first = std::make_unique<rpc::RpcClient>(host, port, co);
    Json info = parse_reply(first->call(kInfo, {}));
    int shards = static_cast<int>(info.at("shards").as_int());
    SC_CHECK_ARG(info.at("server_index").as_int() == static_cast<int64_t>(s) &&
                     info.at("num_servers").as_int() == static_cast<int64_t>(addresses.size()),
                 "server ", addresses[s], " says it is server ", info.at("server_index").as_int(), " of ",
                 info.at("num_servers").as_int(), ", but is listed as ", s, " of ", addresses.size());
    SC_CHECK_ARG(s == 0 || shards * static_cast<int>(s) == total_shards_, "server ", addresses[s], " has ", shards,
                 " shards; every server must have as many as the first");
    conns_.push_back(std::move(first));
    for (int r = 1; r < shards; ++r) {
      co.reactor = r;
      conns_.push_back(std::make_unique<rpc::RpcClient>(host, port, co));
    }
    total_shards_ += shards;
  }
}

PsClient::PsClient(PsServer& embedded, PsClientOptions options)
    : options_(options), total_shards_(embedded.num_shards()), embedded_(&embedded) {
  SC_CHECK_ARG(embedded.options().num_servers == 1, "an embedded server must be the only server");
}

void PsClient::create_table(const TableConfig& config, uint64_t seed) {
  config.validate();
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (int g = 0; g < total_shards_; ++g) embedded_->shard(g).create_table(config, seed);
  } else {
    Json j = Json::object();
    j["table"] = config.to_json();
    j["seed"] = seed;
    call_json(kCreateTable, j);
  }
  std::lock_guard<std::mutex> lock(dims_mutex_);
  dims_[config.name] = config.dim;
}

int PsClient::dim(const std::string& table) const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(dims_mutex_));
  auto it = dims_.find(table);
  if (it == dims_.end()) throw NotFound("table '" + table + "' was not created through this client");
  return it->second;
}

void PsClient::pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out) {
  SC_CHECK_ARG(n >= 0, "n must be >= 0");
  const size_t d = static_cast<size_t>(dim(table));
  std::vector<int64_t> unique;
  std::vector<int32_t> inverse;
  dedup(ids, n, unique, inverse);
  auto by_shard = route(unique, total_shards_);
  std::vector<std::vector<int64_t>> shard_ids(by_shard.size());
  std::vector<std::vector<float>> shard_rows(by_shard.size());
  for (size_t g = 0; g < by_shard.size(); ++g) {
    shard_ids[g].reserve(by_shard[g].size());
    for (int32_t i : by_shard[g]) shard_ids[g].push_back(unique[static_cast<size_t>(i)]);
    shard_rows[g].resize(by_shard[g].size() * d);
  }
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (size_t g = 0; g < by_shard.size(); ++g)
      if (!shard_ids[g].empty())
        embedded_->shard(static_cast<int>(g)).pull(table, shard_ids[g].data(), static_cast<int64_t>(shard_ids[g].size()),
                                                   train, shard_rows[g].data());
  } else {
    TableHeader h{};
    h.name_bytes = static_cast<uint32_t>(table.size());
    h.flags = train ? kPullTrain : 0;
    std::vector<TableHeader> headers(by_shard.size(), h);
    static const char zeros[8] = {};
    std::vector<rpc::RpcFuture> futures(by_shard.size());
    for (size_t g = 0; g < by_shard.size(); ++g) {
      if (shard_ids[g].empty()) continue;
      headers[g].num_ids = shard_ids[g].size();
      iovec segs[4] = {{&headers[g], sizeof(TableHeader)},
                       {const_cast<char*>(table.data()), table.size()},
                       {const_cast<char*>(zeros), padded8(table.size()) - table.size()},
                       {shard_ids[g].data(), shard_ids[g].size() * sizeof(int64_t)}};
      futures[g] = conns_[g]->call_async(kPull, segs, -1, shard_rows[g].data(), shard_rows[g].size() * sizeof(float));
    }
    for (size_t g = 0; g < by_shard.size(); ++g) {
      if (!futures[g].valid()) continue;
      rpc::Response r = futures[g].get();
      SC_CHECK(r.in_caller_buffer && r.bytes == shard_rows[g].size() * sizeof(float), RpcProtocolError,
               "pull reply of ", r.bytes, " bytes from shard ", g, ", expected ", shard_rows[g].size() * sizeof(float));
    }
  }
  // Scatter: unique row u lives in shard_rows[g] at its position within the shard's list.
  std::vector<const float*> row_of(unique.size());
  for (size_t g = 0; g < by_shard.size(); ++g)
    for (size_t k = 0; k < by_shard[g].size(); ++k) row_of[static_cast<size_t>(by_shard[g][k])] = shard_rows[g].data() + k * d;
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + static_cast<size_t>(i) * d, row_of[static_cast<size_t>(inverse[static_cast<size_t>(i)])], d * sizeof(float));
}

void PsClient::push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step) {
  const size_t d = static_cast<size_t>(dim(table));
  for (int64_t i = 0; i < n * static_cast<int64_t>(d); ++i)
    SC_CHECK_ARG(std::isfinite(grads[i]), "gradients of table '", table, "' contain NaN or Inf; nothing was pushed");
  std::vector<int64_t> unique;
  std::vector<int32_t> inverse;
  dedup(ids, n, unique, inverse);
  std::vector<float> summed(unique.size() * d, 0.f);
  for (int64_t i = 0; i < n; ++i) {  // position order: a fixed summation order
    float* dst = summed.data() + static_cast<size_t>(inverse[static_cast<size_t>(i)]) * d;
    const float* src = grads + static_cast<size_t>(i) * d;
    for (size_t k = 0; k < d; ++k) dst[k] += src[k];
  }
  auto by_shard = route(unique, total_shards_);
  std::vector<std::vector<int64_t>> shard_ids(by_shard.size());
  std::vector<std::vector<float>> shard_grads(by_shard.size());
  for (size_t g = 0; g < by_shard.size(); ++g)
    for (int32_t i : by_shard[g]) {
      shard_ids[g].push_back(unique[static_cast<size_t>(i)]);
      shard_grads[g].insert(shard_grads[g].end(), summed.begin() + static_cast<long>(i * d),
                            summed.begin() + static_cast<long>((i + 1) * d));
    }
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (size_t g = 0; g < by_shard.size(); ++g)
      embedded_->shard(static_cast<int>(g)).push(table, shard_ids[g].data(), static_cast<int64_t>(shard_ids[g].size()),
                                                 shard_grads[g].data(), step, 0, 0);
    return;
  }
  TableHeader h{};
  h.name_bytes = static_cast<uint32_t>(table.size());
  h.step = step;
  h.worker = options_.worker;
  h.num_workers = options_.num_workers;
  std::vector<TableHeader> headers(by_shard.size(), h);
  static const char zeros[8] = {};
  std::vector<rpc::RpcFuture> futures(by_shard.size());
  for (size_t g = 0; g < by_shard.size(); ++g) {
    // Synchronous mode pushes to every shard, empty or not: each shard counts the workers.
    if (shard_ids[g].empty() && options_.num_workers == 0) continue;
    headers[g].num_ids = shard_ids[g].size();
    iovec segs[5] = {{&headers[g], sizeof(TableHeader)},
                     {const_cast<char*>(table.data()), table.size()},
                     {const_cast<char*>(zeros), padded8(table.size()) - table.size()},
                     {shard_ids[g].data(), shard_ids[g].size() * sizeof(int64_t)},
                     {shard_grads[g].data(), shard_grads[g].size() * sizeof(float)}};
    futures[g] = conns_[g]->call_async(kPush, segs);
  }
  for (auto& f : futures)
    if (f.valid()) f.get();
}

std::vector<Json> PsClient::call_json(uint16_t method, const Json& body, int only) {
  std::string text = body.dump();
  std::vector<Json> out;
  if (embedded_) throw InvalidArgument("internal: call_json on an embedded client");
  std::vector<rpc::RpcFuture> futures;
  for (int g = 0; g < total_shards_; ++g) {
    if (only >= 0 && g != only) continue;
    iovec seg{text.data(), text.size()};
    futures.push_back(conns_[static_cast<size_t>(g)]->call_async(method, {&seg, 1}));
  }
  for (auto& f : futures) {
    rpc::Response r = f.get();
    out.push_back(r.bytes ? parse_reply(r) : Json());
  }
  return out;
}

std::string PsClient::save(const std::string& root, int64_t step, bool overwrite) {
  std::string dir = root + "/step-" + std::to_string(step);
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (int g = 0; g < total_shards_; ++g) embedded_->shard(g).save(dir, step, overwrite);
    return dir;
  }
  Json j = Json::object();
  j["dir"] = dir;
  j["step"] = step;
  j["overwrite"] = overwrite;
  call_json(kSave, j);
  return dir;
}

int64_t PsClient::restore(const std::string& snapshot_dir) {
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    // Read everything first: a failure leaves every shard as it was.
    std::vector<std::unique_ptr<PsShard>> fresh;
    int64_t step = 0;
    for (int g = 0; g < total_shards_; ++g) {
      fresh.push_back(std::make_unique<PsShard>(embedded_->shard(g).layout()));
      step = fresh.back()->restore(snapshot_dir);
    }
    for (int g = 0; g < total_shards_; ++g) embedded_->shard(g) = std::move(*fresh[static_cast<size_t>(g)]);
    return step;
  }
  Json j = Json::object();
  j["dir"] = snapshot_dir;
  return call_json(kRestore, j)[0].at("step").as_int();
}

void PsClient::kv_put(const std::string& key, const Json& value) {
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    embedded_->shard(0).kv_put(key, value);
    return;
  }
  Json j = Json::object();
  j["key"] = key;
  j["value"] = value;
  call_json(kKvPut, j, 0);
}

Json PsClient::kv_get(const std::string& key) {
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    const Json* v = embedded_->shard(0).kv_get(key);
    return v ? *v : Json();
  }
  Json j = Json::object();
  j["key"] = key;
  return call_json(kKvGet, j, 0)[0].at("value");
}

void PsClient::barrier(const std::string& name, int count) {
  if (embedded_) {
    SC_CHECK_ARG(count == 1, "an embedded server has one worker; barrier count must be 1, got ", count);
    return;
  }
  Json j = Json::object();
  j["name"] = name;
  j["count"] = count;
  call_json(kBarrier, j, 0);
}

std::vector<float> PsClient::dense_pull(const std::string& name, int64_t size, float init) {
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    return embedded_->shard(0).dense(name, size, init);
  }
  Json j = Json::object();
  j["name"] = name;
  j["size"] = size;
  j["init"] = static_cast<double>(init);
  std::string text = j.dump();
  iovec seg{text.data(), text.size()};
  rpc::Response r = conns_[0]->call(kDensePull, {&seg, 1});
  std::vector<float> v(r.bytes / sizeof(float));
  std::memcpy(v.data(), r.data.data(), v.size() * sizeof(float));
  return v;
}

void PsClient::dense_push(const std::string& name, const float* grads, int64_t size, float lr) {
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    embedded_->shard(0).dense_push(name, grads, size, lr);
    return;
  }
  TableHeader h{};
  h.name_bytes = static_cast<uint32_t>(name.size());
  std::memcpy(&h.flags, &lr, sizeof(lr));
  static const char zeros[8] = {};
  iovec segs[4] = {{&h, sizeof(h)},
                   {const_cast<char*>(name.data()), name.size()},
                   {const_cast<char*>(zeros), padded8(name.size()) - name.size()},
                   {const_cast<float*>(grads), static_cast<size_t>(size) * sizeof(float)}};
  conns_[0]->call(kDensePush, segs);
}

Json PsClient::stats() {
  Json out = Json::array();
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (int g = 0; g < total_shards_; ++g) out.push_back(embedded_->shard(g).stats());
    return out;
  }
  for (Json& j : call_json(kStats, Json::object())) out.push_back(std::move(j));
  return out;
}

}  // namespace sparsecore::ps
