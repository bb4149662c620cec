#include "sparsecore/ps/ps_client.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <utility>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "sparsecore/rpc/rpc_error.h"

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

const char kZeros[8] = {};

}  // namespace

void ShardedIds::build(const int64_t* ids, int64_t n, int total_shards) {
  SC_CHECK_ARG(n >= 0 && n < (int64_t{1} << 31), "number of ids must be in [0, 2^31), got ", n);
  // Load at most 1/8 while the slots fit in L1 (32 KiB), else 1/4: the probe loop's cost is
  // its mispredicted exits, and halving the load halves the probes that run on (the KV
  // results in bench/results/kv.md were measured with these loads).
  size_t cap = 16;
  const size_t spread = static_cast<size_t>(n) <= 1024 ? 8 : 4;
  while (cap < static_cast<size_t>(n) * spread) cap <<= 1;
  const uint64_t mask = cap - 1;
  slots_.assign(cap, -1);
  unique.resize(static_cast<size_t>(n));
  shard_of_.resize(static_cast<size_t>(n));
  inverse.resize(static_cast<size_t>(n));
  starts.assign(static_cast<size_t>(total_shards) + 1, 0);
  int32_t* slots = slots_.data();
  int64_t* uniq = unique.data();
  int32_t num_unique = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = ids[i];
    const uint64_t h = key_hash(key);
    uint64_t slot = h & mask;
    int32_t u;
    while ((u = slots[slot]) >= 0 && uniq[u] != key) slot = (slot + 1) & mask;
    if (u < 0) {  // first sighting
      u = num_unique++;
      slots[slot] = u;
      uniq[u] = key;
      int g =
          total_shards == 1 ? 0 : global_shard_of_bucket(static_cast<uint32_t>(h >> (64 - kBucketBits)), total_shards);
      shard_of_[static_cast<size_t>(u)] = static_cast<uint16_t>(g);
      ++starts[static_cast<size_t>(g) + 1];
    }
    inverse[static_cast<size_t>(i)] = u;
  }
  unique.resize(static_cast<size_t>(num_unique));
  for (int g = 0; g < total_shards; ++g) starts[static_cast<size_t>(g) + 1] += starts[static_cast<size_t>(g)];
  grouped.clear();
  position.clear();
  if (total_shards == 1) return;  // one shard: unique order is the grouped order
  grouped.resize(unique.size());
  position.resize(unique.size());
  std::vector<int64_t> cursor(starts.begin(), starts.end() - 1);
  for (size_t u = 0; u < unique.size(); ++u) {
    int64_t at = cursor[shard_of_[u]]++;
    grouped[static_cast<size_t>(at)] = unique[u];
    position[u] = static_cast<int32_t>(at);
  }
}

// Buffers of one pull or push, reused between calls (PsClient keeps a free list).
struct PsClient::CallScratch {
  ShardedIds ids;
  PodVector<float> rows;  // (num_unique, dim) in grouped order
  std::vector<TableHeader> headers;
};

std::unique_ptr<PsClient::CallScratch> PsClient::take_scratch() {
  {
    std::lock_guard<std::mutex> lock(scratch_mutex_);
    if (!free_scratch_.empty()) {
      auto s = std::move(free_scratch_.back());
      free_scratch_.pop_back();
      return s;
    }
  }
  return std::make_unique<CallScratch>();
}

void PsClient::give_back(std::unique_ptr<CallScratch> scratch) {
  std::lock_guard<std::mutex> lock(scratch_mutex_);
  if (free_scratch_.size() < 64) free_scratch_.push_back(std::move(scratch));
}

PsClient::PendingPull::PendingPull(PendingPull&& other) noexcept
    : client_(std::exchange(other.client_, nullptr)),
      scratch_(std::move(other.scratch_)),
      futures_(std::move(other.futures_)),
      out_(other.out_),
      n_(other.n_),
      dim_(other.dim_),
      direct_(other.direct_) {}

PsClient::PendingPull& PsClient::PendingPull::operator=(PendingPull&& other) noexcept {
  if (this != &other) {
    this->~PendingPull();
    new (this) PendingPull(std::move(other));
  }
  return *this;
}

