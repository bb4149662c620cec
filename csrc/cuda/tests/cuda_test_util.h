// Shared by the CUDA kernel tests: backends as a test parameter (the device one skips,
// visibly, where there is none), small launches for the emulator, random batches.
#pragma once

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "sparsecore/cuda/device_embedding_collection.h"

namespace sparsecore::cuda::testing {

inline std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kEmulated ? "emulated" : "device";
}

// Small blocks and few of them: the emulator runs every thread as a real thread.
inline LaunchLimits test_limits(Backend b) { return b == Backend::kEmulated ? LaunchLimits{64, 4} : LaunchLimits{}; }

#define SC_SKIP_WITHOUT_DEVICE(backend)                                                                 \
  do {                                                                                                  \
    if ((backend) == ::sparsecore::cuda::Backend::kDevice && !::sparsecore::cuda::device_available())   \
      GTEST_SKIP() << "skipped: no device (" << ::sparsecore::cuda::device_unavailable_reason() << ")"; \
  } while (0)

inline std::mt19937_64& rng() {
  static std::mt19937_64 r(std::random_device{}());
  return r;
}

// Ids that exercise the table: duplicates, negatives, extremes and the two marker values.
inline std::vector<int64_t> random_ids(int64_t n, int64_t vocabulary) {
  std::vector<int64_t> ids(n);
  const int64_t special[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX, -1, 0};
  for (auto& id : ids) {
    uint64_t r = rng()();
    if (r % 17 == 0)
      id = special[(r >> 8) % 5];
    else
      id = static_cast<int64_t>((r >> 8) % vocabulary) * 2654435761LL - vocabulary;
  }
  return ids;
}

struct Bags {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
};

inline Bags random_bags(int64_t batch, int max_len, int64_t vocabulary, bool weighted) {
  Bags b;
  b.offsets.push_back(0);
  for (int64_t i = 0; i < batch; ++i)
    b.offsets.push_back(b.offsets.back() + static_cast<int64_t>(rng()() % (max_len + 1)));
  b.ids = random_ids(b.offsets.back(), vocabulary);
  if (weighted) {
    std::uniform_real_distribution<float> w(0.1f, 2.0f);
    for (size_t i = 0; i < b.ids.size(); ++i) b.weights.push_back(w(rng()));
  }
  return b;
}

inline GroupInput group_of(int table, const Bags& b) {
  GroupInput in;
  in.table = table;
  in.ids = b.ids.data();
  in.num_ids = static_cast<int64_t>(b.ids.size());
  in.offsets = b.offsets.data();
  in.batch_size = static_cast<int64_t>(b.offsets.size()) - 1;
  in.weights = b.weights.empty() ? nullptr : b.weights.data();
  return in;
}

}  // namespace sparsecore::cuda::testing
