// A small dense graph for the serving tests: its JSON, its tensor bytes and a reference.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sparsecore::serving {

// inputs a (3) and b (2); concat -> linear 5->2 (+ bias) -> prelu (one slope) -> sum -> add 0.5
struct SmallGraph {
  std::string json;
  std::vector<uint8_t> blob;
  std::vector<float> w{0.5f, -1.0f, 2.0f, 0.25f, 1.5f, -0.75f, 0.0f, 1.0f, -2.0f, 3.0f};
  std::vector<float> bias{0.125f, -0.5f};
  float slope = 0.1f;
  float constant = 0.5f;

  SmallGraph() {
    auto put = [&](const std::vector<float>& v) {
      const size_t off = blob.size();
      blob.resize(off + v.size() * 4);
      std::memcpy(blob.data() + off, v.data(), v.size() * 4);
      return off;
    };
    const size_t ow = put(w), ob = put(bias), os = put({slope}), oc = put({constant});
    json = R"({"format": "sparsecore-dense", "version": 1,
      "inputs": [{"name": "a", "kind": "pooled", "width": 3}, {"name": "b", "kind": "pooled", "width": 2}],
      "tensors": {"w": {"offset": )" +
           std::to_string(ow) + R"(, "shape": [2, 5], "dtype": "f32"},
                  "b": {"offset": )" +
           std::to_string(ob) + R"(, "shape": [2], "dtype": "f32"},
                  "s": {"offset": )" +
           std::to_string(os) + R"(, "shape": [1], "dtype": "f32"},
                  "c": {"offset": )" +
           std::to_string(oc) + R"(, "shape": [1], "dtype": "f32"}},
      "nodes": [{"op": "input", "input": 0}, {"op": "input", "input": 1},
                {"op": "concat", "inputs": [0, 1]},
                {"op": "linear", "inputs": [2], "out": 2, "weight": "w", "bias": "b"},
                {"op": "prelu", "inputs": [3], "count": 1, "weight": "s"},
                {"op": "sum", "inputs": [4]},
                {"op": "add", "inputs": [5], "count": 1, "constant": "c"}],
      "output": 6})";
  }

  float reference(const float* a, const float* b) const {
    const float x[5] = {a[0], a[1], a[2], b[0], b[1]};
    float total = 0.0f;
    for (int o = 0; o < 2; ++o) {
      double s = bias[o];
      for (int i = 0; i < 5; ++i) s += double{x[i]} * w[o * 5 + i];
      const auto v = static_cast<float>(s);
      total += v > 0 ? v : slope * v;
    }
    return total + constant;
  }
};

}  // namespace sparsecore::serving