PsClient::PendingPull::~PendingPull() {
  if (!client_) return;
  try {
    wait();  // replies may still land in the scratch: never hand it back before they have
  } catch (...) {
  }
}

void PsClient::PendingPull::wait() {
  SC_CHECK_ARG(client_ != nullptr, "PendingPull::wait on an empty or finished pull");
  PsClient* client = client_;
  client_ = nullptr;
  std::unique_ptr<CallScratch> scratch = std::move(scratch_);
  std::exception_ptr error;
  for (size_t g = 0; g < futures_.size(); ++g) {
    if (!futures_[g].valid()) continue;
    try {
      rpc::Response r = futures_[g].get();
      size_t expect = static_cast<size_t>(scratch->ids.shard_size(static_cast<int>(g))) * dim_ * sizeof(float);
      SC_CHECK(r.in_caller_buffer && r.bytes == expect, RpcProtocolError, "pull reply of ", r.bytes,
               " bytes from shard ", g, ", expected ", expect);
    } catch (...) {
      if (!error) error = std::current_exception();  // keep reading the other shards' replies
    }
  }
  futures_.clear();
  if (!error && !direct_) {
    // Scatter: the row of id i is the grouped row of its unique id.
    const ShardedIds& ids = scratch->ids;
    const size_t bytes = dim_ * sizeof(float);
    for (int64_t i = 0; i < n_; ++i)
      std::memcpy(out_ + static_cast<size_t>(i) * dim_,
                  scratch->rows.data() + static_cast<size_t>(ids.row_of(ids.inverse[static_cast<size_t>(i)])) * dim_,
                  bytes);
  }
  client->give_back(std::move(scratch));
  if (error) std::rethrow_exception(error);
}

PsClient::PsClient(const std::vector<std::string>& addresses, PsClientOptions options) : options_(options) {
  SC_CHECK_ARG(!addresses.empty(), "at least one server address is needed");
  for (size_t s = 0; s < addresses.size(); ++s) {
    auto [host, port] = split_address(addresses[s]);
    rpc::ClientOptions co;
    co.token = options_.token;
    co.call_timeout_ms = options_.timeout_ms;
    co.connect_timeout_ms = options_.connect_timeout_ms;
    co.heartbeat_ms = options_.heartbeat_ms;
    co.poll_us = options_.poll_us;
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
  if (options_.num_workers > 0) {  // tell every shard which rank these connections are
    SC_CHECK_ARG(options_.worker < options_.num_workers, "worker ", options_.worker, " out of range for ",
                 options_.num_workers, " workers");
    Json j = Json::object();
    j["worker"] = static_cast<int64_t>(options_.worker);
    call_json(kJoin, j);
  }
}

PsClient::PsClient(PsServer& embedded, PsClientOptions options)
    : options_(options), total_shards_(embedded.num_shards()), embedded_(&embedded) {
  SC_CHECK_ARG(embedded.options().num_servers == 1, "an embedded server must be the only server");
}

PsClient::~PsClient() = default;

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
  pull_async(table, ids, n, train, out).wait();
}

