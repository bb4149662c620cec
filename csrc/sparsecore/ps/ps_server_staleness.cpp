// PsServer's bounded-staleness gate (ps_server.h): holding and releasing the pulls and
// pushes of workers too far ahead.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/reactor.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {
namespace {

// Requests one shard holds at once: a worker has at most a few in flight per step, so this
// only bounds what a misbehaving member can make the shard keep.
constexpr size_t kMaxHeldRequests = 4096;

// Whether a push request (kPush or kPushTables) names num_workers > 0; false when too short
// to say (its handler refuses it).
bool synchronous_push(const rpc::Request& r) {
  const size_t at = r.method == kPush ? offsetof(TableHeader, num_workers) : offsetof(TablesHeader, num_workers);
  uint32_t num_workers = 0;
  if (r.payload.size() >= at + sizeof(num_workers))
    std::memcpy(&num_workers, r.payload.data() + at, sizeof(num_workers));
  return num_workers > 0;
}

}  // namespace

rpc::Handler PsServer::gated(rpc::Handler handler, bool push) {
  return [this, handler = std::move(handler), push](const rpc::Request& r, rpc::Reply& reply) {
    ReactorState& st = reactor_state_[static_cast<size_t>(r.reactor)];
    auto member = st.members.find(r.connection);
    if (!rpc_ || !st.gate.active() || member == st.members.end()) {
      handler(r, reply);
      return;
    }
    const uint32_t worker = member->second;
    if (!st.gate.admits(worker)) {
      // A synchronous push waits for the other workers itself; held as well it could never be
      // answered, so a bounded-staleness job refuses it.
      SC_CHECK_ARG(!push || !synchronous_push(r), "worker ", worker,
                   " sent a synchronous push to a server whose job trains with bounded staleness; "
                   "connect every worker with the same mode");
      if (st.held.size() >= kMaxHeldRequests)
        throw RpcError("shard holds " + std::to_string(st.held.size()) +
                       " requests of workers ahead of the staleness bound; refused");
      HeldRequest h;
      h.method = r.method;
      h.connection = r.connection;
      h.worker = worker;
      h.deadline = r.deadline;
      h.payload.assign(r.payload.begin(), r.payload.end());
      h.reply = reply.defer();
      st.held.push_back(std::move(h));
      st.gate.held();
      return;
    }
    st.gate.admitted(worker);
    handler(r, reply);
    if (push && !reply.deferred() && reply.status() == rpc::Status::kOk) {
      st.gate.completed_step(worker);
      release_held(r.reactor);
    }
  };
}

void PsServer::release_held(int reactor) {
  ReactorState& st = reactor_state_[static_cast<size_t>(reactor)];
  if (st.held.empty()) return;
  if (st.releasing) {  // re-entered from a request it runs, or from a send that closed a connection
    st.release_again = true;
    return;
  }
  st.releasing = true;
  struct Done {
    ReactorState& st;
    ~Done() { st.releasing = false; }
  } done{st};
  do {
    st.release_again = false;
    const rpc::Clock::time_point now = rpc::Clock::now();
    for (size_t i = 0; i < st.held.size(); ++i) {
      const bool expired = st.held[i].deadline <= now;
      if (!expired && !st.gate.admits(st.held[i].worker)) continue;
      HeldRequest h = std::move(st.held[i]);
      st.held.erase(st.held.begin() + static_cast<std::ptrdiff_t>(i));
      rpc::Reply out;
      if (expired) {
        out.fail(rpc::Status::kDeadlineExceeded,
                 "worker " + std::to_string(h.worker) + " stayed " + std::to_string(st.gate.lead(h.worker)) +
                     " steps ahead of the slowest worker (staleness bound reached) past its call's deadline");
      } else {
        rpc::Request req;
        req.method = h.method;
        req.id = h.reply.request_id;
        req.reactor = reactor;
        req.connection = h.connection;
        req.payload = std::span<const std::byte>(h.payload.data(), h.payload.size());
        req.deadline = h.deadline;
        try {
          methods_.at(h.method)(req, out);
        } catch (...) {
          std::string message;
          const rpc::Status status = rpc::status_of_current_exception(&message);
          out.fail(status, message);
        }
      }
      // The gate's state may have changed (a push advanced a clock, a send closed a
      // connection): scan again from the start.
      st.release_again = true;
      if (!out.deferred()) rpc_->reactor(reactor).send_deferred(h.reply, std::move(out));
      break;
    }
  } while (st.release_again);
}

}  // namespace sparsecore::ps
