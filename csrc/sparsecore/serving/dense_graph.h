// DenseGraph: the dense network of an exported model, run on the CPU without Python.
//
// A graph is a list of nodes in evaluation order; each reads the outputs of earlier nodes by
// index. Values are float32 matrices (batch, width), row-major; a sequence input is
// (batch, max_len, width) plus a length per row, and only din_attention reads one. Ops:
//   input          a named model input: a pooled feature group, a sequence group, or dense
//                  features (width given)
//   linear         y = x · Wᵀ + b; W (out, in), b (out) or none
//   shift_linear   the same with W in the packed power-of-two format (quant/pow2_codes.h):
//                  codes (out, (in + 1) / 2), alpha (out); regrouped into panels at load and
//                  run by the panel shift matmul (quant/shift_panels.h): y = alpha · Σ x·code
//                  in column order, then + b
//   relu, sigmoid  elementwise
//   prelu          y = x if x > 0 else a · x; a (1) or (width)
//   dice           y = p · x + (1 − p) · a · x, p = sigmoid((x − mean) / sqrt(var + eps)), with
//                  the running mean and var of evaluation; mean, var, a (width)
//   concat         the inputs side by side (widths add)
//   add            the sum of its inputs (equal widths) plus an optional constant c
//                  (1) or (width)
//   sum            (batch, n) -> (batch, 1), the columns added in order
//   din_attention  DIN's attention unit: inputs (sequence h (B, L, d), query a (B, d)); each
//                  valid step t < length gets the score s_t of the sub-network `score` over
//                  [h_t, a, h_t − a, h_t · a] (4d -> 1); out = Σ_t sigmoid(s_t) · h_t (B, d)
// The format (JSON and the tensor file) is in docs/architecture.md ("Files and frames"); every reference, shape and
// byte range is checked when a graph is built, so a damaged file is an error, never a crash.
//
// Thread-safety: a built graph is immutable; run() may be called from many threads at once,
// each with its own DenseWorkspace (which keeps its memory, so steady-state calls allocate
// nothing).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"

namespace sparsecore::serving {

enum class DenseOp : uint8_t {
  kInput,
  kLinear,
  kShiftLinear,
  kRelu,
  kSigmoid,
  kPrelu,
  kDice,
  kConcat,
  kAdd,
  kSum,
  kDinAttention
};

const char* dense_op_name(DenseOp op);

// One model input as the graph expects it.
struct DenseInputSpec {
  std::string name;   // e.g. "user" (a feature group) or "dense"
  std::string kind;   // "pooled" | "sequence" | "dense"
  int64_t width = 0;  // floats per row (per step for a sequence)
};

// The data of one input for run(): values (batch, width) or (batch, max_len, width) float32,
// host; lengths (batch) int64 for a sequence (each in [0, max_len]), else null.
struct DenseInputView {
  const float* values = nullptr;
  int64_t max_len = 0;
  const int64_t* lengths = nullptr;
};

class DenseWorkspace {
 public:
  float* reserve(size_t floats) {
    if (buffer_.size() < floats) buffer_.resize(floats);
    return buffer_.data();
  }

 private:
  std::vector<float> buffer_;
};

class DenseGraph {
 public:
  // graph: the JSON object of the format; tensors: the bytes its tensors index (kept).
  // Throws CorruptData naming the node or tensor at fault.
  DenseGraph(const Json& graph, std::vector<uint8_t> tensors);
  // Reads dir/dense.json and dir/dense.bin (regular files of bounded size).
  static DenseGraph load(const std::string& dir);
  // Nodes point into the tensor bytes: a graph moves, never copies.
  DenseGraph(DenseGraph&&) = default;
  DenseGraph& operator=(DenseGraph&&) = default;
  DenseGraph(const DenseGraph&) = delete;
  DenseGraph& operator=(const DenseGraph&) = delete;

  const std::vector<DenseInputSpec>& inputs() const { return inputs_; }
  int64_t output_width() const;
  size_t num_nodes() const { return nodes_.size(); }

  // out (batch, output_width()) float32, host. inputs: one view per inputs() entry, in order.
  // Throws InvalidArgument for a sequence length outside [0, max_len] or a null view.
  void run(const DenseInputView* inputs, int64_t batch, float* out, DenseWorkspace& ws) const;

  struct Node;

 private:
  void check_views(const DenseInputView* inputs, int64_t batch) const;

  std::vector<uint8_t> tensors_;
  std::vector<DenseInputSpec> inputs_;
  std::vector<std::shared_ptr<const Node>> nodes_;
  std::vector<size_t> offsets_;  // each node's output offset in a workspace, per batch row
  size_t row_floats_ = 0;        // workspace floats per batch row
};

}  // namespace sparsecore::serving
