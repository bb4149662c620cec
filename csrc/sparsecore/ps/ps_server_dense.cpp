// PsServer's dense variables with an optimizer (ps_protocol.h kDenseCreate, kDenseStep):
// created from a worker's initial values, stepped by the shard with the variable's update
// rule; a synchronous step answers every worker with the values once all have pushed.
#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_request.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/reactor.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {

void PsServer::fail_dense_steps(int reactor, const std::string& why) {
  ReactorState& st = reactor_state_[static_cast<size_t>(reactor)];
  shard(reactor).abort_dense_steps();
  auto waiting = std::move(st.dense_waiting);
  st.dense_waiting.clear();
  for (const auto& [name, tokens] : waiting)
    for (const auto& token : tokens) {
      rpc::Reply reply;
      reply.fail(rpc::Status::kStepAborted, "dense step of '" + name + "' was aborted: " + why);
      rpc_->reactor(reactor).send_deferred(token, std::move(reply));
    }
}

void PsServer::add_dense_methods() {
  methods_[kDenseCreate] = [this](const rpc::Request& r, rpc::Reply&) {
    DenseCreateRequest d = parse_dense_create(r.payload);
    const OptimizerConfig config = OptimizerConfig::from_json(Json::parse(d.config));
    PodVector<float> copy;
    shard(r.reactor).dense_create(d.name, aligned_view<float>(d.values, d.h.size, copy), static_cast<int64_t>(d.h.size),
                                  config);
  };
  methods_[kDenseStep] = [this](const rpc::Request& r, rpc::Reply& reply) {
    DenseStepRequest d = parse_dense_step(r.payload);
    ReactorState& st = reactor_state_[static_cast<size_t>(r.reactor)];
    if (d.h.num_workers > 0) {
      SC_CHECK_ARG(rpc_ || d.h.num_workers == 1, "an embedded server has one worker; num_workers must be 0 or 1, got ",
                   d.h.num_workers);
      join(r.reactor, r.connection, d.h.worker);
      if (!st.left.empty())
        throw RpcStepAborted("dense step " + std::to_string(d.h.step) + " of '" + d.name +
                             "' cannot complete: worker " + std::to_string(*st.left.begin()) +
                             " left (its connection closed) and has not joined again");
    }
    PodVector<float> copy;
    PsShard& s = shard(r.reactor);
    const PsShard::PushOutcome out =
        s.dense_step(d.name, aligned_view<float>(d.grads, d.h.size, copy), static_cast<int64_t>(d.h.size), d.h.step,
                     d.h.worker, d.h.num_workers);
    auto waiting = st.dense_waiting.find(d.name);
    if (out.aborted_step >= 0 && waiting != st.dense_waiting.end()) {
      std::vector<rpc::DeferredReply> failed = std::move(waiting->second);
      st.dense_waiting.erase(waiting);
      for (const auto& token : failed) {
        rpc::Reply fail;
        fail.fail(rpc::Status::kStepAborted, "dense step " + std::to_string(out.aborted_step) + " of '" + d.name +
                                                 "' was aborted: worker " + std::to_string(d.h.worker) +
                                                 " pushed step " + std::to_string(d.h.step) +
                                                 " (a worker restarted or rolled back); nothing of it was applied");
        rpc_->reactor(r.reactor).send_deferred(token, std::move(fail));
      }
      waiting = st.dense_waiting.find(d.name);
    }
    if (!out.complete) {
      st.dense_waiting[d.name].push_back(reply.defer());
      return;
    }
    const std::vector<float>& values = s.dense(d.name, 0, 0.0f);
    reply.append(values.data(), values.size() * sizeof(float));
    if (waiting == st.dense_waiting.end()) return;
    std::vector<rpc::DeferredReply> done = std::move(waiting->second);
    st.dense_waiting.erase(waiting);
    for (const auto& token : done) {
      rpc::Reply answer;
      answer.append(values.data(), values.size() * sizeof(float));
      rpc_->reactor(r.reactor).send_deferred(token, std::move(answer));
    }
  };
}

}  // namespace sparsecore::ps
