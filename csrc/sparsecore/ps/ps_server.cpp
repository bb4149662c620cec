#include "sparsecore/ps/ps_server.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_request.h"
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

}  // namespace

PsServer::PsServer(PsServerOptions options) : options_(std::move(options)) {
  SC_CHECK_ARG(options_.num_servers >= 1, "num_servers must be >= 1, got ", options_.num_servers);
  SC_CHECK_ARG(options_.server_index >= 0 && options_.server_index < options_.num_servers, "server_index ",
               options_.server_index, " out of range for ", options_.num_servers, " servers");
  SC_CHECK_ARG(options_.keep_snapshots >= 0, "keep_snapshots must be >= 0, got ", options_.keep_snapshots);
  SC_CHECK_ARG(options_.keep_snapshots == 0 || !options_.snapshot_dir.empty(), "keep_snapshots needs a snapshot_dir");
  int shards = options_.rpc.num_reactors;
  SC_CHECK_ARG(shards >= 1 && shards <= 256, "shards must be in [1, 256], got ", shards);
  int total = shards * options_.num_servers;
  for (int i = 0; i < shards; ++i)
    shards_.push_back(
        std::make_unique<PsShard>(ShardLayout{options_.server_index * shards + i, total}, options_.device_rows));
  reactor_state_.resize(static_cast<size_t>(shards));
  add_methods();
  if (!options_.snapshot_dir.empty()) {
    make_directories(options_.snapshot_dir);
    remove_unfinished_snapshots(options_.snapshot_dir, options_.server_index);
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
  if (!rpc_) {  // serve(): the caller's thread is the reactor
    work(reply);
    if (then) then();
    return;
  }
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

void PsServer::fail_pushes(int reactor, const std::string& table, const std::string& why, rpc::Status status) {
  ReactorState& st = reactor_state_[static_cast<size_t>(reactor)];
  std::vector<rpc::DeferredReply> failed;
  for (auto it = st.waiting_push.begin(); it != st.waiting_push.end();) {
    if (!table.empty() && it->first != table) {
      ++it;
      continue;
    }
    for (const auto& w : it->second)
      if (!w->answered) {  // a push waiting on several tables fails once, with the first
        w->answered = true;
        failed.push_back(w->reply);
      }
    it = st.waiting_push.erase(it);
  }
  if (failed.empty()) return;
  rpc::Reactor& r = rpc_->reactor(reactor);
  for (const auto& token : failed) {  // state first: a send may close a connection (and re-enter)
    rpc::Reply reply;
    reply.fail(status, why + " [shard " + std::to_string(shard(reactor).layout().global_index) + "]");
    r.send_deferred(token, std::move(reply));
  }
}

void PsServer::fail_barriers(int reactor, const std::string& why) {
  std::map<std::string, Barrier> failed = std::move(reactor_state_[static_cast<size_t>(reactor)].barriers);
  reactor_state_[static_cast<size_t>(reactor)].barriers.clear();
  if (failed.empty()) return;
  rpc::Reactor& r = rpc_->reactor(reactor);
  for (const auto& [name, b] : failed)
    for (const Waiter& w : b.waiting) {
      rpc::Reply reply;
      reply.fail(rpc::Status::kStepAborted, "barrier '" + name + "' was aborted: " + why);
      r.send_deferred(w.reply, std::move(reply));
    }
}

void PsServer::abort_steps(int reactor, const std::string& why) {
  for (const auto& [table, step] : shard(reactor).abort_steps())
    fail_pushes(reactor, table, "step " + std::to_string(step) + " of table '" + table + "' was aborted: " + why);
  fail_pushes(reactor, "", why);  // none should be left; never leave a caller waiting
  fail_dense_steps(reactor, why);
}

void PsServer::connection_closed(int reactor, uint64_t connection) {
  ReactorState& st = reactor_state_[static_cast<size_t>(reactor)];
  for (auto it = st.barriers.begin(); it != st.barriers.end();) {  // its own waits go with it
    auto& w = it->second.waiting;
    w.erase(std::remove_if(w.begin(), w.end(), [&](const Waiter& x) { return x.reply.connection == connection; }),
            w.end());
    it = w.empty() ? st.barriers.erase(it) : std::next(it);
  }
  std::erase_if(st.held, [&](const HeldRequest& h) { return h.connection == connection; });
  auto member = st.members.find(connection);
  if (member == st.members.end()) return;
  const uint32_t worker = member->second;
  st.members.erase(member);
  for (const auto& [c, w] : st.members)
    if (w == worker) return;  // the rank is still here through another connection
  st.left.insert(worker);
  st.gate.departed(worker);  // the others no longer wait for it
  release_held(reactor);
  std::string why =
      "worker " + std::to_string(worker) + " left (its connection closed); nothing of the step was applied";
  abort_steps(reactor, why);
  fail_barriers(reactor, why);
}

void PsServer::join(int reactor, uint64_t connection, uint32_t worker) {
  SC_CHECK_ARG(worker < kMaxWorkers, "worker ", worker, " out of range (at most ", kMaxWorkers, " workers)");
  ReactorState& st = reactor_state_[static_cast<size_t>(reactor)];
  auto known = st.members.find(connection);
  if (known != st.members.end() && known->second == worker) return;
  bool back = st.left.erase(worker) > 0;
  for (const auto& [c, w] : st.members) back = back || (w == worker && c != connection);
  st.members[connection] = worker;
  st.gate.joined(worker);
  if (back)
    abort_steps(reactor, "worker " + std::to_string(worker) +
                             " joined again (restarted) while the step was incomplete; nothing of it was applied");
}

void PsServer::barrier(const rpc::Request& r, rpc::Reply& reply) {
  Json j = parse_json(r);
  std::string name = j.at("name").as_string("name");
  int64_t count = j.at("count").as_int("count");
  SC_CHECK_ARG(count >= 1 && count <= (int64_t{1} << 20), "barrier count must be in [1, 2^20], got ", count);
  SC_CHECK_ARG(rpc_ || count == 1, "an embedded server has one worker; barrier count must be 1, got ", count);
  int64_t worker = j.get("worker") ? j.at("worker").as_int("worker") : -1;
  SC_CHECK_ARG(worker >= -1 && worker <= int64_t{UINT32_MAX}, "barrier worker ", worker, " out of range");
  ReactorState& st = reactor_state_[static_cast<size_t>(r.reactor)];
  if (worker >= 0) join(r.reactor, r.connection, static_cast<uint32_t>(worker));
  auto found = st.barriers.find(name);
  if (found != st.barriers.end()) {
    SC_CHECK_ARG(found->second.count == count, "barrier '", name, "' has count ", found->second.count, ", not ", count);
    auto& w = found->second.waiting;
    auto same = std::find_if(w.begin(), w.end(), [&](const Waiter& x) { return worker >= 0 && x.worker == worker; });
    if (same != w.end()) {  // the worker came back (restarted): its earlier wait is void
      rpc::DeferredReply old = same->reply;
      w.erase(same);
      rpc::Reply fail;
      fail.fail(rpc::Status::kStepAborted,
                "barrier '" + name + "': worker " + std::to_string(worker) + " entered it again from another call");
      rpc_->reactor(r.reactor).send_deferred(old, std::move(fail));
      found = st.barriers.find(name);  // the send may have closed connections (and re-entered)
    }
  }
  if (found == st.barriers.end()) found = st.barriers.emplace(name, Barrier{count, {}}).first;
  Barrier& b = found->second;
  if (static_cast<int64_t>(b.waiting.size()) + 1 < count) {
    b.waiting.push_back({reply.defer(), worker});
    return;
  }
  std::vector<Waiter> done = std::move(b.waiting);
  st.barriers.erase(found);
  rpc::Reactor& reactor = rpc_->reactor(r.reactor);
  for (const Waiter& w : done) reactor.send_deferred(w.reply, rpc::Reply());
}

namespace {

std::string table_list(const std::vector<PsShard::TableUpdate>& updates) {
  std::string out;
  for (const auto& u : updates) out += (out.empty() ? "'" : ", '") + std::string(u.table) + "'";
  return out;
}

}  // namespace

void PsServer::push(const rpc::Request& r, rpc::Reply& reply, const std::vector<PsShard::TableUpdate>& updates,
                    int64_t step, uint32_t worker, uint32_t num_workers) {
  ReactorState& st = reactor_state_[static_cast<size_t>(r.reactor)];
  PsShard& s = shard(r.reactor);
  if (num_workers > 0) {
    SC_CHECK_ARG(rpc_ || num_workers == 1, "an embedded server has one worker; num_workers must be 0 or 1, got ",
                 num_workers);
    join(r.reactor, r.connection, worker);
    if (!st.left.empty())
      throw RpcStepAborted("step " + std::to_string(step) + " of table(s) " + table_list(updates) +
                           " cannot complete: worker " + std::to_string(*st.left.begin()) +
                           " left (its connection closed) and has not joined again");
  }
  std::vector<PsShard::PushOutcome> out;
  try {
    out = s.push_tables(updates, step, worker, num_workers);
  } catch (...) {
    // A step that failed as it completed (its summed update made rows non-finite; nothing
    // was applied) fails for every worker that waits on it, not only for the last one.
    std::string message;
    rpc::Status status = rpc::status_of_current_exception(&message);
    if (num_workers > 0)
      for (const auto& u : updates) {
        const std::string name(u.table);
        if (!s.step_pending(name)) fail_pushes(r.reactor, name, message, status);
      }
    throw;
  }
  std::vector<std::string> incomplete;
  for (size_t i = 0; i < updates.size(); ++i) {
    const std::string name(updates[i].table);
    if (out[i].aborted_step >= 0)
      fail_pushes(r.reactor, name,
                  "step " + std::to_string(out[i].aborted_step) + " of table '" + name + "' was aborted: worker " +
                      std::to_string(worker) + " pushed step " + std::to_string(step) +
                      " (a worker restarted or rolled back); nothing of it was applied");
    if (!out[i].complete) incomplete.push_back(name);
  }
  // The pushes that waited on the tables completed now and on nothing else are answered.
  std::vector<rpc::DeferredReply> done;
  for (size_t i = 0; i < updates.size(); ++i) {
    if (!out[i].complete) continue;
    auto waiting = st.waiting_push.find(updates[i].table);
    if (waiting == st.waiting_push.end()) continue;
    for (const auto& w : waiting->second)
      if (!w->answered && --w->outstanding == 0) {
        w->answered = true;
        done.push_back(w->reply);
      }
    st.waiting_push.erase(waiting);
  }
  if (!incomplete.empty()) {
    auto w = std::make_shared<WaitingPush>();
    w->reply = reply.defer();
    w->outstanding = incomplete.size();
    for (const auto& name : incomplete) st.waiting_push[name].push_back(w);
  }
  if (done.empty()) return;
  rpc::Reactor& reactor = rpc_->reactor(r.reactor);  // state first: a send may re-enter
  for (const auto& token : done) reactor.send_deferred(token, rpc::Reply());
}

void PsServer::register_methods() {
  rpc_->on_connection_closed([this](int reactor, uint64_t connection) {
    try {
      connection_closed(reactor, connection);
    } catch (...) {  // a failure to tell waiters must not take the reactor down
    }
  });
  for (const auto& [method, handler] : methods_) rpc_->register_method(method, handler);
}

void PsServer::serve(int shard_index, uint16_t method, std::span<const std::byte> payload, rpc::Reply& reply) {
  SC_CHECK_ARG(!rpc_, "serve() is for a server that is not started");
  SC_CHECK_ARG(shard_index >= 0 && shard_index < num_shards(), "no shard ", shard_index);
  auto it = methods_.find(method);
  if (it == methods_.end()) throw RpcUnknownMethod("unknown method " + std::to_string(method));
  rpc::Request r;
  r.method = method;
  r.reactor = shard_index;
  r.payload = payload;
  it->second(r, reply);
}

void PsServer::add_methods() {
  auto add = [this](uint16_t method, rpc::Handler h) { methods_[method] = std::move(h); };
  const int64_t max_ids = options_.max_ids_per_request;
  add(kInfo, [this](const rpc::Request&, rpc::Reply& reply) {
    Json j = Json::object();
    j["server_index"] = options_.server_index;
    j["num_servers"] = options_.num_servers;
    j["shards"] = num_shards();
    reply_json(reply, j);
  });
  add(kCreateTable, [this](const rpc::Request& r, rpc::Reply&) {
    Json j = parse_json(r);
    shard(r.reactor).create_table(TableConfig::from_json(j.at("table")),
                                  static_cast<uint64_t>(j.at("seed").as_int("seed")));
  });
  add(kPull, [this, max_ids](const rpc::Request& r, rpc::Reply& reply) {
    ++reactor_state_[static_cast<size_t>(r.reactor)].pull_requests;
    TableRequest t = parse_table_request(r.payload, max_ids);
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
    s.check_ids(t.name, ids, static_cast<int64_t>(t.h.num_ids), /*push=*/false);
    s.pull(t.name, ids, static_cast<int64_t>(t.h.num_ids), t.h.flags & kPullTrain, out);
  });
  add(kPush, [this, max_ids](const rpc::Request& r, rpc::Reply& reply) {
    ++reactor_state_[static_cast<size_t>(r.reactor)].push_requests;
    TableRequest t = parse_table_request(r.payload, max_ids);
    size_t n = t.h.num_ids;
    size_t dim = static_cast<size_t>(shard(r.reactor).dim(t.name));
    SC_CHECK_ARG(t.array_bytes == n * (sizeof(int64_t) + dim * sizeof(float)), "push of ", n, " ids of dim ", dim,
                 " carries ", t.array_bytes, " bytes");
    PodVector<int64_t> id_copy;
    PodVector<float> grad_copy;
    const int64_t* ids = aligned_view<int64_t>(t.arrays, n, id_copy);
    const float* grads = aligned_view<float>(t.arrays + n * sizeof(int64_t), n * dim, grad_copy);
    push(r, reply, {{t.name, ids, static_cast<int64_t>(n), grads}}, t.h.step, t.h.worker, t.h.num_workers);
  });
  // Several tables in one request: validated whole (ps_request.h) before any table is read
  // or changed.
  auto dim_of = [this](int reactor) {
    return [this, reactor](std::string_view name) { return shard(reactor).dim(std::string(name)); };
  };
  add(kPullTables, [this, max_ids, dim_of](const rpc::Request& r, rpc::Reply& reply) {
    ++reactor_state_[static_cast<size_t>(r.reactor)].pull_requests;
    TablesRequest t = parse_tables_request(r.payload, false, max_ids, options_.rpc.max_frame_bytes, dim_of(r.reactor));
    PodVector<int64_t> copy;
    const int64_t* ids = aligned_view<int64_t>(t.ids, t.total_ids, copy);
    PsShard& s = shard(r.reactor);
    for (size_t i = 0, at = 0; i < t.names.size(); at += static_cast<size_t>(t.counts[i]), ++i)
      s.check_ids(t.names[i], ids + at, t.counts[i], /*push=*/false);
    // float32 rows go straight into the reply; with a float16 table each table's rows are
    // read first and converted (or copied: a float32 table may follow at any even offset).
    float* out = t.any_half ? nullptr : reply.resize_as<float>(t.total_floats);
    std::byte* wire = t.any_half ? reply.resize_as<std::byte>(t.total_value_bytes) : nullptr;
    PodVector<float> rows;
    for (size_t i = 0; i < t.names.size(); ++i) {
      const size_t values = static_cast<size_t>(t.counts[i]) * static_cast<size_t>(t.dims[i]);
      if (wire) rows.resize(values);
      s.pull(std::string(t.names[i]), ids, t.counts[i], t.h.flags & kPullTrain, wire ? rows.data() : out);
      if (wire)
        floats_to_wire_values(rows.data(), values, t.half[i], wire + t.value_offsets[i]);
      else
        out += values;
      ids += t.counts[i];
    }
  });
  add(kPushTables, [this, max_ids, dim_of](const rpc::Request& r, rpc::Reply& reply) {
    ++reactor_state_[static_cast<size_t>(r.reactor)].push_requests;
    TablesRequest t = parse_tables_request(r.payload, true, max_ids, options_.rpc.max_frame_bytes, dim_of(r.reactor));
    PodVector<int64_t> id_copy;
    const int64_t* ids = aligned_view<int64_t>(t.ids, t.total_ids, id_copy);
    std::vector<PodVector<float>> grad_copies(t.names.size());  // float16 ones converted
    std::vector<PsShard::TableUpdate> updates;
    for (size_t i = 0; i < t.names.size(); ++i) {
      const size_t values = static_cast<size_t>(t.counts[i]) * static_cast<size_t>(t.dims[i]);
      updates.push_back({t.names[i], ids, t.counts[i],
                         wire_values_to_floats(t.grads + t.value_offsets[i], values, t.half[i], grad_copies[i])});
      ids += t.counts[i];
    }
    push(r, reply, updates, t.h.step, t.h.worker, t.h.num_workers);
  });
  // Saves and restores run in phases driven by the client (ps_client.cpp), so that a save
  // becomes visible and a restore takes effect on every shard or on none.
  add(kSave, [this](const rpc::Request& r, rpc::Reply& reply) {
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
      auto part =
          std::make_shared<SnapshotPart>(shard(r.reactor).encode_snapshot(j.at("step").as_int("step"), save_id));
      const std::string staging = begin_snapshot_write(root, name, save_id, overwrite, options_.server_index);
      off_reactor(r, reply, [staging, part](rpc::Reply&) { part->write(staging); });
    } else if (phase == "commit") {
      snapshot_path(root, name);
      const int total = shard(r.reactor).layout().total_shards;
      off_reactor(r, reply,
                  [root, name, save_id, total, overwrite, server = options_.server_index,
                   keep = options_.keep_snapshots](rpc::Reply&) {
                    commit_snapshot(root, name, save_id, total, overwrite, server);
                    // The save is complete whatever happens next; a removal that fails
                    // leaves old snapshots, to be removed after a later save.
                    if (keep > 0) try {
                        prune_snapshots(root, "step-", keep, {}, server);
                      } catch (const std::exception&) {
                      }
                  });
    } else if (phase == "abort") {
      snapshot_path(root, name);
      off_reactor(r, reply, [root, name, save_id](rpc::Reply&) { abort_snapshot(root, name, save_id); });
    } else {
      throw InvalidArgument("unknown save phase '" + phase + "'");
    }
  });
  add(kRestore, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const std::string phase = j.at("phase").as_string("phase");
    PsShard& s = shard(r.reactor);
    Json out = Json::object();
    if (phase == "latest") {
      SC_CHECK_ARG(!options_.snapshot_dir.empty(),
                   "this server has no snapshot directory (start it with "
                   "--snapshot-dir); save and restore are refused");
      const std::string dir = latest_snapshot(options_.snapshot_dir);
      out["name"] = dir.empty() ? std::string() : std::filesystem::path(dir).filename().string();
    } else if (phase == "prepare") {
      // Read and checked on the snapshot thread into a fresh shard; kept on this reactor.
      const std::string dir = snapshot_path(options_.snapshot_dir, j.at("name").as_string("name"));
      const std::string restore_id = j.at("restore_id").as_string("restore_id");
      auto loaded = std::make_shared<std::unique_ptr<PsShard>>(std::make_unique<PsShard>(s.layout(), s.device_rows()));
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
      fail_pushes(r.reactor, "", "the shard was restored from a snapshot while a step was incomplete");
      fail_dense_steps(r.reactor, "the shard was restored from a snapshot while a step was incomplete");
    } else if (phase == "abort") {
      s.abort_restore(j.at("restore_id").as_string("restore_id"));
    } else {
      throw InvalidArgument("unknown restore phase '" + phase + "'");
    }
    reply_json(reply, out);
  });
  add(kPruneSnapshots, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const std::string prefix = j.at("prefix").as_string("prefix");
    const int64_t keep = j.at("keep").as_int("keep");
    std::vector<std::string> protect;
    for (const Json& name : j.at("protect").as_array("protect")) protect.push_back(name.as_string("protected name"));
    // Checked here, so that a bad request is refused at once; removed on the snapshot thread,
    // after the saves and restores queued before it.
    check_prune_request(options_.snapshot_dir, prefix, keep, protect);
    off_reactor(
        r, reply,
        [root = options_.snapshot_dir, prefix, keep, protect, server = options_.server_index](rpc::Reply& done) {
          Json out = Json::object();
          Json removed = Json::array();
          for (const std::string& name : prune_snapshots(root, prefix, keep, protect, server)) removed.push_back(name);
          out["removed"] = std::move(removed);
          reply_json(done, out);
        });
  });
  add(kStats, [this](const rpc::Request& r, rpc::Reply& reply) { reply_json(reply, stats_of(r.reactor)); });
  add(kExpire, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    Json out = Json::object();
    out["expired"] = shard(r.reactor).expire(j.at("table").as_string("table"));
    reply_json(reply, out);
  });
  add(kErase, [this, max_ids](const rpc::Request& r, rpc::Reply& reply) {
    TableRequest t = parse_table_request(r.payload, max_ids);
    SC_CHECK_ARG(t.array_bytes == t.h.num_ids * sizeof(int64_t), "erase of ", t.h.num_ids, " ids carries ",
                 t.array_bytes, " bytes");
    PodVector<int64_t> copy;
    const int64_t* ids = aligned_view<int64_t>(t.arrays, t.h.num_ids, copy);
    Json out = Json::object();
    out["erased"] = shard(r.reactor).erase(t.name, ids, static_cast<int64_t>(t.h.num_ids));
    reply_json(reply, out);
  });
  // One part of an export per shard, all at the client's step (a consistent cut between two
  // requests of this shard); written on the snapshot thread.
  add(kExport, [this](const rpc::Request& r, rpc::Reply& reply) {
    SC_CHECK_ARG(!options_.export_dir.empty() && options_.export_writer,
                 "this server has no export directory (start it with --export-dir); exports are refused");
    Json j = parse_json(r);
    const std::string stream = j.at("stream").as_string("stream");
    SC_CHECK_ARG(is_plain_name(stream), "export stream '", stream,
                 "' must be a plain name (no '/', not '.' or '..'); exports are kept under the server's export "
                 "directory");
    const std::string kind = j.at("kind").as_string("kind");
    SC_CHECK_ARG(kind == "full" || kind == "delta", "export kind must be 'full' or 'delta', got '", kind, "'");
    ExportPartRequest req;
    req.delta = kind == "delta";
    req.version = j.at("version").as_int("version");
    SC_CHECK_ARG(req.version >= 0, "export version must be >= 0, got ", req.version);
    if (req.delta) {
      req.since = j.at("since").as_int("since");
      SC_CHECK_ARG(req.since >= 0 && req.since <= req.version, "export_delta: since must be in [0, version ",
                   req.version, "], got ", req.since);
    }
    req.dtype = j.at("dtype").as_string("dtype");
    PsShard& s = shard(r.reactor);
    req.part = s.layout().global_index;
    req.num_parts = s.layout().total_shards;
    auto tables = std::make_shared<std::vector<ExportTable>>(s.collect_export(req.delta ? req.since : -1, req.version));
    Json counts = Json::object();
    int64_t rows = 0, deleted = 0;
    for (const auto& t : *tables) {
      rows += t.rows();
      deleted += static_cast<int64_t>(t.deleted.size());
    }
    counts["rows"] = rows;
    counts["deleted"] = deleted;
    const std::string dir = (std::filesystem::path(options_.export_dir) / stream).string();
    off_reactor(r, reply, [writer = options_.export_writer, dir, req, tables, counts](rpc::Reply& done) {
      writer(dir, req, *tables);
      reply_json(done, counts);
    });
  });
  add(kKvPut, [this](const rpc::Request& r, rpc::Reply&) {
    Json j = parse_json(r);
    shard(r.reactor).kv_put(j.at("key").as_string("key"), j.at("value"));
  });
  add(kKvGet, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    const Json* v = shard(r.reactor).kv_get(j.at("key").as_string("key"));
    Json out = Json::object();
    out["value"] = v ? *v : Json();
    reply_json(reply, out);
  });
  add(kBarrier, [this](const rpc::Request& r, rpc::Reply& reply) { barrier(r, reply); });
  add(kJoin, [this](const rpc::Request& r, rpc::Reply&) {
    Json j = parse_json(r);
    int64_t worker = j.at("worker").as_int("worker");
    SC_CHECK_ARG(worker >= 0 && worker <= int64_t{UINT32_MAX}, "worker ", worker, " out of range");
    if (j.get("staleness")) {  // a bounded-staleness worker
      SC_CHECK_ARG(rpc_, "an embedded server has one worker; it has no staleness bound");
      const int64_t workers = j.at("num_workers").as_int("num_workers");
      SC_CHECK_ARG(workers >= 1 && workers <= kMaxWorkers && worker < workers, "worker ", worker, " out of range for ",
                   workers, " workers");
      reactor_state_[static_cast<size_t>(r.reactor)].gate.configure(static_cast<uint32_t>(workers),
                                                                    j.at("staleness").as_int("staleness"));
    }
    join(r.reactor, r.connection, static_cast<uint32_t>(worker));
  });
  add(kDensePull, [this](const rpc::Request& r, rpc::Reply& reply) {
    Json j = parse_json(r);
    std::vector<float>& v = shard(r.reactor).dense(j.at("name").as_string("name"), j.at("size").as_int("size"),
                                                   static_cast<float>(j.at("init").as_double("init")));
    reply.append(v.data(), v.size() * sizeof(float));
  });
  add(kDensePush, [this](const rpc::Request& r, rpc::Reply&) {
    DensePushRequest d = parse_dense_push(r.payload);
    PodVector<float> copy;
    shard(r.reactor).dense_push(d.name, aligned_view<float>(d.grads, d.h.size, copy), static_cast<int64_t>(d.h.size),
                                d.h.lr);
  });
  add_dense_methods();
  // Row requests pass the staleness gate (ps_server_staleness.cpp); a push advances its clock.
  for (const uint16_t method : {kPull, kPullTables, kPush, kPushTables})
    methods_[method] = gated(std::move(methods_[method]), method == kPush || method == kPushTables);
}

