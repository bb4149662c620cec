// Built against the installed sparsecore package by tests/consumer/run_consumer_check.cmake:
// a stand-in for a C++ serving process that links the library.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/serving/export.h"
#include "sparsecore/serving/predictor.h"
#include "sparsecore/serving/subscriber.h"

namespace {

// A model directory as sparsecore.export_model writes it: the table's rows in stream/, a
// dense network (user pooled by sum -> linear 4 -> 1) in dense/, and model.json. Writes the
// logits the Predictor gives for the samples user:1,2 / user:99 / user: into expected.txt,
// as examples/cpp_serving/predict_model prints them.
void write_model(sparsecore::EmbeddingCollection& emb, const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir + "/dense");
  sparsecore::serving::export_full(emb, dir + "/stream");
  const float tensor[5] = {0.5f, -1.0f, 2.0f, 0.25f, 0.125f};  // weight (1, 4), then bias
  std::ofstream(dir + "/dense/dense.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tensor), sizeof(tensor));
  std::ofstream(dir + "/dense/dense.json") << R"({"format": "sparsecore-dense", "version": 1,
        "inputs": [{"name": "user", "kind": "pooled", "width": 4}],
        "tensors": {"w": {"offset": 0, "shape": [1, 4], "dtype": "f32"},
                    "b": {"offset": 16, "shape": [1], "dtype": "f32"}},
        "nodes": [{"op": "input", "input": 0}, {"op": "linear", "inputs": [0], "out": 1, "weight": "w", "bias": "b"}],
        "output": 1})";
  std::ofstream(dir + "/model.json") << R"({"format": "sparsecore-model", "version": 1, "stream": "stream",
        "features": [{"input": "user", "table": "user", "pooling": "sum"}]})";
  auto model = sparsecore::serving::load_model(dir);
  std::vector<int64_t> ids = {1, 2, 99};
  std::vector<int64_t> offsets = {0, 2, 3, 3};
  sparsecore::serving::FeatureBatch f{ids.data(), offsets.data(), nullptr, 3};
  float out[3];
  sparsecore::serving::PredictorWorkspace ws;
  model.predictor->predict(&f, nullptr, 3, out, ws);
  std::ofstream expected(dir + "/expected.txt");
  for (float v : out) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g\n", static_cast<double>(v));
    expected << buf;
  }
}

}  // namespace

int main(int argc, char** argv) {
  sparsecore::TableConfig config;
  config.name = "user";
  config.dim = 4;
  sparsecore::EmbeddingCollection emb({config}, 7);
  std::vector<int64_t> ids = {1, 2, 3};
  std::vector<int64_t> offsets = {0, 1, 3};
  auto batch = emb.prepare({{0, ids.data(), 3, offsets.data(), 2, nullptr}}, /*train=*/true);
  std::vector<float> out(2 * 4);
  emb.forward(*batch, {out.data()});
  std::printf("sparsecore consumer: %zu rows, out[0] = %f\n", emb.table(0).size(), out[0]);
  if (argc > 1) emb.save(argv[1]);          // a checkpoint for examples/cpp_serving to load
  if (argc > 2) write_model(emb, argv[2]);  // a model directory for examples/cpp_serving/predict_model
  return emb.table(0).size() == 3 ? 0 : 1;
}