PsClient::PendingPull PsClient::pull_async(const std::string& table, const int64_t* ids, int64_t n, bool train,
                                           float* out) {
  SC_CHECK_ARG(n >= 0, "n must be >= 0");
  PendingPull p;
  p.dim_ = static_cast<size_t>(dim(table));
  p.out_ = out;
  p.n_ = n;
  p.scratch_ = take_scratch();
  p.client_ = this;
  CallScratch& s = *p.scratch_;
  s.ids.build(ids, n, total_shards_);
  const int64_t num_unique = s.ids.num_unique();
  // One shard and no duplicates: the unique ids are the caller's ids, in order.
  p.direct_ = total_shards_ == 1 && num_unique == n;
  float* rows = out;
  if (!p.direct_) {
    s.rows.resize(static_cast<size_t>(num_unique) * p.dim_);
    rows = s.rows.data();
  }
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (int g = 0; g < total_shards_; ++g)
      if (s.ids.shard_size(g))
        embedded_->shard(g).pull(table, s.ids.shard_ids(g), s.ids.shard_size(g), train,
                                 rows + static_cast<size_t>(s.ids.starts[static_cast<size_t>(g)]) * p.dim_);
    return p;
  }
  TableHeader h{};
  h.name_bytes = static_cast<uint32_t>(table.size());
  h.flags = train ? kPullTrain : 0;
  s.headers.assign(static_cast<size_t>(total_shards_), h);
  p.futures_.resize(static_cast<size_t>(total_shards_));
  for (int g = 0; g < total_shards_; ++g) {
    int64_t count = s.ids.shard_size(g);
    if (count == 0) continue;
    s.headers[static_cast<size_t>(g)].num_ids = static_cast<uint64_t>(count);
    const int64_t* shard_ids = p.direct_ ? ids : s.ids.shard_ids(g);
    iovec segs[4] = {{&s.headers[static_cast<size_t>(g)], sizeof(TableHeader)},
                     {const_cast<char*>(table.data()), table.size()},
                     {const_cast<char*>(kZeros), padded8(table.size()) - table.size()},
                     {const_cast<int64_t*>(shard_ids), static_cast<size_t>(count) * sizeof(int64_t)}};
    size_t bytes = static_cast<size_t>(count) * p.dim_ * sizeof(float);
    p.futures_[static_cast<size_t>(g)] = conns_[static_cast<size_t>(g)]->call_async(
        kPull, segs, -1, rows + static_cast<size_t>(s.ids.starts[static_cast<size_t>(g)]) * p.dim_, bytes);
  }
  return p;
}

