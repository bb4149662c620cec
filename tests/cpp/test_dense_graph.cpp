#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "small_dense_graph.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/dense_graph.h"

namespace sparsecore::serving {
namespace {

TEST(DenseGraph, RunsTheGraphOfItsDescription) {
  SmallGraph g;
  DenseGraph graph(Json::parse(g.json), g.blob);
  ASSERT_EQ(graph.inputs().size(), 2u);
  EXPECT_EQ(graph.output_width(), 1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> normal;
  const int64_t batch = 17;
  std::vector<float> a(batch * 3), b(batch * 2), out(batch);
  for (auto& v : a) v = normal(rng);
  for (auto& v : b) v = normal(rng);
  DenseInputView views[2] = {{a.data(), 0, nullptr}, {b.data(), 0, nullptr}};
  DenseWorkspace ws;
  graph.run(views, batch, out.data(), ws);
  for (int64_t i = 0; i < batch; ++i)
    EXPECT_NEAR(out[i], g.reference(&a[i * 3], &b[i * 2]), 1e-5f * (1.0f + std::fabs(out[i])));
}

TEST(DenseGraph, MissingInputsAreInvalidArguments) {
  SmallGraph g;
  DenseGraph graph(Json::parse(g.json), g.blob);
  std::vector<float> a(3), out(1);
  DenseInputView views[2] = {{a.data(), 0, nullptr}, {nullptr, 0, nullptr}};
  DenseWorkspace ws;
  EXPECT_THROW(graph.run(views, 1, out.data(), ws), InvalidArgument);
}

// Damaged descriptions and tensor files: every outcome is a typed error or a graph that runs.
TEST(DenseGraph, DamagedInputsGiveErrorsNeverCrashes) {
  SmallGraph g;
  std::mt19937_64 rng(std::random_device{}());
  std::vector<float> a(6, 1.0f), b(4, -1.0f), out(2 * 64);
  DenseInputView views[2] = {{a.data(), 0, nullptr}, {b.data(), 0, nullptr}};
  DenseWorkspace ws;
  int errors = 0, ran = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string json = g.json;
    std::vector<uint8_t> blob = g.blob;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      if (rng() % 3 == 0 && !blob.empty()) {
        blob[rng() % blob.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      } else if (rng() % 2 == 0) {
        json[rng() % json.size()] = "0123456789-,:{}[]\" e"[rng() % 20];
      } else {
        blob.resize(rng() % (blob.size() + 1));
      }
    }
    try {
      DenseGraph graph(Json::parse(json), blob);
      if (graph.output_width() > 64) continue;
      std::vector<DenseInputView> v(graph.inputs().size(), views[0]);
      bool fits = true;
      for (size_t k = 0; k < v.size(); ++k)
        fits = fits && graph.inputs()[k].width <= 3 && graph.inputs()[k].kind != "sequence";
      if (!fits) continue;
      graph.run(v.data(), 2, out.data(), ws);
      ++ran;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 0);
  (void)ran;  // damage that keeps a valid graph (e.g. a changed weight) is fine: it must just run
}

}  // namespace
}  // namespace sparsecore::serving
