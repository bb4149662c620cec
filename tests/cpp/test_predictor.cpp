#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "map_row_source.h"
#include "small_dense_graph.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/predictor.h"

namespace sparsecore::serving {
namespace {

struct Request {
  std::vector<int64_t> ids[2], offsets[2];
  std::vector<float> weights[2];
};

class PredictorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source = std::make_shared<MapSource>();
    std::normal_distribution<float> normal;
    for (int t = 0; t < 2; ++t)
      for (int64_t id = -5; id < 40; id += 2) {
        std::vector<float> row(source->dims[t]);
        for (auto& v : row) v = normal(rng);
        source->rows[t][id * 1000003] = row;
      }
  }

  Predictor make() const {
    return Predictor({{"b", "tb", ServingPooling::kMean}, {"a", "ta", ServingPooling::kSum}},
                     DenseGraph(Json::parse(graph.json), graph.blob), source);
  }

  Request random_request(int64_t batch, bool weighted) {
    Request r;
    for (int f = 0; f < 2; ++f) {
      r.offsets[f].push_back(0);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = static_cast<int64_t>(rng() % 5);
        for (int64_t i = 0; i < len; ++i) {
          r.ids[f].push_back((static_cast<int64_t>(rng() % 50) - 5) * 1000003);  // some unknown
          if (weighted) r.weights[f].push_back(0.5f + static_cast<float>(rng() % 4));
        }
        r.offsets[f].push_back(static_cast<int64_t>(r.ids[f].size()));
      }
    }
    return r;
  }

  static std::vector<FeatureBatch> batches(const Request& r) {
    std::vector<FeatureBatch> out;
    for (int f = 0; f < 2; ++f)
      out.push_back({r.ids[f].data(), r.offsets[f].data(), r.weights[f].empty() ? nullptr : r.weights[f].data(),
                     static_cast<int64_t>(r.ids[f].size())});
    return out;
  }

  // The pooled input of feature f (0: a, sum; 1: b, mean) for sample b.
  std::vector<float> pooled(const Request& r, int f, int64_t b) const {
    const int t = f, d = source->dims[t];
    std::vector<float> o(d, 0.0f);
    float total = 0.0f;
    for (int64_t i = r.offsets[f][b]; i < r.offsets[f][b + 1]; ++i) {
      const float s = r.weights[f].empty() ? 1.0f : r.weights[f][i];
      total += s;
      const auto it = source->rows[t].find(r.ids[f][i]);
      if (it != source->rows[t].end())
        for (int c = 0; c < d; ++c) o[c] += s * it->second[c];
    }
    if (f == 1 && r.offsets[f][b + 1] > r.offsets[f][b])
      for (auto& v : o) v /= total;
    return o;
  }

  std::mt19937_64 rng{std::random_device{}()};
  std::shared_ptr<MapSource> source;
  SmallGraph graph;
};

TEST_F(PredictorTest, PredictionsEqualPoolingThenTheGraph) {
  const Predictor p = make();
  EXPECT_EQ(p.features()[0].input, "a");  // reordered to the graph's inputs
  for (bool weighted : {false, true}) {
    const int64_t batch = 31;
    const Request r = random_request(batch, weighted);
    const auto fb = batches(r);
    std::vector<float> out(batch);
    PredictorWorkspace ws;
    p.predict(fb.data(), nullptr, batch, out.data(), ws);
    for (int64_t b = 0; b < batch; ++b) {
      const auto a = pooled(r, 0, b), c = pooled(r, 1, b);
      EXPECT_NEAR(out[b], graph.reference(a.data(), c.data()), 1e-5f * (1.0f + std::fabs(out[b])));
    }
  }
}

TEST_F(PredictorTest, MalformedRequestsAreInvalidArguments) {
  const Predictor p = make();
  Request r = random_request(4, true);
  std::vector<float> out(4);
  PredictorWorkspace ws;
  auto expect_refused = [&](const Request& bad) {
    const auto fb = batches(bad);
    EXPECT_THROW(p.predict(fb.data(), nullptr, 4, out.data(), ws), InvalidArgument);
  };
  Request bad = r;
  bad.offsets[0][0] = 1;
  expect_refused(bad);
  bad = r;
  bad.offsets[1][4] += 1;  // past the ids
  expect_refused(bad);
  bad = r;
  if (bad.offsets[0][2] > 0) {
    bad.offsets[0][1] = bad.offsets[0][2] + 1;  // decreasing
    expect_refused(bad);
  }
  bad = r;
  if (!bad.weights[1].empty()) {
    bad.weights[1][0] = std::nanf("");
    expect_refused(bad);
  }
}

TEST_F(PredictorTest, SpecsThatDoNotMatchTheGraphAreRefused) {
  auto build = [&](std::vector<FeatureSpec> specs) {
    return Predictor(std::move(specs), DenseGraph(Json::parse(graph.json), graph.blob), source);
  };
  EXPECT_THROW(build({{"a", "ta", ServingPooling::kSum}}), InvalidArgument);  // b has no feature
  EXPECT_THROW(build({{"a", "tb", ServingPooling::kSum}, {"b", "ta", ServingPooling::kSum}}),
               InvalidArgument);  // dims swapped
  EXPECT_THROW(build({{"a", "ta", ServingPooling::kNone}, {"b", "tb", ServingPooling::kSum}}),
               InvalidArgument);  // a pooled input needs sum or mean
  EXPECT_THROW(build({{"a", "zz", ServingPooling::kSum}, {"b", "tb", ServingPooling::kSum}}), InvalidArgument);
  EXPECT_THROW(
      build({{"a", "ta", ServingPooling::kSum}, {"b", "tb", ServingPooling::kSum}, {"c", "tb", ServingPooling::kSum}}),
      InvalidArgument);  // c feeds nothing
}

TEST_F(PredictorTest, ConcurrentPredictionsEqualTheSingleThreadOnes) {
  const Predictor p = make();
  std::vector<Request> requests;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < 8; ++i) {
    requests.push_back(random_request(1 + static_cast<int64_t>(rng() % 40), i % 2 == 0));
    const auto fb = batches(requests.back());
    const int64_t batch = static_cast<int64_t>(requests.back().offsets[0].size()) - 1;
    expected.emplace_back(batch);
    PredictorWorkspace ws;
    p.predict(fb.data(), nullptr, batch, expected.back().data(), ws);
  }
  std::vector<int> mismatches(8, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      PredictorWorkspace ws;
      for (int i = 0; i < 50; ++i) {
        const int k = (t + i) % 8;
        const auto fb = batches(requests[k]);
        std::vector<float> out(expected[k].size());
        p.predict(fb.data(), nullptr, static_cast<int64_t>(out.size()), out.data(), ws);
        if (out != expected[k]) ++mismatches[t];
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace sparsecore::serving
