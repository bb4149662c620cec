#include "sparsecore/ps/staleness_gate.h"

#include <algorithm>
#include <limits>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/ps_protocol.h"

namespace sparsecore::ps {

void StalenessGate::configure(uint32_t num_workers, int64_t staleness) {
  SC_CHECK_ARG(num_workers >= 1 && num_workers <= kMaxWorkers, "num_workers must be in [1, ", kMaxWorkers,
               "] for bounded staleness, got ", num_workers);
  SC_CHECK_ARG(staleness >= 0 && staleness <= (int64_t{1} << 40), "staleness must be >= 0, got ", staleness);
  if (active()) {
    SC_CHECK_ARG(clock_.size() == num_workers && staleness_ == staleness, "this server runs a job of ", clock_.size(),
                 " workers with staleness ", staleness_, "; a worker joined with ", num_workers,
                 " workers and staleness ", staleness, " (every worker of a job must use the same mode)");
    return;
  }
  clock_.assign(num_workers, 0);
  departed_.assign(num_workers, false);
  staleness_ = staleness;
}

int64_t StalenessGate::lead(uint32_t worker) const {
  int64_t slowest = std::numeric_limits<int64_t>::max();
  for (size_t v = 0; v < clock_.size(); ++v)
    if (v != worker && !departed_[v]) slowest = std::min(slowest, clock_[v]);
  if (slowest == std::numeric_limits<int64_t>::max() || worker >= clock_.size()) return 0;
  return clock_[worker] - slowest;
}

void StalenessGate::admitted(uint32_t worker) {
  if (active() && worker < clock_.size()) max_lead_ = std::max(max_lead_, lead(worker));
}

void StalenessGate::completed_step(uint32_t worker) {
  if (active() && worker < clock_.size()) ++clock_[worker];
}

void StalenessGate::departed(uint32_t worker) {
  if (active() && worker < clock_.size()) departed_[worker] = true;
}

void StalenessGate::joined(uint32_t worker) {
  if (!active() || worker >= clock_.size() || !departed_[worker]) return;
  departed_[worker] = false;
  int64_t slowest = std::numeric_limits<int64_t>::max();
  for (size_t v = 0; v < clock_.size(); ++v)
    if (v != worker && !departed_[v]) slowest = std::min(slowest, clock_[v]);
  if (slowest != std::numeric_limits<int64_t>::max()) clock_[worker] = std::max(clock_[worker], slowest);
}

Json StalenessGate::stats() const {
  if (!active()) return Json();
  Json j = Json::object();
  j["num_workers"] = static_cast<int64_t>(clock_.size());
  j["staleness"] = staleness_;
  Json clocks = Json::array(), departed = Json::array();
  for (size_t v = 0; v < clock_.size(); ++v) {
    clocks.push_back(clock_[v]);
    if (departed_[v]) departed.push_back(static_cast<int64_t>(v));
  }
  j["clocks"] = std::move(clocks);
  j["departed"] = std::move(departed);
  j["max_lead"] = max_lead_;
  j["held"] = held_total_;
  return j;
}

}  // namespace sparsecore::ps
