#include "sparsecore/ps/ps_server.h"

#include <cstring>
#include <filesystem>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "sparsecore/rpc/reactor.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {
namespace {

Json parse_json(const rpc::Request& r) {
  return Json::parse(std::string_view(reinterpret_cast<const char*>(r.payload.data()), r.payload.size()));
}

void reply_json(rpc::Reply& reply, const Json& j) {
  std::string s = j.dump();
  reply.append(s.data(), s.size());
}

// A checked view of a pull/push request: header, name, then the arrays.
struct TableRequest {
  TableHeader h;
  std::string name;
  const std::byte* arrays = nullptr;
  size_t array_bytes = 0;
};

TableRequest parse_table_request(const rpc::Request& r, int64_t max_ids) {
  TableRequest t;
  SC_CHECK_ARG(r.payload.size() >= sizeof(TableHeader), "request of ", r.payload.size(), " bytes is shorter than its header");
  std::memcpy(&t.h, r.payload.data(), sizeof(TableHeader));
  size_t name_end = sizeof(TableHeader) + padded8(t.h.name_bytes);
  SC_CHECK_ARG(t.h.name_bytes <= 4096 && name_end <= r.payload.size(), "bad table name length ", t.h.name_bytes);
  SC_CHECK_ARG(t.h.num_ids <= static_cast<uint64_t>(max_ids), "request has ", t.h.num_ids, " ids, limit is ", max_ids);
  t.name.assign(reinterpret_cast<const char*>(r.payload.data()) + sizeof(TableHeader), t.h.name_bytes);
  t.arrays = r.payload.data() + name_end;
  t.array_bytes = r.payload.size() - name_end;
  return t;
}

// `count` values of T at `bytes`: in place when suitably aligned, else copied into `copy`.
// Frames lie back to back in the connection's read buffer, so a payload after one whose
// length is not a multiple of 8 starts misaligned; reading it through a T* would be UB.
template <typename T>
const T* aligned_view(const std::byte* bytes, size_t count, PodVector<T>& copy) {
  if (reinterpret_cast<uintptr_t>(bytes) % alignof(T) == 0) return reinterpret_cast<const T*>(bytes);
  copy.resize(count);
  std::memcpy(copy.data(), bytes, count * sizeof(T));
  return copy.data();
}

}  // namespace

PsServer::PsServer(PsServerOptions options) : options_(std::move(options)) {
  SC_CHECK_ARG(options_.num_servers >= 1, "num_servers must be >= 1, got ", options_.num_servers);
  SC_CHECK_ARG(options_.server_index >= 0 && options_.server_index < options_.num_servers, "server_index ",
               options_.server_index, " out of range for ", options_.num_servers, " servers");
  int shards = options_.rpc.num_reactors;
  SC_CHECK_ARG(shards >= 1 && shards <= 256, "shards must be in [1, 256], got ", shards);
  int total = shards * options_.num_servers;
  for (int i = 0; i < shards; ++i)
    shards_.push_back(std::make_unique<PsShard>(ShardLayout{options_.server_index * shards + i, total}));
  reactor_state_.resize(static_cast<size_t>(shards));
  if (!options_.snapshot_dir.empty()) {
    make_directories(options_.snapshot_dir);
    remove_unfinished_snapshots(options_.snapshot_dir);
  }
}

PsServer::~PsServer() { stop(); }

int64_t PsServer::restore(const std::string& name) {
  SC_CHECK_ARG(!rpc_, "restore a running server through a client (PsClient::restore)");
  const std::string dir = snapshot_path(options_.snapshot_dir, name);
  int64_t step = 0;
  for (auto& s : shards_) step = s->prepare_restore(dir, "startup");
  for (auto& s : shards_) s->commit_restore("startup");
  return step;
}

void PsServer::start() {
  SC_CHECK_ARG(!rpc_, "server already started");
  rpc_ = std::make_unique<rpc::RpcServer>(options_.rpc);
  register_methods();
  snapshot_stop_ = false;
  snapshot_thread_ = std::thread([this] { snapshot_loop(); });
  rpc_->start();
}

void PsServer::stop() {
  if (snapshot_thread_.joinable()) {  // queued saves finish; their replies go to stopped reactors
    {
      std::lock_guard<std::mutex> lock(snapshot_mutex_);
      snapshot_stop_ = true;
    }
    snapshot_cv_.notify_all();
    snapshot_thread_.join();
  }
  if (rpc_) rpc_->stop();
  rpc_.reset();
}

void PsServer::snapshot_loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(snapshot_mutex_);
      snapshot_cv_.wait(lock, [this] { return snapshot_stop_ || !snapshot_jobs_.empty(); });
      if (snapshot_jobs_.empty()) return;
      job = std::move(snapshot_jobs_.front());
      snapshot_jobs_.pop_front();
    }
    job();
  }
}

