// StalenessGate (ps/staleness_gate.h): the bound on how far a worker's clock may lead.
#include <gtest/gtest.h>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/staleness_gate.h"

using sparsecore::InvalidArgument;
using sparsecore::ps::StalenessGate;

TEST(StalenessGate, AWorkerMayLeadTheSlowestByAtMostTheBound) {
  StalenessGate g;
  g.configure(3, 2);
  for (int step = 0; step < 2; ++step) g.completed_step(0);
  EXPECT_TRUE(g.admits(0));  // lead 2
  g.completed_step(0);
  EXPECT_EQ(g.lead(0), 3);
  EXPECT_FALSE(g.admits(0));
  EXPECT_TRUE(g.admits(1));  // the slow ones always may
  g.completed_step(1);
  EXPECT_FALSE(g.admits(0));  // worker 2, not yet seen, still counts at 0
  g.completed_step(2);
  EXPECT_TRUE(g.admits(0));
  g.admitted(0);
  EXPECT_EQ(g.stats().at("max_lead").as_int("max_lead"), 2);
}

TEST(StalenessGate, DepartedWorkersStopCountingAndResumeAtTheSlowest) {
  StalenessGate g;
  g.configure(2, 1);
  for (int step = 0; step < 5; ++step) g.completed_step(0);
  EXPECT_FALSE(g.admits(0));
  g.departed(1);
  EXPECT_TRUE(g.admits(0));
  EXPECT_EQ(g.lead(0), 0);  // alone
  g.joined(1);
  EXPECT_EQ(g.lead(0), 0);  // came back at worker 0's clock
  EXPECT_TRUE(g.admits(1));
}

TEST(StalenessGate, EveryWorkerOfAJobNamesTheSameBound) {
  StalenessGate g;
  EXPECT_FALSE(g.active());
  EXPECT_TRUE(g.admits(7));  // inactive: everyone passes
  g.configure(2, 1);
  g.configure(2, 1);  // the same again: fine
  EXPECT_THROW(g.configure(2, 3), InvalidArgument);
  EXPECT_THROW(g.configure(3, 1), InvalidArgument);
  StalenessGate bad;
  EXPECT_THROW(bad.configure(0, 1), InvalidArgument);
  EXPECT_THROW(bad.configure(2, -1), InvalidArgument);
}