Json PsServer::stats_of(int i) const {
  Json j = shards_.at(static_cast<size_t>(i))->stats();
  const ReactorState& st = reactor_state_[static_cast<size_t>(i)];
  j["pull_requests"] = st.pull_requests;
  j["push_requests"] = st.push_requests;
  if (st.gate.active()) j["staleness"] = st.gate.stats();
  return j;
}

std::vector<Json> PsServer::shard_stats(int timeout_ms) {
  const size_t n = shards_.size();
  if (!rpc_) {
    std::vector<Json> out;
    for (size_t i = 0; i < n; ++i) out.push_back(stats_of(static_cast<int>(i)));
    return out;
  }
  // Shared with the posted tasks, which may run after this call gave up on them.
  struct Gather {
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<Json> out;
    size_t done = 0;
  };
  auto g = std::make_shared<Gather>();
  g->out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    rpc_->reactor(static_cast<int>(i)).post([this, g, i] {
      Json j;
      try {
        j = stats_of(static_cast<int>(i));
      } catch (const std::exception&) {  // out of memory: that shard reads as missing
      }
      std::lock_guard<std::mutex> lock(g->mutex);
      g->out[i] = std::move(j);
      ++g->done;
      g->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(g->mutex);
  g->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return g->done == n; });
  return g->out;  // a copy: a late task may still write into g
}

rpc::TransportStats PsServer::transport_stats() const { return rpc_ ? rpc_->transport_stats() : rpc::TransportStats{}; }

}  // namespace sparsecore::ps