void PsServer::off_reactor(const rpc::Request& request, rpc::Reply& reply, std::function<void(rpc::Reply&)> work,
                           std::function<void()> then) {
  const rpc::DeferredReply token = reply.defer();
  const int reactor = request.reactor;
  auto job = [this, token, reactor, work = std::move(work), then = std::move(then)] {
    auto out = std::make_shared<rpc::Reply>();
    bool ok = true;
    try {
      work(*out);
    } catch (...) {
      std::string message;
      const rpc::Status status = rpc::status_of_current_exception(&message);
      out->fail(status, message);
      ok = false;
    }
    rpc_->reactor(reactor).post([this, token, reactor, out, ok, then] {
      if (ok && then) {
        try {
          then();
        } catch (...) {
          std::string message;
          const rpc::Status status = rpc::status_of_current_exception(&message);
          out->fail(status, message);
        }
      }
      rpc_->reactor(reactor).send_deferred(token, std::move(*out));
    });
  };
  {
    std::lock_guard<std::mutex> lock(snapshot_mutex_);
    snapshot_jobs_.push_back(std::move(job));
  }
  snapshot_cv_.notify_one();
}

void PsServer::register_methods() {
  rpc::RpcServer& srv = *rpc_;
  const int64_t max_ids = options_.max_ids_per_request;
  srv.register_method(kInfo, [this](const rpc::Request&, rpc::Reply& reply) {
    Json j = Json::object();
    j["server_index"] = options_.server_index;
    j["num_servers"] = options_.num_servers;
    j["shards"] = num_shards();
    reply_json(reply, j);
  });
  srv.register_method(kCreateTable, [this](const rpc::Request& r, rpc::Reply&) {
    Json j = parse_json(r);
    shard(r.reactor).create_table(TableConfig::from_json(j.at("table")),
                                  static_cast<uint64_t>(j.at("seed").as_int("seed")));
  });
  srv.register_method(kPull, [this, max_ids](const rpc::Request& r, rpc::Reply& reply) {
    TableRequest t = parse_table_request(r, max_ids);
    SC_CHECK_ARG(t.array_bytes == t.h.num_ids * sizeof(int64_t), "pull of ", t.h.num_ids, " ids carries ",
                 t.array_bytes, " bytes");
    PsShard& s = shard(r.reactor);
    int dim = s.dim(t.name);
    // The reply is bounded like a request: refused before anything is allocated or inserted.
    const uint64_t reply_bytes = t.h.num_ids * static_cast<uint64_t>(dim) * sizeof(float);
    SC_CHECK_ARG(reply_bytes <= options_.rpc.max_frame_bytes, "pull of ", t.h.num_ids, " ids of table '", t.name,
                 "' (dim ", dim, ") would reply ", reply_bytes, " bytes, above the server's frame limit of ",
                 options_.rpc.max_frame_bytes, " bytes; pull fewer ids per request");
    float* out = reply.resize_as<float>(t.h.num_ids * static_cast<size_t>(dim));
    PodVector<int64_t> copy;
    const int64_t* ids = aligned_view<int64_t>(t.arrays, t.h.num_ids, copy);
    s.pull(t.name, ids, static_cast<int64_t>(t.h.num_ids), t.h.flags & kPullTrain, out);
  });
  srv.register_method(kPush, [this, max_ids](const rpc::Request& r, rpc::Reply& reply) {
    TableRequest t = parse_table_request(r, max_ids);
    PsShard& s = shard(r.reactor);
    size_t n = t.h.num_ids;
    size_t dim = static_cast<size_t>(s.dim(t.name));
    SC_CHECK_ARG(t.array_bytes == n * (sizeof(int64_t) + dim * sizeof(float)), "push of ", n, " ids of dim ", dim,
                 " carries ", t.array_bytes, " bytes");
    PodVector<int64_t> id_copy;
    PodVector<float> grad_copy;
    const int64_t* ids = aligned_view<int64_t>(t.arrays, n, id_copy);
    const float* grads = aligned_view<float>(t.arrays + n * sizeof(int64_t), n * dim, grad_copy);
    bool complete = s.push(t.name, ids, static_cast<int64_t>(n), grads, t.h.step, t.h.worker, t.h.num_workers);
    ReactorState& st = reactor_state_[static_cast<size_t>(r.reactor)];
    if (!complete) {
      st.waiting_push.push_back(reply.defer());
      return;
    }
    rpc::Reactor& reactor = rpc_->reactor(r.reactor);
    for (const auto& token : st.waiting_push) reactor.send_deferred(token, rpc::Reply());
    st.waiting_push.clear();
  });
  // Saves and restores run in phases driven by the client (ps_client.cpp), so that a save
  // becomes visible and a restore takes effect on every shard or on none.
  srv.register_method(kSave, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const std::string& root = options_.snapshot_dir;
    const std::string phase = j.at("phase").as_string("phase");
    const std::string name = j.at("name").as_string("name");
    const std::string save_id = j.at("save_id").as_string("save_id");
    const bool overwrite = j.get("overwrite") && j.at("overwrite").as_bool("overwrite");
    if (phase == "write") {
      // The shard is copied here, between two requests (a consistent cut); the copy is
      // written on the snapshot thread.
      snapshot_path(root, name);
      auto part = std::make_shared<SnapshotPart>(shard(r.reactor).encode_snapshot(j.at("step").as_int("step"), save_id));
      const std::string staging = begin_snapshot_write(root, name, save_id, overwrite);
      off_reactor(r, reply, [staging, part](rpc::Reply&) { part->write(staging); });
    } else if (phase == "commit") {
      snapshot_path(root, name);
      const int total = shard(r.reactor).layout().total_shards;
      off_reactor(r, reply, [root, name, save_id, total, overwrite](rpc::Reply&) {
        commit_snapshot(root, name, save_id, total, overwrite);
      });
    } else if (phase == "abort") {
      snapshot_path(root, name);
      off_reactor(r, reply, [root, name, save_id](rpc::Reply&) { abort_snapshot(root, name, save_id); });
    } else {
      throw InvalidArgument("unknown save phase '" + phase + "'");
    }
  });
  srv.register_method(kRestore, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const std::string phase = j.at("phase").as_string("phase");
    PsShard& s = shard(r.reactor);
    Json out = Json::object();
    if (phase == "latest") {
      SC_CHECK_ARG(!options_.snapshot_dir.empty(), "this server has no snapshot directory (start it with "
                   "--snapshot-dir); save and restore are refused");
      const std::string dir = latest_snapshot(options_.snapshot_dir);
      out["name"] = dir.empty() ? std::string() : std::filesystem::path(dir).filename().string();
    } else if (phase == "prepare") {
      // Read and checked on the snapshot thread into a fresh shard; kept on this reactor.
      const std::string dir = snapshot_path(options_.snapshot_dir, j.at("name").as_string("name"));
      const std::string restore_id = j.at("restore_id").as_string("restore_id");
      auto loaded = std::make_shared<std::unique_ptr<PsShard>>(std::make_unique<PsShard>(s.layout()));
      off_reactor(
          r, reply,
          [dir, loaded](rpc::Reply& done) {
            Json step = Json::object();
            step["step"] = (*loaded)->restore(dir);
            reply_json(done, step);
          },
          [&s, loaded, restore_id] { s.stage_restore(std::move(*loaded), restore_id); });
      return;
    } else if (phase == "commit") {
      s.commit_restore(j.at("restore_id").as_string("restore_id"));
    } else if (phase == "abort") {
      s.abort_restore(j.at("restore_id").as_string("restore_id"));
    } else {
      throw InvalidArgument("unknown restore phase '" + phase + "'");
    }
    reply_json(reply, out);
  });
  srv.register_method(kStats, [this](const rpc::Request& r, rpc::Reply& reply) { reply_json(reply, shard(r.reactor).stats()); });
  srv.register_method(kKvPut, [this](const rpc::Request& r, rpc::Reply&) {
    Json j = parse_json(r);
    shard(r.reactor).kv_put(j.at("key").as_string("key"), j.at("value"));
  });
  srv.register_method(kKvGet, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const Json* v = shard(r.reactor).kv_get(j.at("key").as_string("key"));
    Json out = Json::object();
    out["value"] = v ? *v : Json();
    reply_json(reply, out);
  });
  srv.register_method(kBarrier, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    std::string name = j.at("name").as_string("name");
    int64_t count = j.at("count").as_int("count");
    SC_CHECK_ARG(count >= 1, "barrier count must be >= 1, got ", count);
    auto& waiting = reactor_state_[static_cast<size_t>(r.reactor)].barriers[name];
    if (static_cast<int64_t>(waiting.size()) + 1 < count) {
      waiting.push_back(reply.defer());
      return;
    }
    rpc::Reactor& reactor = rpc_->reactor(r.reactor);
    for (const auto& token : waiting) reactor.send_deferred(token, rpc::Reply());
    reactor_state_[static_cast<size_t>(r.reactor)].barriers.erase(name);
  });
  srv.register_method(kDensePull, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    std::vector<float>& v = shard(r.reactor).dense(j.at("name").as_string("name"), j.at("size").as_int("size"),
                                                   static_cast<float>(j.at("init").as_double("init")));
    reply.append(v.data(), v.size() * sizeof(float));
  });
  srv.register_method(kDensePush, [this](const rpc::Request& r, rpc::Reply&) {
    TableRequest t = parse_table_request(r, options_.max_ids_per_request);
    float lr;
    std::memcpy(&lr, &t.h.flags, sizeof(lr));
    SC_CHECK_ARG(t.array_bytes % sizeof(float) == 0, "dense gradient bytes not a multiple of 4");
    PodVector<float> copy;
    const size_t count = t.array_bytes / sizeof(float);
    shard(r.reactor).dense_push(t.name, aligned_view<float>(t.arrays, count, copy), static_cast<int64_t>(count), lr);
  });
}

}  // namespace sparsecore::ps
