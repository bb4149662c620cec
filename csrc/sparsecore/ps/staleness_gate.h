// StalenessGate: bounded staleness (stale synchronous parallel, SSP) on one server shard.
// The shard counts each worker's clock - the pushes of that worker it has applied, one per
// training step (a worker's push goes to every shard) - and a worker whose clock is more
// than `staleness` ahead of the slowest other worker still present may neither pull nor push
// here until that one catches up (PsServer holds the request, up to its deadline).
//
// Who counts: the ranks [0, num_workers) of the job. A rank that has not joined yet counts
// with clock 0, so the bound holds from the first step; a rank whose connections all closed
// (departed) does not count, so it never blocks the others; a rank that joins again resumes
// at the clock of the slowest rank present (its lost steps are not waited for).
//
// Thread-safety: none; one reactor thread owns a gate.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsecore/core/json.h"

namespace sparsecore::ps {

class StalenessGate {
 public:
  // Sets the job's bound (a worker's join carries it); every worker of a job must name the
  // same one, else InvalidArgument. num_workers in [1, kMaxWorkers], staleness >= 0.
  void configure(uint32_t num_workers, int64_t staleness);
  bool active() const { return !clock_.empty(); }
  // Steps `worker` is ahead of the slowest other rank present (0 when alone).
  int64_t lead(uint32_t worker) const;
  bool admits(uint32_t worker) const { return !active() || worker >= clock_.size() || lead(worker) <= staleness_; }
  // A request of `worker` runs now: its lead is recorded (the stats' max_lead).
  void admitted(uint32_t worker);
  void held() { ++held_total_; }
  // `worker`'s push was applied: its clock advances by one step.
  void completed_step(uint32_t worker);
  void departed(uint32_t worker);
  void joined(uint32_t worker);
  // {num_workers, staleness, clocks, departed, max_lead, held} (null when not active).
  Json stats() const;

 private:
  std::vector<int64_t> clock_;  // by rank
  std::vector<bool> departed_;  // by rank
  int64_t staleness_ = 0;
  int64_t max_lead_ = 0;    // the largest lead of an admitted request
  int64_t held_total_ = 0;  // requests held because their worker was too far ahead
};

}  // namespace sparsecore::ps