void PsClient::push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step) {
  SC_CHECK_ARG(n >= 0, "n must be >= 0");
  const size_t d = static_cast<size_t>(dim(table));
  for (int64_t i = 0; i < n * static_cast<int64_t>(d); ++i)
    SC_CHECK_ARG(std::isfinite(grads[i]), "gradients of table '", table, "' contain NaN or Inf; nothing was pushed");
  std::unique_ptr<CallScratch> scratch = take_scratch();
  CallScratch& s = *scratch;
  s.ids.build(ids, n, total_shards_);
  const int64_t num_unique = s.ids.num_unique();
  const bool direct = total_shards_ == 1 && num_unique == n;
  const float* summed = grads;
  if (!direct) {
    // Gradients of duplicate ids summed in position order (a fixed order), in grouped rows.
    s.rows.assign(static_cast<size_t>(num_unique) * d, 0.f);
    for (int64_t i = 0; i < n; ++i) {
      float* dst = s.rows.data() + static_cast<size_t>(s.ids.row_of(s.ids.inverse[static_cast<size_t>(i)])) * d;
      const float* src = grads + static_cast<size_t>(i) * d;
      for (size_t k = 0; k < d; ++k) dst[k] += src[k];
    }
    summed = s.rows.data();
  }
  auto shard_ids = [&](int g) { return direct ? ids : s.ids.shard_ids(g); };
  auto shard_grads = [&](int g) { return summed + static_cast<size_t>(s.ids.starts[static_cast<size_t>(g)]) * d; };
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    for (int g = 0; g < total_shards_; ++g)
      embedded_->shard(g).push(table, shard_ids(g), s.ids.shard_size(g), shard_grads(g), step, 0, 0);
    give_back(std::move(scratch));
    return;
  }
  TableHeader h{};
  h.name_bytes = static_cast<uint32_t>(table.size());
  h.step = step;
  h.worker = options_.worker;
  h.num_workers = options_.num_workers;
  s.headers.assign(static_cast<size_t>(total_shards_), h);
  std::vector<rpc::RpcFuture> futures(static_cast<size_t>(total_shards_));
  for (int g = 0; g < total_shards_; ++g) {
    int64_t count = s.ids.shard_size(g);
    // Every shard gets the push, empty or not: in synchronous mode each shard counts the
    // workers, and every push advances the table's step on every shard alike (the step of
    // global-step optimizers, as one embedded backward advances it).
    s.headers[static_cast<size_t>(g)].num_ids = static_cast<uint64_t>(count);
    iovec segs[5] = {{&s.headers[static_cast<size_t>(g)], sizeof(TableHeader)},
                     {const_cast<char*>(table.data()), table.size()},
                     {const_cast<char*>(kZeros), padded8(table.size()) - table.size()},
                     {const_cast<int64_t*>(shard_ids(g)), static_cast<size_t>(count) * sizeof(int64_t)},
                     {const_cast<float*>(shard_grads(g)), static_cast<size_t>(count) * d * sizeof(float)}};
    futures[static_cast<size_t>(g)] = conns_[static_cast<size_t>(g)]->call_async(kPush, segs);
  }
  std::exception_ptr error;
  for (auto& f : futures) {
    if (!f.valid()) continue;
    try {
      f.get();
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  give_back(std::move(scratch));
  if (error) std::rethrow_exception(error);
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
  // Every reply is awaited before the first error is rethrown: a phased call (save,
  // restore) must know that no shard is still working before its next phase.
  std::exception_ptr first_error;
  for (auto& f : futures) {
    try {
      rpc::Response r = f.get();
      out.push_back(r.bytes ? parse_reply(r) : Json());
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
      out.push_back(Json());
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  return out;
}

std::string PsClient::save(const std::string& name, int64_t step, bool overwrite) {
  check_snapshot_name(name);
  const std::string save_id = random_suffix();
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    const std::string& root = embedded_->options().snapshot_dir;
    try {
      const std::string staging = begin_snapshot_write(root, name, save_id, overwrite);
      for (int g = 0; g < total_shards_; ++g) embedded_->shard(g).write_snapshot(staging, step, save_id);
      commit_snapshot(root, name, save_id, total_shards_, overwrite);
    } catch (...) {
      if (!root.empty()) {
        try {
          abort_snapshot(root, name, save_id);
        } catch (const Error&) {
        }
      }
      throw;
    }
    return name;
  }
  Json j = Json::object();
  j["phase"] = "write";
  j["name"] = name;
  j["save_id"] = save_id;
  j["step"] = step;
  j["overwrite"] = overwrite;
  try {
    call_json(kSave, j);
  } catch (...) {
    j["phase"] = "abort";
    try {
      call_json(kSave, j, 0);
    } catch (const std::exception&) {  // the write's error is the one to report
    }
    throw;
  }
  j["phase"] = "commit";
  call_json(kSave, j, 0);
  return name;
}

int64_t PsClient::restore(const std::string& requested) {
  std::string name = requested;
  if (embedded_) {
    std::lock_guard<std::mutex> lock(embedded_mutex_);
    const std::string& root = embedded_->options().snapshot_dir;
    if (name.empty()) {
      snapshot_path(root, "latest");  // refuses a server without a snapshot directory
      const std::string latest = latest_snapshot(root);
      SC_CHECK(!latest.empty(), NotFound, "no complete snapshot in the snapshot directory");
      name = std::filesystem::path(latest).filename().string();
    }
    const std::string dir = snapshot_path(root, name);
    const std::string restore_id = random_suffix();
    int64_t step = 0;
    try {
      for (int g = 0; g < total_shards_; ++g) step = embedded_->shard(g).prepare_restore(dir, restore_id);
    } catch (...) {
      for (int g = 0; g < total_shards_; ++g) embedded_->shard(g).abort_restore(restore_id);
      throw;
    }
    for (int g = 0; g < total_shards_; ++g) embedded_->shard(g).commit_restore(restore_id);
    return step;
  }
  Json j = Json::object();
  if (name.empty()) {
    j["phase"] = "latest";
    name = call_json(kRestore, j, 0)[0].at("name").as_string();
    SC_CHECK(!name.empty(), NotFound, "no complete snapshot in the servers' snapshot directory");
  }
  check_snapshot_name(name);
  j["phase"] = "prepare";
  j["name"] = name;
  j["restore_id"] = random_suffix();
  std::vector<Json> prepared;
  try {
    prepared = call_json(kRestore, j);
  } catch (...) {
    j["phase"] = "abort";
    try {
      call_json(kRestore, j);
    } catch (const std::exception&) {  // the prepare's error is the one to report
    }
    throw;
  }
  const int64_t step = prepared[0].at("step").as_int();
  j["phase"] = "commit";
  call_json(kRestore, j);
  return step;
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
  if (options_.num_workers > 0) j["worker"] = static_cast<int64_t>(options_.worker);
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
  iovec segs[4] = {{&h, sizeof(h)},
                   {const_cast<char*>(name.data()), name.size()},
                   {const_cast<char*>(kZeros), padded8(name.size()) - name.size()},
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
